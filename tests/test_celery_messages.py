"""The wake-up messages the product writes itself (``celery_app.task_message``) are the ones
Celery's ``send_task`` writes through kombu's Redis transport, field by field: if an upgrade of
Celery or kombu changes the format, this fails before a worker misreads a message. (That the
workers run them is what every end-to-end test relies on.)"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from worker.celery_app import celery, send_reconcile, task_message

QUEUE = "test.capture"  # no worker consumes it
UNIQUE = {("headers", "id"), ("headers", "root_id"), ("headers", "origin"),
          ("properties", "correlation_id"), ("properties", "reply_to"),
          ("properties", "delivery_tag")}  # fmt: skip


def fields(message: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    """Every leaf of a message, by path; the body decoded."""
    flat: dict[tuple[str, ...], Any] = {}
    for name, value in message.items():
        if name == "body":
            flat[(name,)] = json.loads(base64.b64decode(value))
        elif isinstance(value, dict):
            flat.update({(name, *path): v for path, v in fields(value).items()})
        else:
            flat[(name,)] = value
    return flat


def test_task_message_is_what_send_task_writes(r: redis.Redis) -> None:
    app = celery()
    for task, argument in (("prov.ingest", "batch-1"), ("prov.reconcile", 'user:"a\\b" é')):
        r.delete(QUEUE)
        app.send_task(task, args=[argument], queue=QUEUE, routing_key=QUEUE)
        (written,) = r.lrange(QUEUE, 0, -1)
        theirs, ours = (
            fields(json.loads(written)),
            fields(json.loads(task_message(task, QUEUE, argument))),
        )
        assert set(theirs) == set(ours)
        assert {p: v for p, v in theirs.items() if p not in UNIQUE} == {
            p: v for p, v in ours.items() if p not in UNIQUE
        }
        assert (
            ours[("headers", "id")]
            == ours[("headers", "root_id")]
            == ours[("properties", "correlation_id")]
        )
    r.delete(QUEUE)


def test_messages_are_queued_in_order_and_unique(r: redis.Redis, monkeypatch: Any) -> None:
    """One LPUSH for several keys; workers pop from the right: first sent, first run."""
    from worker import celery_app

    monkeypatch.setattr(celery_app, "RECONCILE_QUEUE", QUEUE)
    r.delete(QUEUE)
    sent = [f"user:u{i}" for i in range(5)]
    send_reconcile(sent)
    queued = [json.loads(m) for m in reversed(r.lrange(QUEUE, 0, -1))]
    assert [json.loads(base64.b64decode(m["body"]))[0][0] for m in queued] == sent
    assert (
        len({m["headers"]["id"] for m in queued})
        == len({m["properties"]["delivery_tag"] for m in queued})
        == 5
    )
    send_reconcile([])
    assert r.llen(QUEUE) == 5
    r.delete(QUEUE)
