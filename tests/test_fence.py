"""One clock and fenced writes (issue 13), script by script against a real Redis: every time a
script stamps is Redis's, and a run's writes and release are accepted only with its key's
current fencing token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import own_redis
from worker.contract.model import MirrorUser
from worker.devstack.redis_server import RedisServer
from worker.queue.workqueue import Workqueue
from worker.store import audit, keys, scripts
from worker.store.audit import AuditEntry
from worker.store.fence import Fence, LeaseLost
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror
from worker.sync.dryrun import OverlayMirror

KEY = ReconcileKey("a", "user", "u1")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of the session pool touches it."""
    yield from own_redis(tmp_path_factory)


def claimed(queue: Workqueue, key: ReconcileKey = KEY) -> str:
    queue.mark([key])
    claim = queue.claim(key)
    assert claim.state == "claimed"
    return claim.token


def entry(token: str) -> AuditEntry:
    return AuditEntry("user_update_provision", "a", KEY.object, "success", 200, token=token)


def test_times_are_redis_s_whatever_the_worker_s_clock_says(r, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a worker's clock far off
    queue = Workqueue(r, lease_seconds=60)
    before = scripts.redis_now_ms(r)
    claimed(queue)
    after = scripts.redis_now_ms(r)
    expiry = r.zscore(keys.WQ_LEASES, str(KEY))
    assert before + 60_000 <= expiry <= after + 60_000
    audit.record(r, entry("1"))
    (logged,) = audit.read(r)
    assert before / 1000 - 1 <= logged["time"] <= after / 1000 + 1  # the stream id's time


def test_the_test_clock_is_an_offset_on_redis_s(r, clock):
    start = scripts.redis_now_ms(r)
    clock.advance(3600)
    assert 3_600_000 <= scripts.redis_now_ms(r) - start < 3_610_000
    Workqueue(r).mark([KEY])
    assert 3_600_000 <= r.zscore(keys.WQ_DIRTY, str(KEY)) - start < 3_610_000


def test_a_record_with_the_current_token_is_written_with_its_audit_entry(r):
    token = claimed(Workqueue(r))
    mirror = Mirror(r, "a", Fence(KEY, token))
    mirror.begin_write("user", "u1")
    mirror.then(audit.command(entry(token)))
    mirror.save_user("u1", MirrorUser("r1", {"userName": "u1"}))
    assert mirror.user("u1") == MirrorUser("r1", {"userName": "u1"})
    assert not r.sismember(keys.mirror_doubt("a", "user"), "u1")
    assert [e["token"] for e in audit.read(r)] == [token]


def test_a_record_with_a_stale_token_writes_nothing_and_leaves_the_object_in_doubt(r, clock):
    queue = Workqueue(r, lease_seconds=1)
    stale = claimed(queue)
    clock.advance(2)
    queue.sweep(stale_seconds=300, resend_stale=False)
    current = claimed(queue)
    assert int(current) > int(stale)
    r.srem(keys.mirror_doubt("a", "user"), "u1")  # the current holder read the object back
    mirror = Mirror(r, "a", Fence(KEY, stale))
    mirror.then(audit.command(entry(stale)))
    with pytest.raises(LeaseLost) as lost:
        mirror.save_user("u1", MirrorUser("r1", {"userName": "u1"}))
    assert lost.value.schedule == []  # held: its holder runs it again on release
    assert r.hget(keys.mirror("a", "user"), "u1") is None
    assert not r.exists(keys.AUDIT)
    assert r.sismember(keys.mirror_doubt("a", "user"), "u1")  # read back before planning
    assert r.zscore(keys.WQ_DIRTY, str(KEY)) is not None
    assert queue.release(KEY, current) == "reschedule"


def test_a_refused_record_with_no_holder_sends_the_key_again(r, clock):
    queue = Workqueue(r, lease_seconds=1)
    stale = claimed(queue)
    clock.advance(2)
    queue.sweep(stale_seconds=300, resend_stale=False)
    queue.release(KEY, claimed(queue))  # another run did the key and let it go
    with pytest.raises(LeaseLost) as lost:
        Mirror(r, "a", Fence(KEY, stale)).forget_user("u1")
    assert lost.value.schedule == [str(KEY)]


def test_a_mirror_without_a_fence_writes_as_before(r):
    mirror = Mirror(r, "a")
    mirror.then(audit.command(entry("")))
    mirror.remember_absent("user", "u1")
    assert mirror.looked_up("user", "u1") and len(audit.read(r)) == 1


def test_a_dry_run_s_mirror_keeps_its_writes_in_memory(r):
    mirror = OverlayMirror(r, "a")
    mirror.begin_write("user", "u1")
    mirror.save_user("u1", MirrorUser("r1", {"userName": "u1"}))
    assert mirror.load_user("u1") == (MirrorUser("r1", {"userName": "u1"}), False, False)
    mirror.forget_user("u1")
    assert mirror.user("u1") is None
    assert not r.keys("prov:mirror:*")


def test_audit_entries_carry_the_token_and_redis_s_time(r):
    audit.record(r, entry("7"))
    raw = json.loads(r.xrange(keys.AUDIT)[0][1][b"e"])
    assert raw["token"] == "7" and raw["time"] is None  # Redis's: the stream id's
    assert audit.read(r)[0]["time"] > 0
