"""The wake-up messages the product writes itself (``celery_app.task_message``) are the ones
Celery's ``send_task`` writes through kombu's Redis transport, field by field: if an upgrade of
Celery or kombu changes the format, this fails before a worker misreads a message. (That the
workers run them is what every end-to-end test relies on.)"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from worker.queue.celery_app import celery, send_reconcile, task_message

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
    for task, arguments in (
        ("prov.ingest", ["batch-1"]),
        ("prov.reconcile", ['user:"a\\b" é']),
        ("prov.reconcile", ["zs user u1", "zs user u2", "zs group g1"]),  # grouped keys
    ):
        r.delete(QUEUE)
        app.send_task(task, args=arguments, queue=QUEUE, routing_key=QUEUE)
        (written,) = r.lrange(QUEUE, 0, -1)
        theirs, ours = (
            fields(json.loads(written)),
            fields(json.loads(task_message(task, QUEUE, *arguments))),
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
    from worker.queue import celery_app

    monkeypatch.setattr(celery_app, "RECONCILE_QUEUE", QUEUE)
    r.delete(QUEUE)
    sent = [f"user:u{i}" for i in range(5)]
    send_reconcile(sent)
    queued = [json.loads(m) for m in reversed(r.lrange(QUEUE, 0, -1))]
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in queued] == [[k] for k in sent]
    assert (
        len({m["headers"]["id"] for m in queued})
        == len({m["properties"]["delivery_tag"] for m in queued})
        == 5
    )
    send_reconcile([])
    assert r.llen(QUEUE) == 5
    r.delete(QUEUE)


def test_a_backlog_travels_a_few_keys_to_a_message(r: redis.Redis, monkeypatch: Any) -> None:
    """Up to SPREAD keys go one per message (to as many threads); more go up to
    KEYS_PER_MESSAGE to a message, in order, each key once."""
    from worker.queue import celery_app

    monkeypatch.setattr(celery_app, "RECONCILE_QUEUE", QUEUE)
    for count, per_message in ((celery_app.SPREAD, 1), (celery_app.SPREAD + 1, 2), (1000, 4)):
        r.delete(QUEUE)
        sent = [f"zs user u{i}" for i in range(count)]
        send_reconcile(sent)
        calls = [json.loads(base64.b64decode(json.loads(m)["body"]))[0]
                 for m in reversed(r.lrange(QUEUE, 0, -1))]  # fmt: skip
        assert [k for call in calls for k in call] == sent
        assert max(len(call) for call in calls) == per_message
    r.delete(QUEUE)


def test_the_keys_of_a_message_left_by_a_failure_are_sent_again(monkeypatch: Any) -> None:
    """A message's keys run in turn; when one fails with an error of Redis (the task fails and
    its message is acked late), the keys not run yet get a wake-up of their own."""
    from worker import tasks

    ran, resent = [], []

    def process_key(client: Any, key: str) -> None:
        ran.append(key)
        if key == "zs user u2":
            raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(tasks, "process_key", process_key)
    monkeypatch.setattr(tasks, "send_reconcile", lambda keys: resent.extend(keys))
    with pytest.raises(redis.ConnectionError):
        tasks.reconcile.run("zs user u1", "zs user u2", "zs user u3", "zs user u4")
    assert ran == ["zs user u1", "zs user u2"]
    assert resent == ["zs user u3", "zs user u4"]
