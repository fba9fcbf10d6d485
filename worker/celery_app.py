"""The Celery application: broker settings that keep messages safe (DESIGN §6).

- ``acks_late`` with ``reject_on_worker_lost``: a message is acknowledged after its task ran; a
  child killed mid-task puts its message back.
- prefetch of one message per process: a killed worker holds back little.
- no ETA or countdown anywhere: delays live in the workqueue (``wq:delayed``), so nothing waits
  in the broker past the visibility timeout.
- no result backend: tasks report through Redis state, not results.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu import Exchange, Queue

from worker.config import settings

INGEST_QUEUE = "prov.ingest"
RECONCILE_QUEUE = "prov.reconcile"

app = Celery("provisioner")


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def configure(celery: Celery) -> None:
    conf = settings()
    celery.conf.update(
        broker_url=conf.redis_url,
        broker_transport_options={"visibility_timeout": conf.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_queues=[_queue(INGEST_QUEUE), _queue(RECONCILE_QUEUE)],
        task_default_queue=RECONCILE_QUEUE,
        task_default_exchange=RECONCILE_QUEUE,
        task_default_routing_key=RECONCILE_QUEUE,
        task_routes={
            "prov.ingest": {"queue": INGEST_QUEUE, "routing_key": INGEST_QUEUE},
            "prov.reconcile": {"queue": RECONCILE_QUEUE, "routing_key": RECONCILE_QUEUE},
        },
        imports=["worker.tasks", "worker.importer"],
        worker_send_task_events=False,
        task_send_sent_event=False,
    )


_configured_for: str | None = None


def celery() -> Celery:
    """The configured app. Configuration is read lazily (the CLI sets REDIS_URL first) and
    again if the Redis changes, so that wake-ups always go to the Redis the events went to."""
    global _configured_for
    url = settings().redis_url
    if _configured_for != url:
        if _configured_for is not None:
            if app._pool is not None:
                app._pool.force_close_all()
            app._after_fork()  # drops the connection and producer pools of the old broker
        configure(app)
        _configured_for = url
    return app


def send_ingest(batch_ids: Iterable[str]) -> None:
    _send("prov.ingest", INGEST_QUEUE, batch_ids)


def send_reconcile(reconcile_keys: Iterable[str]) -> None:
    _send("prov.reconcile", RECONCILE_QUEUE, reconcile_keys)


def _send(task: str, queue: str, arguments: Iterable[str]) -> None:
    arguments = list(arguments)
    if not arguments:
        return
    celery_app = celery()
    with celery_app.producer_or_acquire() as producer:
        for argument in arguments:
            celery_app.send_task(
                task, args=[argument], queue=queue, routing_key=queue, producer=producer
            )
