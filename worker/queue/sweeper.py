"""The safety net, run by every worker's main process (one at a time, under a Redis lock).

Messages are wake-ups and Redis holds the truth, so a message lost with a killed worker or a
crashed producer is recovered here: expired leases and due backoffs are scheduled again; dirty
keys and pending batches whose message was sent the stale delay (30 s) ago are sent again, even
behind a backlog, where their message may only be waiting: then each again once its age has
doubled, so a long backlog costs a key or batch a few harmless duplicates (``lua/sweep.lua``,
``lua/sweep_batches.lua``). Recovery after a crash therefore takes at most the lease (60 s)
plus the stale delay (30 s), plus one sweep interval (0.25 s), plus the wait of the message
sent again behind the backlog, whatever the broker's visibility timeout. The same sweeper
queues the scheduled verifies that are due (``apps update --verify-every``, ``verify.py``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

import redis

from worker.config import settings
from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE, send_ingest, send_reconcile
from worker.queue.workqueue import Workqueue
from worker.store import codec, journal, keys, scripts

log = logging.getLogger("provisioner.sweeper")

INTERVAL = 0.25  # also the granularity of backoffs and throttling delays
HEARTBEAT_TTL = 15


def beat(client: redis.Redis, name: str) -> None:
    """Say this worker is alive for the next ``HEARTBEAT_TTL`` seconds (Redis's clock)."""
    scripts.run(client, "heartbeat", name, HEARTBEAT_TTL * 1000)


def alive_workers(client: redis.Redis) -> list[str]:
    now = scripts.redis_now_ms(client)
    return sorted(codec.members(client.zrangebyscore(keys.WORKERS, now, "+inf")))


JOURNAL_TRIM_EVERY = 60.0  # seconds between two retention passes over the journal
VERIFY_CHECK_EVERY = 1.0  # seconds between two looks for scheduled verifies that are due


def sweep_once(client: redis.Redis, *, stale_seconds: float | None = None) -> tuple[int, int]:
    """One pass; returns (reconcile keys, ingest batches) sent again. ``stale_seconds``
    defaults to ``PROVISIONER_STALE_SECONDS``."""
    if stale_seconds is None:
        stale_seconds = settings().stale_seconds
    # Lost wake-ups are sent again whether or not their queue is empty: every stale delay
    # while it is (as a message is taken at once), at doubling intervals behind a backlog.
    queue_empty = client.llen(RECONCILE_QUEUE) == 0
    reconcile_keys = Workqueue(client).sweep(stale_seconds=stale_seconds, resend_stale=queue_empty)
    send_reconcile(reconcile_keys)
    batches = stale_batches(client, stale_seconds)
    send_ingest(batches)
    if reconcile_keys or batches:
        log.info("sweep: %d keys and %d batches sent again", len(reconcile_keys), len(batches))
    return len(reconcile_keys), len(batches)


def stale_batches(client: redis.Redis, stale_seconds: float, limit: int = 1000) -> list[str]:
    """Pending batches whose wake-up may be lost, their next re-send scheduled
    (``lua/sweep_batches.lua``)."""
    stale_ms = int(stale_seconds * 1000)
    return codec.texts(scripts.run(client, "sweep_batches", stale_ms, limit, INGEST_QUEUE))


class Sweeper(threading.Thread):
    """Heartbeat (for ``/readyz`` and ``status``) and ``sweep_once`` every ``INTERVAL``."""

    def __init__(
        self,
        client: redis.Redis,
        name: str | None = None,
        schedule_verifies: Callable[[redis.Redis], Iterable[str]] | None = None,
    ):
        """``schedule_verifies`` queues the scheduled verifies that are due and returns their
        apps (the sync layer's ``schedule_due``; the queue does not import it)."""
        super().__init__(name="provisioner-sweeper", daemon=True)
        self.schedule_due = schedule_verifies
        self.redis = client
        self.queue = Workqueue(client)
        self.worker_name = name or f"{socket.gethostname()}:{threading.get_native_id()}"
        self.stopped = threading.Event()
        self.last_trim = 0.0
        self.last_verify_check = 0.0
        journal.configured_max_age()  # a bad PROVISIONER_JOURNAL_MAX_AGE_DAYS stops the start

    def run(self) -> None:
        pause = INTERVAL
        last_beat = 0.0
        while not self.stopped.wait(pause):
            pause = INTERVAL
            try:
                if time.monotonic() - last_beat >= INTERVAL:
                    beat(self.redis, self.worker_name)
                    last_beat = time.monotonic()
                if self._hold_lock():
                    sweep_once(self.redis)
                    pause = self._until_next_due()
                    if time.monotonic() - self.last_trim >= JOURNAL_TRIM_EVERY:
                        self.last_trim = time.monotonic()
                        journal.trim(self.redis)
                    if time.monotonic() - self.last_verify_check >= VERIFY_CHECK_EVERY:
                        self.last_verify_check = time.monotonic()
                        self._schedule_verifies()
            except redis.RedisError as error:  # Redis restarting: try again next tick
                log.warning("sweeper: %s", error)
            except Exception:
                log.exception("sweeper failed")

    def _schedule_verifies(self) -> None:
        """Queue the scheduled verifies that are due (``apps update --verify-every``)."""
        for app_id in self.schedule_due(self.redis) if self.schedule_due else ():
            log.info("sweep: scheduled verify of %s queued", app_id)

    def _hold_lock(self) -> bool:
        """One sweeper for the pool: take the lock, or keep it if it is ours."""
        return self.queue.hold_sweep_lock(self.worker_name, int(INTERVAL * 4000))

    def _until_next_due(self) -> float:
        """Wake when the next backoff or reserved slot is due (throttled keys run on time)."""
        due_in = self.queue.due_in_ms()
        if due_in is None:
            return INTERVAL
        return min(INTERVAL, max(0.005, due_in / 1000))

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.redis.zrem(keys.WORKERS, self.worker_name)
