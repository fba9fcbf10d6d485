"""Celery tasks: thin shells around ingest and ``runner.process_key``."""

from __future__ import annotations

import contextlib
import gc
import logging
import os

import redis
from celery import signals

from worker.config import load_or_exit, new_redis, redis_client, settings
from worker.observability import init_sentry
from worker.queue import metrics, metrics_http
from worker.queue.celery_app import celery, send_reconcile
from worker.scim.profiles import PROFILES
from worker.store import codec, scripts
from worker.store.apps import AppConfig
from worker.sync.bulk import Lanes
from worker.sync.runner import CLIENTS, process_key

log = logging.getLogger("provisioner.ingest")
load_or_exit("provisioner worker")  # an invalid setting stops the worker here, in one line
app = celery()


@app.task(name="prov.ingest")
def ingest(batch_id: str) -> None:
    """Apply a stored batch to the projection and send the reconciles it calls for.

    ``lua/ingest.lua`` removes the batch in the step that applies it, and parks a poison batch
    (``ingest:parked``): a run that fails (Redis out of memory, a lost connection) leaves the
    batch pending, and the sweeper sends its wake-up again. Keys whose messages are not sent
    stay dirty, and the sweeper sends them too."""
    client = redis_client()
    try:
        result = scripts.run(client, "ingest", batch_id)
    except redis.ResponseError as error:
        if "poison batch" in str(error):
            log.error("batch %s parked: %s", batch_id, error)
            return
        log.warning("batch %s not applied, still pending: %s", batch_id, error)
        raise
    metrics.applied(*(int(n) for n in result[:3]))
    send_reconcile(codec.texts(result[3:]))


LANES = Lanes(lambda key: process_key(redis_client(), key))


@app.task(name="prov.reconcile")
def reconcile(*reconcile_keys: str) -> None:
    """Run each key of the message in turn (``send_reconcile`` groups a backlog's keys); a key
    of an application whose writes go in Bulk requests is handed to this process's lanes, to
    run beside the others (``worker.sync.bulk``)."""
    client = redis_client()
    for i, key in enumerate(reconcile_keys):
        try:
            if CLIENTS.bulk(key.split(" ", 1)[0]):
                LANES.submit(key)
                continue
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
        new_redis(socket_timeout=30, socket_connect_timeout=5),  # a pool of its own
        name=str(sender.hostname),
        schedule_verifies=schedule_due,
    )
    _sweeper.start()


@signals.worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()


@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _drain_lanes(**_: object) -> None:
    """A warm shutdown lets the keys in the Bulk lanes finish."""
    LANES.shutdown()


_listener: metrics_http.MetricsServer | None = None


@signals.worker_ready.connect
def _start_metrics(sender=None, **_: object) -> None:  # noqa: ANN001
    """``/metrics`` and ``/healthz`` of this worker (main process), unless the port is 0."""
    global _listener
    conf = settings()
    client = new_redis(socket_timeout=5, socket_connect_timeout=2)  # scrapes: a pool of their own
    state = metrics.StateCollector(lambda: client, rate_of=app_rate)
    healthy = metrics_http.health_check(lambda: client, str(sender.hostname))
    _listener = metrics_http.start_listener(conf.metrics_host, conf.metrics_port, state, healthy)


@signals.worker_shutdown.connect
def _stop_metrics(**_: object) -> None:
    if _listener is not None:
        _listener.stop()


@signals.worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: object) -> None:
    """A prefork child exits: prometheus_client's bookkeeping of a dead process."""
    metrics.process_dead(pid or os.getpid())


def app_rate(app: AppConfig) -> tuple[float, int] | None:
    """An app's configured rate and burst: its own, else its profile's (as the runner paces)."""
    profile = PROFILES.get(app.profile)
    rate = app.rate or (profile.requests_per_second if profile else None)
    return (rate, app.burst or (profile.burst if profile else 1)) if rate else None


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
    """A forked child builds its own Redis pool, HTTP clients and lanes on first use."""
    CLIENTS.reset()
    LANES.reset()
    _quiet_garbage_collector()  # prefork: each child, after the fork
