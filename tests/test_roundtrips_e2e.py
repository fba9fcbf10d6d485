"""Redis round trips per SCIM call in the reconcile hot path (issue 5): the pool's overhead
per call is mostly round trips, so their number is pinned here. Reconciles run in this
process against a Redis of this module's own and a real scim2-server."""

from collections.abc import Iterator

import pytest
import redis
import redis.connection

from tests.conftest import own_redis
from tests.support.harness import Harness
from worker.devstack.redis_server import RedisServer
from worker.queue.workqueue import Workqueue
from worker.store import keys
from worker.sync.runner import process_key


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """No worker of the session pool touches it: every reconcile runs here."""
    yield from own_redis(tmp_path_factory)


class CountingConnection(redis.connection.Connection):
    round_trips = 0

    def send_packed_command(self, command, check_health=True):  # noqa: ANN001
        CountingConnection.round_trips += 1
        super().send_packed_command(command, check_health)


def _run_dirty(r: redis.Redis, counted: redis.Redis, kind: str) -> tuple[int, int]:
    """Reconcile every dirty key of ``kind`` on ``counted``; (runs, SCIM calls)."""
    runs = calls = 0
    queue = Workqueue(r)
    while dirty := [k for k in queue.state().dirty if k.kind == kind]:
        for key in dirty:
            queue.run_now(key)  # no backoff here: run at once
            result = process_key(counted, key)
            assert result.state == "done", result
            runs, calls = runs + 1, calls + result.outcome.calls
    return runs, calls


def test_initial_provisioning_costs_at_most_five_round_trips_per_call(
    r, redis_server, scim_server, tmp_path
):
    from worker.tasks import ingest

    h = Harness(r, scim_server, tmp_path, redis_url=redis_server.url)
    h.activate("zs")
    h.trust_bulk_writes()
    users = [h.user(f"u{i}") for i in range(20)]
    groups = [h.group("g1"), h.group("g2")]
    members = [h.member(f"g{1 + i % 2}", f"u{i}") for i in range(20)]
    h.send(*users, *groups, *members, h.associate("zs", "g1"), h.associate("zs", "g2"),
           wait=False)  # fmt: skip
    for batch in r.zrange(keys.PENDING_BATCHES, 0, -1):
        ingest(batch.decode())
    counted = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(
            redis_server.url, connection_class=CountingConnection
        )
    )
    assert process_key(counted, "zs user u0").outcome.calls == 2  # connects, loads the scripts
    CountingConnection.round_trips = 0
    user_runs, user_calls = _run_dirty(r, counted, "user")
    user_trips = CountingConnection.round_trips
    group_runs, group_calls = _run_dirty(r, counted, "group")
    group_trips = CountingConnection.round_trips - user_trips
    assert (user_runs, user_calls) == (19, 38)  # a lookup and a create each
    assert (group_runs, group_calls) == (2, 4)
    assert len(h.users()) == 20
    assert h.members("g1") == {f"u{i}@example.com" for i in range(0, 20, 2)}
    # per user: claim, 1 read of the projection, 1 of the mirror, 1 before and 1 after each
    # call, the groups still missing it, the release (causes handed on): 9 for 2 calls
    assert user_trips / user_calls <= 4.5, user_trips / user_calls
    assert group_trips / group_calls <= 5, group_trips / group_calls
    # and every call is in the audit log, with the mirror in step and nothing left in doubt
    assert r.xlen(keys.AUDIT) == 1 + 2 + user_calls + group_calls  # and the activation
    assert not r.exists(keys.mirror_doubt("zs", "user"), keys.mirror_doubt("zs", "group"))
