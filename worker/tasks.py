"""Celery tasks: thin shells around ingest and ``runner.process_key``."""

from __future__ import annotations

import contextlib
import gc
import logging

import redis
from celery import signals

from worker.config import load_or_exit, redis_client, settings
from worker.observability import init_sentry
from worker.queue.celery_app import celery, send_reconcile
from worker.store import keys, scripts
from worker.sync.runner import CLIENTS, process_key

log = logging.getLogger("provisioner.ingest")
load_or_exit("provisioner worker")  # an invalid setting stops the worker here, in one line
app = celery()


@app.task(name="prov.ingest")
def ingest(batch_id: str) -> None:
    """Apply a stored batch to the projection and schedule the reconciles it calls for."""
    client = redis_client()
    try:
        result = scripts.run(client, "ingest", batch_id)
    except redis.ResponseError as error:
        if "poison batch" not in str(error):
            raise
        park_batch(client, batch_id, str(error))
        return
    send_reconcile(v.decode() for v in result[3:])


def park_batch(client: redis.Redis, batch_id: str, reason: str) -> None:
    """A batch the projection refuses is set aside with the reason, never retried blindly."""
    log.error("batch %s parked: %s", batch_id, reason)
    pipe = client.pipeline()
    pipe.hset(keys.PARKED_BATCHES, batch_id, reason)
    pipe.zrem(keys.PENDING_BATCHES, batch_id)
    pipe.execute()


@app.task(name="prov.reconcile")
def reconcile(*reconcile_keys: str) -> None:
    """Run each key of the message in turn (``send_reconcile`` groups a backlog's keys)."""
    client = redis_client()
    for i, key in enumerate(reconcile_keys):
        try:
            process_key(client, key)
        except Exception:
            # Redis failing under us: the keys not run yet keep a wake-up if it can be sent,
            # else the sweeper sends them again (they stay dirty)
            with contextlib.suppress(redis.RedisError):
                send_reconcile(reconcile_keys[i + 1 :])
            raise


@app.task(name="prov.verify")
def verify(app_id: str) -> None:
    """A scheduled verify of one app (queued by the sweeper; one at a time per app)."""
    from worker.sync.verify_schedule import run_scheduled

    run_scheduled(redis_client(), app_id)


# -- worker lifecycle ------------------------------------------------------------------------
_sweeper = None


@signals.worker_ready.connect
def _start_sweeper(sender=None, **_: object) -> None:  # noqa: ANN001
    global _sweeper
    from worker.queue.sweeper import Sweeper
    from worker.sync.verify_schedule import schedule_due

    _sweeper = Sweeper(
        redis.Redis.from_url(settings().redis_url),
        name=str(sender.hostname),
        schedule_verifies=schedule_due,
    )
    _sweeper.start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()


@signals.worker_ready.connect
def _quiet_garbage_collector(**_: object) -> None:
    """Everything loaded at start-up (Celery, pydantic's schemas) is left out of collections,
    and the youngest generation is collected every 20,000 allocations rather than 700: a
    reconcile allocates many short-lived objects, and the collector's pauses delay the request
    a thread has just been given a slot for."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


@signals.worker_init.connect
def _init_sentry(**_: object) -> None:
    """Error reports when SENTRY_DSN is set, before the pool forks (children inherit them)."""
    init_sentry("worker")


@signals.worker_process_init.connect
def _init_process(**_: object) -> None:
    """A forked child builds its own Redis pool and HTTP clients on first use."""
    CLIENTS.reset()
    _quiet_garbage_collector()  # prefork: each child, after the fork
