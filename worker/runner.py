"""Running reconciles under the workqueue's lease, and what each failure leads to.

| the application answered | what happens |
|---|---|
| success | the key is done; marked again if it was dirtied meanwhile |
| 429, 5xx, timeout (``Transient``) | the key stays dirty and runs again after a capped, jittered backoff (``Retry-After`` when given); later changes coalesce into that run |
| 401/403 (``Unauthorized``) | the integration is paused (``apps reauth`` resumes it); its keys wait |
| 400, unresolvable 409 (``Invalid``, ``Conflict``) | the key is parked with the reason until its object changes again or ``retry`` |
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from dataclasses import dataclass, field

import redis

from worker import apps, audit, dryrun, guard, keys, ratelimit
from worker.apps import AppConfig, AppError
from worker.audit import AuditEntry
from worker.celery_app import send_reconcile
from worker.config import settings
from worker.keys import ReconcileKey
from worker.ratelimit import Throttled
from worker.reconcile import Deferred, LeaseLost, Outcome
from worker.scim import Conflict, Invalid, ScimClient, ScimError, Transient, Unauthorized
from worker.scim.client import make_http_client
from worker.scim.profiles import Profile, profile_by_name
from worker.workqueue import Workqueue

log = logging.getLogger("provisioner.reconcile")


@dataclass
class RunResult:
    key: str
    state: str  # claimed state, then: done | rescheduled | retry | parked | paused | skipped
    outcome: Outcome = field(default_factory=Outcome)


class Clients:
    """SCIM clients of this process, one per application, built after fork on first use."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[object, ...], ScimClient, Profile]] = {}
        self._pid = os.getpid()

    def reset(self) -> None:
        self._cache.clear()
        self._pid = os.getpid()

    def get(self, app: AppConfig) -> tuple[ScimClient, Profile]:
        if os.getpid() != self._pid:  # forked: never share sockets with the parent
            self.reset()
        try:
            mtime = os.stat(app.token_file).st_mtime_ns
        except OSError:
            mtime = None
        fingerprint = (app.base_url, app.token_file, mtime, app.profile)
        cached = self._cache.get(app.id)
        if cached and cached[0] == fingerprint:
            return cached[1], cached[2]
        token = apps.read_token(app.token_file)
        http = make_http_client(app.base_url, token)
        profile = profile_by_name(app.profile)
        scim = ScimClient(http, profile)
        if app.profile == "generic":
            profile = profile_by_name("generic", scim.service_provider_config())
            scim = ScimClient(http, profile)
        self._cache[app.id] = (fingerprint, scim, profile)
        return scim, profile


CLIENTS = Clients()


def process_key(client: redis.Redis, key_text: str, clients: Clients = CLIENTS) -> RunResult:
    """Claim a key, reconcile it, release it; send the messages that follow."""
    queue = Workqueue(client, settings().lease_seconds)
    token = uuid.uuid4().hex
    state = queue.claim(key_text, token)
    if state != "claimed":
        return RunResult(key_text, state)
    key = ReconcileKey.parse(key_text)
    delay = 0.0
    result = RunResult(key_text, "done")
    try:
        app = apps.load(client, key.app)
        if app is None or not app.active or app.paused:
            result.state = "skipped"  # re-derived by a full sync on (re)activation
        else:
            scim, profile = clients.get(app)
            rate = app.rate or profile.requests_per_second
            burst = app.burst or profile.burst
            reconciler = dryrun.reconciler(  # the app's own Reconciler, or its dry run
                client,
                app,
                scim,
                profile,
                # deactivating the app stops its reconciles in flight before their next call
                still_ours=lambda: queue.renew(key_text, token, while_active=key.app),
                causes=audit.take_causes(client, key_text),
                throttle=lambda: _take_slot(client, app.id, rate, burst, token, key_text),
                guard=lambda name, obj: _guard(client, app.id, key_text, name, obj),
            )
            reconciler.reconcile(key, result.outcome)
            queue.succeeded(key_text)
            if result.outcome.calls:
                ratelimit.success(client, app.id)
    except LeaseLost:
        result.state = "lost"
        if queue.release(key_text, token) == "reschedule":  # still ours: app deactivated
            send_reconcile([key_text])
        return result
    except guard.Held as held:
        result.state = "held"  # waits for `provisioner approve|reject APP`
        log.warning("%s", held)
    except Deferred as deferred:
        delay = deferred.delay
        result.state = "deferred"
    except Throttled as throttled:
        # Not a failure: the app has no room now. The slot goes to other keys meanwhile.
        delay = throttled.wait
        result.state = "throttled"
    except Transient as error:
        if error.retry_after:
            ratelimit.pause(client, key.app, error.retry_after)  # the whole pool slows down
            delay = error.retry_after + random.uniform(0, 1)
        else:
            ratelimit.transient_failure(client, key.app)
            delay = queue.backoff(key_text)
        result.state = "retry"
        log.warning("%s: %s; again in %.1fs", key_text, error, delay)
    except Unauthorized as error:
        pause(client, key.app, f"the application refused our credentials: {error}")
        result.state = "paused"
    except (Invalid, Conflict, AppError) as error:
        queue.park(key_text, str(error))
        result.state = "parked"
        log.error("%s parked: %s", key_text, error)
    except ScimError as error:  # NotFound outside of a handled path
        queue.park(key_text, str(error))
        result.state = "parked"
    except Exception:
        # A bug or a Redis hiccup: leave the key dirty, retry after a backoff, keep the worker.
        delay = queue.backoff(key_text)
        result.state = "retry"
        log.exception("%s failed; again in %.1fs", key_text, delay)
    # Follow-ups are marked while we still hold the lease: marked after it, there would be a
    # moment with nothing dirty and nothing in flight, and `wait` would report idle too early.
    follow_up = queue.mark(result.outcome.follow_up)
    released = queue.release(key_text, token, delay)
    to_send = follow_up + ([key_text] if released == "reschedule" else [])
    send_reconcile(to_send)
    return result


def _guard(client: redis.Redis, app_id: str, key: str, name: str, obj: str) -> None:
    """Stage a deactivation or deletion past the deletion guard's threshold (audited)."""
    if name not in guard.DESTRUCTIVE:
        return
    try:
        guard.check(client, app_id, key, f"{name} {obj}")
    except guard.Held as held:
        audit.record(client, AuditEntry(name, app_id, obj, "held", None, str(held)))
        raise


def _take_slot(
    client: redis.Redis, app_id: str, rate: float, burst: int, token: str, key: str
) -> None:
    """Wait for a request slot of the app only if it is a matter of milliseconds."""
    for _ in range(3):
        wait = ratelimit.acquire(client, app_id, rate, burst, token, key)
        if wait == 0:
            return
        if wait > ratelimit.SHORT_WAIT:
            raise Throttled(app_id, wait)
        time.sleep(wait)
    raise Throttled(app_id, ratelimit.SHORT_WAIT)


def pause(client: redis.Redis, app_id: str, reason: str) -> None:
    """Stop syncing an app until ``apps reauth``; logged and audited once."""
    app = apps.load(client, app_id)
    if app is None or app.paused:
        return
    apps.update(client, app_id, paused=reason)
    audit.record(
        client,
        AuditEntry(
            "idm_integration_update", app_id, f"app:{app_id}", "failure", 401, f"paused: {reason}"
        ),
    )
    log.error("app %s paused: %s", app_id, reason)


def full_sync(client: redis.Redis, app_id: str) -> int:
    """Mark every key of the app's scope and every object it holds for us; returns the count."""
    from worker import projection
    from worker.mirror import Mirror

    all_keys = sorted(
        set(projection.covered_keys(client, app_id)) | set(Mirror(client, app_id).known_keys())
    )
    queue = Workqueue(client)
    for start in range(0, len(all_keys), 1000):
        send_reconcile(queue.mark(all_keys[start : start + 1000]))
    return len(all_keys)


__all__ = ["CLIENTS", "Clients", "RunResult", "full_sync", "keys", "pause", "process_key"]
