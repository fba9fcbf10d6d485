"""Running reconciles under the workqueue's lease, and what each failure leads to.

| the application answered | what happens |
|---|---|
| success | the key is done; marked again if it was dirtied meanwhile |
| 429, 5xx, timeout (``Transient``) | the key stays dirty and runs again after a capped, jittered backoff (``Retry-After`` when given); later changes coalesce into that run |
| 401/403 (``Unauthorized``) | the integration is paused (``apps reauth`` resumes it); its keys wait |
| 501, 405, 400 ``invalidPath``/``noTarget``/``invalidSyntax`` (``Unsupported``) | the next form of the request is learned for the app and sent (``scim/compat.py``); with no form left, the key is parked with the reason; never retried as is |
| 400, unresolvable 409 (``Invalid``, ``Conflict``) | the key is parked with the reason until its object changes again or ``retry`` |
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

from worker.config import settings
from worker.queue.celery_app import send_reconcile
from worker.queue.workqueue import Workqueue
from worker.scim import Conflict, Invalid, ScimClient, ScimError, Transient, Unauthorized
from worker.scim.client import make_http_client
from worker.scim.profiles import Profile, profile_by_name
from worker.store import apps, audit, keys, learned
from worker.store.apps import AppConfig, AppError
from worker.store.audit import AuditEntry
from worker.store.keys import ReconcileKey
from worker.sync import dryrun, guard, ratelimit
from worker.sync.ratelimit import Throttled
from worker.sync.reconcile import Deferred, LeaseLost, Outcome

log = logging.getLogger("provisioner.reconcile")


@dataclass
class RunResult:
    key: str
    state: str  # claimed state, then: done | rescheduled | retry | parked | paused | skipped
    outcome: Outcome = field(default_factory=Outcome)


class Clients:
    """SCIM clients of this process, one per application, built after fork on first use and
    shared by the worker's task threads (an httpx client is thread-safe)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[object, ...], ScimClient, Profile]] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

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
        with self._lock:  # one client per app, not one per thread that missed it
            cached = self._cache.get(app.id)
            if cached and cached[0] == fingerprint:
                return cached[1], cached[2]
            return self._build(app, fingerprint)

    def _build(self, app: AppConfig, fingerprint: tuple[object, ...]) -> tuple[ScimClient, Profile]:
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
    # one round trip: the lease, the app's config and the causes of the run (a malformed key
    # is never dirty: it comes back "clean" and is dropped here)
    app_id = key_text.partition(" ")[0]
    state, config, causes, knowledge = queue.claim_run(
        key_text, token, app_id, audit.cause_key(key_text)
    )
    if state != "claimed":
        return RunResult(key_text, state)
    key = ReconcileKey.parse(key_text)
    delay = 0.0
    result = RunResult(key_text, "done")
    succeeded = False
    try:
        app = apps.parse(config) if config is not None else None
        if app is None or not app.active or app.paused:
            result.state = "skipped"  # re-derived by a full sync on (re)activation
        else:
            scim, profile = clients.get(app)
            rate = app.rate or profile.requests_per_second
            burst = app.burst or profile.burst
            options = {}
            if not dryrun.is_dry_run(app):  # a dry run keeps the mirror's doubts in memory
                options["gate"] = lambda name, obj, doubt: _gate(
                    client, queue, app.id, rate, burst, token, key_text, name, obj, doubt
                )
            reconciler = dryrun.reconciler(  # the app's own Reconciler, or its dry run
                client,
                app,
                scim,
                profile,
                # deactivating the app stops its reconciles in flight before their next call
                still_ours=lambda: queue.renew(key_text, token, while_active=key.app),
                causes=causes,
                throttle=lambda: _take_slot(client, app.id, rate, burst, token, key_text),
                guard=lambda name, obj: _guard(client, app.id, key_text, name, obj),
                knowledge=learned.parse(knowledge),
                **options,
            )
            reconciler.reconcile(key, result.outcome)
            succeeded = True  # failures forgotten, breaker closed when released, below
    except LeaseLost:
        result.state = "lost"
        released, _ = queue.finish(key_text, token, causes=causes, keep_causes=True)
        if released == "reschedule":  # still ours: app deactivated
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
        ratelimit.slow_down(client, key.app, error)  # the whole pool slows down
        if error.retry_after:
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
    # One round trip for the end of the run, causes handed on included (lua/release.lua).
    released, follow_up = queue.finish(
        key_text,
        token,
        delay,
        succeeded=succeeded,
        close_breaker=key.app if succeeded and result.outcome.calls else None,
        forget_deferral=result.outcome.stopped_waiting,
        follow_up=result.outcome.follow_up,
        causes=causes,
        keep_causes=not succeeded and result.state != "skipped",  # cut short: runs again
    )
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


def _gate(
    client: redis.Redis,
    queue: Workqueue,
    app_id: str,
    rate: float,
    burst: int,
    token: str,
    key: str,
    name: str,
    obj: str,
    doubt: tuple[str, str] | None,
) -> None:
    """Before a call: the lease still ours and the app active (else ``LeaseLost``), the
    deletion guard for a destructive call (``Held``), a request slot (``Throttled``), and a
    write marked in doubt. One round trip (lua/throttle.lua), two more for a destructive call,
    whose lease is checked before the guard counts it."""
    lease: tuple[str, int] | None = (token, queue.lease_ms)
    if name in guard.DESTRUCTIVE:
        if not queue.renew(key, token, while_active=app_id):
            raise LeaseLost(obj)
        _guard(client, app_id, key, name, obj)
        lease = None
    marked = None
    if doubt is not None:
        kind, object_id = doubt
        marked = (keys.mirror_doubt(app_id, kind), object_id)  # type: ignore[arg-type]
    _take_slot(client, app_id, rate, burst, token, key, lease=lease, doubt=marked, obj=obj)


def _take_slot(
    client: redis.Redis,
    app_id: str,
    rate: float,
    burst: int,
    token: str,
    key: str,
    *,
    lease: tuple[str, int] | None = None,
    doubt: tuple[str, str] | None = None,
    obj: str = "",
) -> None:
    """Wait for a request slot of the app only if it is a matter of milliseconds."""
    for _ in range(3):
        wait = ratelimit.acquire(client, app_id, rate, burst, token, key, lease=lease, doubt=doubt)
        if wait == ratelimit.LOST:
            raise LeaseLost(obj or key)
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
    from worker.store import projection
    from worker.store.mirror import Mirror

    all_keys = sorted(
        set(projection.covered_keys(client, app_id)) | set(Mirror(client, app_id).known_keys())
    )
    queue = Workqueue(client)
    for start in range(0, len(all_keys), 1000):
        send_reconcile(queue.mark(all_keys[start : start + 1000]))
    return len(all_keys)


__all__ = ["CLIENTS", "Clients", "RunResult", "full_sync", "keys", "pause", "process_key"]
