"""How the pool uses SCIM Bulk (``worker.scim.bulk``): each worker process keeps one channel per
application that takes Bulk requests, paced by the pool's rate limiter, and runs the keys of
such an application side by side in its lanes, so that their writes share requests.

- **When.** The app's profile allows Bulk (``Profile.bulk``), the app's ``bulk`` setting is on,
  its ``/ServiceProviderConfig`` announces Bulk with ``maxOperations`` above 1, and the pool has
  not learned that it refuses Bulk requests (``learned.bulk_refused``).
- **Pacing.** A write admitted for Bulk takes no request slot (the gate still checks the lease,
  the deletion guard and marks the write in doubt); the request's sender takes one slot per
  Bulk request, or one per operation when the profile says the app counts them.
- **Lanes.** A reconcile message carries a few keys and a worker runs a few messages at once: too
  few writes to fill a Bulk request. The keys of a Bulk application go to the process's lanes
  (``PROVISIONER_BULK_LANES`` threads) instead, and the message's thread moves on. A key's state
  is in Redis, under its lease, whatever thread runs it: a worker killed meanwhile loses
  nothing (its leases expire and the sweeper sends the keys again).
- **Read-back.** An answer that leaves out an operation's resource does not show what the app
  kept of the write. Until the app has held a write of a form (``POST /Groups``) as sent, one
  write of that form at a time, pool-wide, is read back (a GET, with a slot), and its reconcile
  reads that as the write's answer (members completed, an attribute learned as unsupported).
  The writes of that form taken as sent meanwhile are remembered before they leave; if the one
  read back was not held as sent, their keys are marked and each object is read back by its
  next run (``Mirror.reread_later``). Once one is held as sent, the form is learned
  (``learned.bulk_held``) and no longer read.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
from scim2_models import ServiceProviderConfig

from worker.config import redis_client, settings
from worker.queue import metrics
from worker.queue.workqueue import Workqueue
from worker.scim import NotSent, ScimClient, ScimError, Transient
from worker.scim.bulk import BulkChannel, BulkLimits
from worker.scim.profiles import Profile
from worker.store import audit, codec, keys, learned, scripts
from worker.store.apps import AppConfig
from worker.store.audit import AuditEntry
from worker.store.mirror import Mirror
from worker.sync import ratelimit

log = logging.getLogger("provisioner.bulk")

SLOT_PATIENCE = 20.0  # seconds a Bulk request waits for its slot; then its writes are not sent
# (at most a quarter of the lease: the writes' keys are not renewed while they wait)


def channel(
    app: AppConfig,
    scim: ScimClient,
    profile: Profile,
    spc: ServiceProviderConfig | None = None,
) -> BulkChannel | None:
    """The app's Bulk channel for this process, or None when its writes go one by one: from
    what the app's ``/ServiceProviderConfig`` announced when it was checked (``bulk_limits``),
    else from ``spc``, else read now (an app saved before Bulk)."""
    if not (app.bulk and profile.bulk):
        return None
    said = app.bulk_limits
    if said is None:
        if spc is None:
            try:
                spc = scim.service_provider_config()
            except ScimError as error:
                log.warning("%s: no ServiceProviderConfig (%s): writes are sent one by one",
                            app.id, error)  # fmt: skip
                return None
        said = announced(spc)
    limits = limits_of(said, app, profile)
    if limits is None:
        return None
    rate = app.rate or profile.requests_per_second
    burst = app.burst or profile.burst
    return BulkChannel(
        scim.bulk_exchange,
        limits,
        slots=_slots(app.id, rate, burst),
        on_transient=lambda error: _transient(app.id, error),
        on_refused=lambda why: _refused(app.id, why),
        on_sent=lambda operations, failed: _sent(app.id, operations, failed),
        scrub=scim.scrub,
        claim_check=lambda form, obj: _claim_check(app.id, form, obj),
        on_checked=lambda form, not_held, what: _checked(app.id, form, not_held, what),
    )


def announced(spc: ServiceProviderConfig) -> tuple[int, int]:
    """What a ServiceProviderConfig announces of Bulk: maxOperations and maxPayloadSize (1 MiB
    when it gives none), (0, 0) when it announces no Bulk worth using."""
    bulk = spc.bulk
    if bulk is None or not bulk.supported or (bulk.max_operations or 0) < 2:
        return (0, 0)
    return (int(bulk.max_operations or 0), int(bulk.max_payload_size or 1 << 20))


def describe(limits: tuple[int, int] | None) -> str:
    if limits is None:
        return "not read"
    if not limits[0]:
        return "no"
    return f"up to {limits[0]:,} operations and {limits[1]:,} bytes a request"


def limits_of(limits: tuple[int, int], app: AppConfig, profile: Profile) -> BulkLimits | None:
    """What one Bulk request of the app may hold (``announced``), and how long it waits for
    company; None when the app announced no Bulk."""
    max_operations, max_payload = limits
    if max_operations < 2:
        return None
    return BulkLimits(
        max_operations=max_operations,
        max_payload=max_payload,
        linger=app.bulk_wait_ms / 1000,
        counts_operations=profile.bulk_counts_operations,
    )


def _slots(app_id: str, rate: float, burst: int) -> Callable[[int], None]:
    """``take(n)``: n request slots of the app, waited for (the sender's batch fills on
    meanwhile); ``NotSent`` when a slot is further off than ``SLOT_PATIENCE``."""
    probe = uuid.uuid4().hex
    patience = min(SLOT_PATIENCE, settings().lease_seconds / 4)

    # One reservation per process and app: writes given back for want of a slot come back
    # when it is due, and whichever sender asks first then takes it
    key = f"bulk:{probe}"

    def take(count: int) -> None:
        client = redis_client()
        for _ in range(count):
            deadline = time.monotonic() + patience
            while True:
                wait = ratelimit.acquire(client, app_id, rate, burst, probe, key)
                if wait == 0:
                    break
                metrics.ratelimit_wait(app_id, wait)
                if time.monotonic() + wait > deadline:
                    raise NotSent(f"no request slot of {app_id} for {wait:.1f}s", wait)
                time.sleep(wait)

    return take


def _transient(app_id: str, error: Transient) -> None:
    """A Bulk request throttled or failed: the pool's pace and breaker count it once."""
    client = redis_client()
    ratelimit.slow_down(client, app_id, error)
    if not error.retry_after:
        ratelimit.transient_failure(client, app_id)


def _refused(app_id: str, why: str) -> None:
    """The app refuses Bulk: learned for the whole pool (``apps update --bulk`` forgets it)."""
    client = redis_client()
    if learned.learn_bulk_refused(client, app_id, why):
        detail = f"{why}: its writes are sent one by one from now on (`apps update` forgets it)"
        audit.record(client, AuditEntry("idm_integration_update", app_id, f"app:{app_id}",
                                        "learned", None, detail))  # fmt: skip
        log.warning("app %s refuses Bulk requests (%s): writes sent one by one", app_id, why)


CHECK_SECONDS = 60  # a read-back's claim lapses after this (its thread died)


def _claim_check(app_id: str, form: str, obj: str | None) -> str:
    """``HELD``, ``READ_BACK`` (this write checks the form) or ``UNCHECKED`` (``obj``
    remembered for the check running): one round trip (lua/bulk_check.lua)."""
    return codec.text(scripts.run(redis_client(), "bulk_check", app_id, form, obj or "",
                                  CHECK_SECONDS))  # fmt: skip


def _checked(app_id: str, form: str, not_held: list[str] | None, what: str) -> None:
    """What the read-back of a write of ``form`` found: the attributes ``not_held`` as sent
    ([]: all held; None: not read). Held: learned, and the writes taken as sent meanwhile are
    trusted. Not held: those writes are read back by their keys' next runs."""
    client = redis_client()
    unchecked = keys.app_bulk_unchecked(app_id, form)
    if not_held is None:
        client.delete(keys.app_bulk_check(app_id, form))
        return
    if not not_held:
        if learned.learn_bulk_held(client, app_id, form, what):
            detail = (f"a write of {form} in a Bulk request, read back, was held as sent "
                      f"({what}): such writes are taken as sent from now on")  # fmt: skip
            audit.record(client, AuditEntry("idm_integration_update", app_id, f"app:{app_id}",
                                            "learned", None, detail))  # fmt: skip
        client.delete(unchecked, keys.app_bulk_check(app_id, form))
        return
    pipe = client.pipeline()  # MULTI: the objects remembered until now, taken at once
    pipe.smembers(unchecked)
    pipe.delete(unchecked, keys.app_bulk_check(app_id, form))
    objects = sorted(codec.texts(pipe.execute()[0]))
    if objects:
        reread(client, app_id, objects)
        detail = (f"a write of {form} in a Bulk request, read back, was not held as sent "
                  f"({', '.join(not_held)}): {len(objects)} writes of {form} taken as sent "
                  "meanwhile are read back")  # fmt: skip
        audit.record(client, AuditEntry("idm_integration_update", app_id, f"app:{app_id}",
                                        "learned", None, detail))  # fmt: skip
        log.warning("app %s: %s", app_id, detail)


def reread(client: redis.Redis, app_id: str, objects: list[str]) -> None:
    """Mark these objects (``kind:id``) to be read back, and their keys dirty: each one's next
    run reads its object back before it plans (``Mirror.reread_later``)."""
    from worker.queue.celery_app import send_reconcile  # the tasks' module imports this one

    mirror = Mirror(client, app_id)
    for kind in ("user", "group"):
        mirror.reread_later(
            kind, (o.partition(":")[2] for o in objects if o.startswith(f"{kind}:"))
        )
    if client.sismember(keys.APPS_ACTIVE, app_id):
        send_reconcile(Workqueue(client).mark(f"{app_id} {o.replace(':', ' ', 1)}"
                                              for o in objects))  # fmt: skip


def _sent(app_id: str, operations: int, failed: int) -> None:
    metrics.bulk_sent(app_id, operations, failed)
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(keys.app_bulk(app_id), "requests", 1)
    pipe.hincrby(keys.app_bulk(app_id), "operations", operations)
    if failed:
        pipe.hincrby(keys.app_bulk(app_id), "failed", failed)
    pipe.execute()


def stats(client: redis.Redis, app_id: str) -> dict[str, int]:
    """The app's Bulk requests so far: ``requests``, ``operations``, ``failed`` (operations)."""
    raw = {codec.text(k): int(v) for k, v in client.hgetall(keys.app_bulk(app_id)).items()}
    return {name: raw.get(name, 0) for name in ("requests", "operations", "failed")}


class Lanes:
    """This process's threads for the keys of Bulk applications (built after a fork, on first
    use). ``run`` hands a key over and returns at once, unless every lane is busy."""

    def __init__(self, run: Callable[[str], object]):
        self.run = run
        self._pool: ThreadPoolExecutor | None = None
        self._free: threading.BoundedSemaphore | None = None
        self._lock = threading.Lock()

    def submit(self, key: str) -> None:
        pool, free = self._ready()
        free.acquire()  # back pressure: the message's thread waits for a free lane
        try:
            pool.submit(self._run, key, free)
        except RuntimeError:  # shut down: run it here
            free.release()
            self._run(key, None)

    def _run(self, key: str, free: threading.BoundedSemaphore | None) -> None:
        try:
            self.run(key)
        except Exception:  # the key stays dirty: the sweeper sends it again
            log.exception("%s failed in a Bulk lane", key)
        finally:
            if free is not None:
                free.release()

    def _ready(self) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
        with self._lock:
            if self._pool is None or self._free is None:
                count = settings().bulk_lanes
                self._pool = ThreadPoolExecutor(count, thread_name_prefix="bulk-lane")
                self._free = threading.BoundedSemaphore(count)
            return self._pool, self._free

    def reset(self) -> None:
        """After a fork: the parent's threads are not ours."""
        self._pool, self._free = None, None

    def shutdown(self) -> None:
        """Let the keys in the lanes finish (a warm shutdown)."""
        with self._lock:
            pool, self._pool, self._free = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True)


__all__ = ["Lanes", "announced", "channel", "describe", "limits_of", "stats"]
