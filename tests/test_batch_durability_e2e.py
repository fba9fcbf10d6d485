"""No half-applied batch (issue 13): a stored batch leaves ``ingest:pending`` only in the step
that applies it (``lua/ingest.lua``). A run that fails half way through the batch, or that
Redis refuses at ``maxmemory``, leaves it pending, and it is applied whole later; a batch that
is not v1 is parked before anything of it is applied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import own_redis
from tests.support.harness import Harness, WorkerPool, wait_until
from tests.support.scimserver import ScimServer
from worker.contract.events import parse_events
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import publish
from worker.store import keys

RESEND = keys.PREFIX + "ingest:resend"  # the sweeper's clock of each pending batch


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its memory limit is changed, which no other test may see."""
    yield from own_redis(tmp_path_factory)


def user_created(uid: str, second: int) -> dict[str, Any]:
    record = {"id": uid, "username": f"{uid}@example.com", "state": "active"}
    stamp = f"2026-01-01T00:00:{second:02d}Z"
    return {
        "id": f"e-{uid}",
        "type": "user.created",
        "occurred_at": stamp,
        "data": {"user": record},
    }


def store(client: redis.Redis, documents: list[dict[str, Any]]) -> str:
    """Store the events as one batch, with no wake-up (the test delivers it)."""
    (batch_id,) = publish(client, parse_events(json.dumps(documents)), notify=False).batches
    return batch_id


def pending(client: redis.Redis, batch_id: str) -> bool:
    """Whether the batch is still waiting for ingest, whole: pending, stored, with a clock."""
    return (
        client.zscore(keys.PENDING_BATCHES, batch_id) is not None
        and client.zscore(RESEND, batch_id) is not None
        and bool(client.exists(keys.batch(batch_id)))
    )


def applied(client: redis.Redis, uid: str) -> bool:
    return client.hget(keys.user(uid), "st") == b"active"


def test_a_batch_failing_half_way_stays_pending_and_is_applied_again_whole(
    r: redis.Redis,
) -> None:
    from worker.tasks import ingest

    batch_id = store(r, [user_created(f"u{i}", i) for i in (1, 2, 3)])
    r.set(keys.user("u2"), "not a hash")  # the second event's write fails (WRONGTYPE)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ingest(batch_id)
    assert pending(r, batch_id)  # not dropped, with its third event
    assert applied(r, "u1") and not applied(r, "u3")  # half applied: applied again below
    r.delete(keys.user("u2"))
    ingest(batch_id)
    assert all(applied(r, f"u{i}") for i in (1, 2, 3))
    assert r.zcard(keys.PENDING_BATCHES) == r.zcard(RESEND) == 0
    assert not r.exists(keys.batch(batch_id))
    ingest(batch_id)  # a duplicate wake-up: nothing to do


def test_a_batch_with_an_event_lacking_a_field_is_parked_before_anything_is_applied(
    r: redis.Redis,
) -> None:
    from worker.tasks import ingest

    good = {**user_created("u1", 1), "v": "1"}
    no_state = {**user_created("u2", 2), "v": "2"}
    del no_state["data"]["user"]["state"]
    r.set(keys.batch("b1"), json.dumps([good, no_state]))
    r.zadd(keys.PENDING_BATCHES, {"b1": 1})
    r.zadd(RESEND, {"b1": 1})
    ingest("b1")
    assert r.hget(keys.PARKED_BATCHES, "b1") == b"poison batch: event #2 is not a v1 event"
    assert r.exists(keys.batch("b1"))  # kept for inspection
    assert r.zcard(keys.PENDING_BATCHES) == r.zcard(RESEND) == 0
    assert not r.exists(keys.user("u1"))  # nothing of it applied


def test_a_batch_stays_pending_while_redis_is_out_of_memory_and_is_applied_once_freed(
    r: redis.Redis, redis_server: RedisServer, scim_server: ScimServer, tmp_path: Path
) -> None:
    from worker.tasks import ingest

    pool = WorkerPool(redis_server.url, processes=1, concurrency=2).start()
    try:
        h = Harness(r, scim_server, tmp_path, redis_url=redis_server.url)
        wait_until(lambda: pool.ready(r), timeout=30, what="the pool")
        h.activate("zs")
        documents = []
        for i in range(5):
            documents += [
                h.user(f"u{i}"),
                h.event("app.user_associated", app_id="zs", user_id=f"u{i}"),
            ]
        batch_id = store(r, documents)
        r.config_set("maxmemory", 1)  # noeviction: every write that may grow memory is refused
        try:
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                ingest(batch_id)  # its wake-up, while Redis is out of memory
            assert pending(r, batch_id)
            assert not r.exists(keys.user("u0")) and r.zcard(keys.WQ_DIRTY) == 0  # none of it
            time.sleep(4)  # past the stale delay (3 s): the sweeper cannot drop it either
            assert pending(r, batch_id) and not r.exists(keys.user("u0"))
        finally:
            r.config_set("maxmemory", 0)
        # the sweeper sends its wake-up again: applied whole, then reconciled
        wait_until(lambda: len(h.users()) == 5, timeout=30, what="the users in the app")
        h.wait()
        assert sorted(h.users()) == [f"u{i}@example.com" for i in range(5)]
        assert int(r.hget(keys.COUNTERS, "applied") or 0) == len(documents)
        assert r.zcard(keys.PENDING_BATCHES) == r.zcard(RESEND) == 0
    finally:
        pool.stop()
