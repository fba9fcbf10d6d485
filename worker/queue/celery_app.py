"""The Celery application: broker settings that keep messages safe.

- ``acks_late`` with ``reject_on_worker_lost``: a message is acknowledged after its task ran; a
  child killed mid-task puts its message back.
- prefetch of one message per process: a killed worker holds back little.
- no ETA or countdown anywhere: delays live in the workqueue (``wq:delayed``), so nothing waits
  in the broker past the visibility timeout.
- no result backend: tasks report through Redis state, not results.
- the broker is the pool's Redis, whatever form ``REDIS_URL`` takes (``broker_settings``):
  one server, TLS, or the primary that Sentinel names; the credentials travel as settings,
  never in the broker URL that Celery prints.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import uuid
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from kombu import Exchange, Queue
from kombu import pools as kombu_pools

from worker.config import SENTINEL_OPTIONS, RedisTarget, redis_client, settings

INGEST_QUEUE = "prov.ingest"
RECONCILE_QUEUE = "prov.reconcile"

app = Celery("provisioner")


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def broker_settings(target: RedisTarget, visibility_timeout: int) -> dict[str, Any]:
    """Celery's broker settings for ``target``: kombu's Redis transport minus a client per ack
    (``worker.queue.broker``), or its Sentinel variant; login and TLS as settings."""
    host, port = target.hosts[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if target.sentinel:
        url, transport = f"sentinel://{address}/{target.db}", "SentinelTransport"
        options.update(master_name=target.service, sentinels=[list(h) for h in target.hosts],
                       sentinel_kwargs=dict(SENTINEL_OPTIONS))  # fmt: skip
    else:
        url, transport = f"redis://{address}/{target.db}", "Transport"
    tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
           "ssl_ca_certs": str(target.ca_file) if target.ca_file else None}  # fmt: skip
    return {
        "broker_url": url,
        "broker_transport": f"worker.queue.broker:{transport}",
        "broker_transport_options": options,
        "broker_user": target.username,
        "broker_password": target.password,
        "broker_use_ssl": tls if target.tls else False,
    }


def configure(celery: Celery) -> None:
    conf = settings()
    celery.conf.update(
        **broker_settings(conf.redis_target, conf.visibility_timeout),
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
        imports=["worker.tasks", "worker.apps.importer"],
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
            kombu_pools.reset()  # and kombu's own, which send_task's producers come from
        configure(app)
        _configured_for = url
    return app


def send_ingest(batch_ids: Iterable[str]) -> None:
    _send("prov.ingest", INGEST_QUEUE, [[b] for b in batch_ids])


def ingest_message(batch_id: str) -> bytes:
    """The wake-up for a batch, for ``store_batch.lua`` to queue as it stores the batch."""
    return task_message("prov.ingest", INGEST_QUEUE, batch_id)


# A backlog's keys travel up to KEYS_PER_MESSAGE to a message: a message costs a worker about
# 1 ms of CPU in kombu and Celery (delivery, unacked bookkeeping, ack), as much as a fifth of a
# reconcile. A few keys (up to SPREAD) still go one per message, to as many threads at once.
KEYS_PER_MESSAGE = 4
SPREAD = 64


def send_reconcile(reconcile_keys: Iterable[str]) -> None:
    """Wake-ups for ``reconcile_keys``, in order; grouped when there are many of them."""
    keys = list(reconcile_keys)
    size = min(KEYS_PER_MESSAGE, max(1, -(-len(keys) // SPREAD)))
    _send(
        "prov.reconcile", RECONCILE_QUEUE, [keys[i : i + size] for i in range(0, len(keys), size)]
    )


def _send(task: str, queue: str, calls: Iterable[list[str]]) -> None:
    """Queue one message per call (its arguments), in one LPUSH.

    Celery's ``send_task`` costs about 0.9 ms of CPU per message through kombu (a Redis client
    built per message, routing, declaration checks): more than the webhook's whole commit, and
    a large share of a reconcile. The messages are written here as kombu's Redis transport
    writes them (Celery's task protocol 2, JSON, straight to the queue's list, since every
    queue is bound to the direct exchange of its own name). ``tests/test_celery_messages.py``
    compares them with what ``send_task`` writes, field by field."""
    messages = [task_message(task, queue, *arguments) for arguments in calls]
    if messages:
        redis_client().lpush(queue, *messages)  # the broker: the same Redis (configure())


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_HOST = socket.gethostname()
_REPLY_TO = str(uuid.uuid4())


def task_message(task: str, queue: str, *arguments: str) -> bytes:
    """One Celery message (protocol 2) calling ``task(*arguments)``, as kombu stores it."""
    task_id = str(uuid.uuid4())
    body = json.dumps([list(arguments), {}, _EMBED]).encode()
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": saferepr(list(arguments)), "kwargsrepr": "{}", "origin": f"gen{os.getpid()}@{_HOST}",
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": _REPLY_TO, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }  # fmt: skip
    return json.dumps(message).encode()
