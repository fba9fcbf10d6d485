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
from typing import Any

import redis

from worker.config import settings
from worker.queue import metrics
from worker.queue.celery_app import send_reconcile
from worker.queue.workqueue import ClaimedRun, Workqueue
from worker.scim import Conflict, Invalid, ScimClient, ScimError, Transient, Unauthorized
from worker.scim.bulk import BulkChannel
from worker.scim.client import make_http_client
from worker.scim.profiles import Profile, profile_by_name
from worker.store import apps, audit, keys, learned
from worker.store.apps import AppConfig, AppError
from worker.store.audit import AuditEntry
from worker.store.fence import Fence
from worker.store.keys import ReconcileKey
from worker.sync import bulk, dryrun, guard, ratelimit
from worker.sync.ratelimit import Throttled
from worker.sync.reconcile import Deferred, LeaseLost, Outcome, Reconciler

log = logging.getLogger("provisioner.reconcile")


@dataclass
class RunResult:
    key: str
    state: str  # claimed state, then: done | rescheduled | retry | parked | paused | skipped
    outcome: Outcome = field(default_factory=Outcome)
    parked: str | None = None  # why the key is parked (with its release, fenced)


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
        network = (app.network, app.network.stamp())  # a renewed certificate: a new client
        pace = (app.rate, app.burst, app.bulk, app.bulk_wait_ms)  # the Bulk channel's
        fingerprint = (app.base_url, app.token_file, mtime, app.profile, network, pace)
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
        http = make_http_client(app.base_url, token, network=app.network)
        profile = profile_by_name(app.profile)
        record = metrics.scim_recorder(app.id)
        scim = ScimClient(http, profile, on_request=record)
        spc = None
        if app.profile == "generic":
            spc = scim.service_provider_config()
            profile = profile_by_name("generic", spc)
            scim = ScimClient(http, profile, on_request=record)
        channel = bulk.channel(app, scim, profile, spc)
        if channel is not None:
            scim = ScimClient(http, profile, on_request=record, bulk=channel)
        self._cache[app.id] = (fingerprint, scim, profile)
        return scim, profile

    def bulk(self, app_id: str) -> bool:
        """Whether this process sends the writes of ``app_id`` in Bulk requests (as far as it
        knows: False until it built the app's client)."""
        cached = self._cache.get(app_id)
        return bool(cached and cached[1].bulk is not None and cached[1].bulk.enabled)


CLIENTS = Clients()


def process_key(
    client: redis.Redis, key: ReconcileKey | str, clients: Clients = CLIENTS
) -> RunResult:
    """Claim a key (or its text, as messages carry it), reconcile it, release it; send the
    messages that follow."""
    key_text = str(key)
    try:
        key = ReconcileKey.parse(key_text)
    except ValueError:  # never marked dirty: nothing to do, as for a duplicate message
        return RunResult(key_text, "clean")
    queue = Workqueue(client, settings().lease_seconds)
    # one round trip: the lease (and its fencing token), the app's config, the run's causes
    run = queue.claim_run(key, key.app, audit.cause_key(str(key)))
    if run.state != "claimed":
        return RunResult(key_text, run.state)
    started = time.perf_counter()
    lease = Lease(client, queue, key, run.token)
    causes = metrics.parse_causes(run.causes)
    result = _claimed(lease, run, clients, [c.id for c in causes])
    metrics.reconciled(key.app, result.state, time.perf_counter() - started)
    if result.state == "done" and lease.first_write is not None:
        metrics.observe_lag(key.app, causes, lease.first_write)
    return result


def _claimed(lease: Lease, run: ClaimedRun, clients: Clients, cause_ids: list[str]) -> RunResult:
    """Reconcile a claimed key and release it; send the messages that follow. ``run.causes``
    (as stored, see ``metrics.Cause``) are handed on, their ids go into the audit entries."""
    key, queue, token, causes = lease.key, lease.queue, lease.token, run.causes
    result = RunResult(str(key), "done")
    try:
        delay = _run(lease, run.config, clients, cause_ids, run.learned, result)
    except LeaseLost as lost:
        result.state = "lost"
        released, _ = queue.finish(key, token, causes=causes, keep_causes=True)
        if released == "reschedule":  # still ours: app deactivated
            send_reconcile([str(key)])
        send_reconcile(lost.schedule)  # a record refused by the fence dirtied the key
        return result
    succeeded = result.state == "done"  # failures forgotten, breaker closed
    # Follow-ups are marked while we still hold the lease: marked after it, there would be a
    # moment with nothing dirty and nothing in flight, and `wait` would report idle too early.
    # One round trip for the end of the run, causes handed on included (lua/release.lua).
    released, follow_up = queue.finish(
        key,
        token,
        delay,
        succeeded=succeeded,
        close_breaker=key.app if succeeded and result.outcome.calls else None,
        forget_deferral=result.outcome.stopped_waiting,
        follow_up=result.outcome.follow_up,
        causes=causes,
        keep_causes=not succeeded and result.state != "skipped",  # cut short: runs again
        park=result.parked,
    )
    to_send = follow_up + ([str(key)] if released == "reschedule" else [])
    send_reconcile(to_send)
    return result


def _run(
    lease: Lease,
    config: bytes | None,
    clients: Clients,
    causes: list[str],
    knowledge: dict[bytes, bytes],
    result: RunResult,
) -> float:
    """Reconcile a claimed key of the app of ``config`` and ``knowledge`` (as stored) into
    ``result``; returns the seconds before it may run again (0: when marked). What the app
    answered decides (see the table above); ``LeaseLost`` propagates."""
    key, client = lease.key, lease.redis
    try:
        app = apps.parse(config) if config is not None else None
        if app is None or not app.active or app.paused:
            result.state = "skipped"  # re-derived by a full sync on (re)activation
            return 0.0
        scim, profile = clients.get(app)
        lease.pace(app.rate or profile.requests_per_second, app.burst or profile.burst)
        known = learned.parse(knowledge)
        options: dict[str, Any] = {"causes": tuple(causes), "knowledge": known}
        said = (known.bulk_refused, known.bulk_held)  # by another worker, or forgotten
        if scim.bulk is not None and (scim.bulk.refused, scim.bulk.held) != said:
            scim.bulk.learned(*said)
        if dryrun.is_dry_run(app):  # a dry run keeps the mirror's doubts in memory
            reconciler = dryrun.reconciler(client, app, scim, profile, lease.dry_run, **options)
        else:
            lease.bulk = scim.bulk
            reconciler = Reconciler(
                client, app, scim, profile, gate=lease.gate, fence=lease.fence, **options
            )
        reconciler.reconcile(key, result.outcome)
        return 0.0
    except LeaseLost:
        raise
    except guard.Held as held:
        result.state = "held"  # waits for `provisioner approve|reject APP`
        log.warning("%s", held)
        return 0.0
    except Deferred as deferred:
        result.state = "deferred"
        return deferred.delay
    except Throttled as throttled:
        # Not a failure: the app has no room now. The slot goes to other keys meanwhile.
        result.state = "throttled"
        return throttled.wait
    except Transient as error:
        if not error.counted:  # a Bulk request's failure is counted once, by its sender
            ratelimit.slow_down(client, key.app, error)  # the whole pool slows down
            if not error.retry_after:
                ratelimit.transient_failure(client, key.app)  # toward the circuit breaker
        delay = error.retry_after + random.uniform(0, 1) if error.retry_after else lease.backoff()
        result.state = "retry"
        log.warning("%s: %s; again in %.1fs", key, error, delay)
        return delay
    except Unauthorized as error:
        pause(client, key.app, f"the application refused our credentials: {error}")
        result.state = "paused"
    except (Invalid, Conflict, AppError) as error:
        result.state, result.parked = "parked", str(error)
        log.error("%s parked: %s", key, error)
    except ScimError as error:  # NotFound outside of a handled path
        result.state, result.parked = "parked", str(error)
    except Exception:
        # A bug or a Redis hiccup: leave the key dirty, retry after a backoff, keep the worker.
        delay = lease.backoff()
        result.state = "retry"
        log.exception("%s failed; again in %.1fs", key, delay)
        return delay
    return 0.0


class Lease:
    """The run of one key under its lease (``token``: its fencing token): the gate before each
    of its calls, the fence of its writes."""

    def __init__(self, client: redis.Redis, queue: Workqueue, key: ReconcileKey, token: str):
        self.redis = client
        self.queue = queue
        self.key = key
        self.token = token
        self.fence = Fence(key, token)
        self.probe = uuid.uuid4().hex  # who probes an app's breaker (tokens repeat across keys)
        self.app_id = key.app
        self.rate, self.burst = 0.0, 1
        self.first_write: float | None = None  # when the run's first write was let through
        self.bulk: BulkChannel | None = None  # the app's, when its writes go in Bulk requests

    def backoff(self) -> float:
        """Count a failed attempt of the key: the seconds until the next (``LeaseLost``
        when the lease is no longer ours)."""
        delay = self.queue.backoff(self.key, self.token)
        if delay is None:
            raise LeaseLost(self.key.object)
        return delay

    def pace(self, rate: float, burst: int) -> None:
        """The app's pace: its slots are taken at ``rate`` per second, ``burst`` at once."""
        self.rate, self.burst = rate, burst

    def gate(self, name: str, key: ReconcileKey, write: bool, creating: str | None = None) -> None:
        """Before a call: the lease still ours and the app active (else ``LeaseLost``), the
        deletion guard for a destructive call (``Held``), a request slot (``Throttled``), and
        a write marked in doubt. One round trip (lua/throttle.lua), two more for a destructive
        call, whose lease is checked before the guard counts it. A write that travels in a
        Bulk request takes no slot (its request's sender does): lua/renew.lua checks the lease
        and marks the doubt."""
        lease: tuple[str, int] | None = (self.token, self.queue.lease_ms)
        if name in guard.DESTRUCTIVE:
            self._renew(key)
            self._guard(name, key)
            lease = None
        doubt = None
        if write:  # and the name a create is sent with (Mirror.created_as), in the same trip
            named = (keys.mirror_creating(key.app, key.kind), creating) if creating else ("", "")
            doubt = (keys.mirror_doubt(key.app, key.kind), key.id, *named)
        if doubt is not None and self.bulk is not None and self.bulk.admit():
            self._renew(key, doubt)
        else:
            self._take_slot(lease=lease, doubt=doubt, obj=key.object)
        if write and self.first_write is None:
            self.first_write = time.time()

    def dry_run(self, name: str, key: ReconcileKey) -> None:
        """A dry run's checks before a call: the lease still ours and the app active, a slot."""
        self._renew(key)
        self._take_slot()

    def _renew(self, key: ReconcileKey, doubt: tuple[str, ...] | None = None) -> None:
        # deactivating the app stops its reconciles in flight before their next call
        if not self.queue.renew(self.key, self.token, while_active=self.app_id, doubt=doubt):
            raise LeaseLost(key.object)

    def _guard(self, name: str, key: ReconcileKey) -> None:
        """Stage a deactivation or deletion past the deletion guard's threshold (audited)."""
        try:
            guard.check(self.redis, self.app_id, str(self.key), f"{name} {key.object}")
        except guard.Held as held:
            entry = AuditEntry(name, self.app_id, key.object, "held", None, str(held))
            audit.record(self.redis, entry)
            raise

    def _take_slot(
        self,
        *,
        lease: tuple[str, int] | None = None,
        doubt: tuple[str, ...] | None = None,
        obj: str = "",
    ) -> None:
        """Wait for a request slot of the app only if it is a matter of milliseconds."""
        app_id, text = self.app_id, str(self.key)
        for _ in range(3):
            wait = ratelimit.acquire(self.redis, app_id, self.rate, self.burst, self.probe, text,
                                     lease=lease, doubt=doubt)  # fmt: skip
            if wait == ratelimit.LOST:
                raise LeaseLost(obj or text)
            if wait == 0:
                return
            metrics.ratelimit_wait(app_id, wait)
            if wait > ratelimit.SHORT_WAIT:
                raise Throttled(app_id, wait)
            time.sleep(wait)
        metrics.ratelimit_wait(app_id, ratelimit.SHORT_WAIT)
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
