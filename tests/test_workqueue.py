"""Workqueue semantics (client-go's) against a real Redis."""

from collections.abc import Iterator

import pytest

from tests.conftest import own_redis
from worker.devstack.redis_server import RedisServer
from worker.queue.workqueue import QueueStats, Workqueue
from worker.store import scripts
from worker.store.keys import ReconcileKey


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of the session pool touches it."""
    yield from own_redis(tmp_path_factory)


def test_many_marks_before_a_run_cost_one_message(r):
    queue = Workqueue(r)
    assert queue.mark(["a user u1"]) == ["a user u1"]
    assert queue.mark(["a user u1", "a user u1"]) == []
    assert queue.claim("a user u1", "w1") == "claimed"
    assert queue.release("a user u1", "w1") == "done"
    assert queue.claim("a user u1", "w2") == "clean"  # a duplicate message costs nothing


def test_a_key_is_never_held_twice_and_runs_again_when_dirtied_meanwhile(r):
    queue = Workqueue(r)
    queue.mark(["a group g1"])
    assert queue.claim("a group g1", "w1") == "claimed"
    assert queue.mark(["a group g1"]) == []  # the holder will reschedule it
    assert queue.claim("a group g1", "w2") == "busy"
    assert queue.release("a group g1", "w1") == "reschedule"
    assert queue.claim("a group g1", "w2") == "claimed"


def test_the_lease_of_a_dead_worker_lapses_and_the_key_comes_back(r, clock):
    queue = Workqueue(r, lease_seconds=0.2)
    queue.mark(["a user u1"])
    assert queue.claim("a user u1", "dead") == "claimed"
    assert queue.sweep(stale_seconds=30, resend_stale=False) == []
    clock.advance(0.19)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == []
    clock.advance(0.02)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == ["a user u1"]
    assert queue.release("a user u1", "dead") == "lost"  # it cannot write any more
    assert queue.renew("a user u1", "dead") is False
    assert queue.claim("a user u1", "alive") == "claimed"


def test_a_backoff_keeps_the_key_dirty_until_due(r, clock):
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    queue.claim("a user u1", "w1")
    assert queue.release("a user u1", "w1", delay_seconds=0.2) == "delayed"
    assert queue.mark(["a user u1"]) == []  # later changes coalesce into the retry
    assert queue.claim("a user u1", "w2") == "delayed"
    assert not queue.stats().idle
    clock.advance(0.19)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == []  # not due yet
    assert queue.claim("a user u1", "w2") == "delayed"
    clock.advance(0.01)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == ["a user u1"]
    assert queue.claim("a user u1", "w2") == "claimed"


def test_a_backoff_under_a_millisecond_still_keeps_the_key_dirty(r, clock):
    """Full jitter can draw a backoff of a few µs: the failed run is retried all the same
    (rounded down to 0 ms, it was released as done and its retry lost; the chaos test caught
    it as a user left with the attributes of its failed write)."""
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    queue.claim("a user u1", "w1")
    assert queue.finish("a user u1", "w1", 0.0004) == ("delayed", [])
    assert not queue.stats().idle
    clock.advance(0.001)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == ["a user u1"]
    assert queue.claim("a user u1", "w2") == "claimed"


def test_a_lost_message_is_sent_again_when_its_queue_is_empty(r, clock):
    queue = Workqueue(r)
    queue.mark(["a user u1"])  # its message never reaches the broker
    clock.advance(0.05)
    assert queue.sweep(stale_seconds=0.01, resend_stale=False) == []
    assert queue.sweep(stale_seconds=0.01, resend_stale=True) == ["a user u1"]


def test_renewing_while_the_app_is_active_stops_when_it_is_deactivated(r):
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    queue.claim("a user u1", "w1")
    r.sadd("prov:apps:active", "a")
    assert queue.renew("a user u1", "w1", while_active="a") is True
    r.srem("prov:apps:active", "a")
    assert queue.renew("a user u1", "w1", while_active="a") is False
    assert queue.renew("a user u1", "w1") is True  # the lease itself is still ours
    assert queue.release("a user u1", "w1") == "done"


def test_claiming_a_run_also_reads_the_app_and_takes_its_causes(r):
    queue = Workqueue(r)
    r.hset("prov:app:a", "config", b'{"id": "a"}')
    r.lpush("prov:wq:cause:a user u1", "e1", "e2")  # newest first, as lua/mark.lua keeps them
    clean = ("clean", None, [], {})
    assert queue.claim_run("a user u1", "w1", "a", "prov:wq:cause:a user u1") == clean
    assert r.llen("prov:wq:cause:a user u1") == 2  # not claimed: the causes stay
    queue.mark(["a user u1"])
    r.hset("prov:app:a:learned", "form:member_remove", "value")
    state, config, causes, learned = queue.claim_run(
        "a user u1", "w1", "a", "prov:wq:cause:a user u1"
    )
    assert (state, config, causes) == ("claimed", b'{"id": "a"}', ["e1", "e2"])
    assert learned == {b"form:member_remove": b"value"}
    assert not r.exists("prov:wq:cause:a user u1")
    assert queue.claim_run("a user u1", "w2", "a", "prov:wq:cause:a user u1")[0] == "busy"
    queue.release("a user u1", "w1")
    queue.mark(["b user u2"])  # an app that is not stored: no config
    claimed = queue.claim_run("b user u2", "w1", "b", "prov:wq:cause:b user u2")
    assert claimed == ("claimed", None, [], {})


def test_finishing_a_run_releases_marks_follow_ups_and_forgets_failures_in_one_go(r):
    queue = Workqueue(r)
    queue.mark(["a user u1", "a group g2"])
    queue.claim("a user u1", "w1")
    r.hset("prov:wq:attempts", "a user u1", 3)
    r.hset("prov:wq:parked", "a user u1", "why")
    r.hset("prov:wq:deferred", "a user u1", 1)
    r.set("prov:cb:a:state", "probing")
    r.set("prov:cb:a:fails", 4)
    released, follow_up = queue.finish(
        "a user u1", "w1", succeeded=True, close_breaker="a", forget_deferral=True,
        follow_up=["a group g1", "a group g2"],
    )  # fmt: skip
    assert (released, follow_up) == ("done", ["a group g1"])  # g2 was dirty already
    assert not r.hexists("prov:wq:attempts", "a user u1")
    assert not r.hexists("prov:wq:parked", "a user u1")
    assert not r.hexists("prov:wq:deferred", "a user u1")
    assert not r.exists("prov:cb:a:state", "prov:cb:a:fails")
    # a failed run: nothing forgotten, the key comes back after its backoff
    queue.mark(["a user u1"])
    queue.claim("a user u1", "w2")
    r.hset("prov:wq:attempts", "a user u1", 1)
    assert queue.finish("a user u1", "w2", 0.5) == ("delayed", [])
    assert r.hexists("prov:wq:attempts", "a user u1")
    # a lost lease: the follow-ups are marked all the same
    assert queue.finish("a user u1", "w2", follow_up=["a group g3"]) == ("lost", ["a group g3"])


def test_the_end_of_a_run_hands_its_causes_on(r):
    """Follow-ups get the run's causes; a run cut short keeps them for its next attempt."""
    from worker.store.audit import cause_key

    queue = Workqueue(r)
    queue.mark(["a user u1"])
    assert queue.claim("a user u1", "w1") == "claimed"
    r.lpush(cause_key("a group g1"), "e0")  # a follow-up with a cause of its own
    state, scheduled = queue.finish("a user u1", "w1", succeeded=True, causes=["e1", "e2"],
                                    follow_up=["a group g1", "a group g2"])  # fmt: skip
    assert (state, scheduled) == ("done", ["a group g1", "a group g2"])
    assert r.lrange(cause_key("a group g1"), 0, -1) == [b"e2", b"e1", b"e0"]  # newest first
    assert r.lrange(cause_key("a group g2"), 0, -1) == [b"e2", b"e1"]
    assert not r.exists(cause_key("a user u1"))  # answered by this run
    assert 0 < r.ttl(cause_key("a group g2")) <= 86400

    queue.mark(["a user u2"])
    assert queue.claim("a user u2", "w1") == "claimed"
    state, _ = queue.finish("a user u2", "w1", 2.0, causes=["e3"], keep_causes=True)
    assert state == "delayed"
    assert r.lrange(cause_key("a user u2"), 0, -1) == [b"e3"]


def test_idle_is_what_the_snapshot_says(r):
    from worker.cli.status import idle, snapshot

    assert idle(r) and snapshot(r)["idle"]
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    assert not idle(r) and not snapshot(r)["idle"]
    queue.claim("a user u1", "w1")
    assert not idle(r) and not snapshot(r)["idle"]  # in flight
    queue.release("a user u1", "w1", 5.0)
    assert not idle(r) and not snapshot(r)["idle"]  # waiting out a backoff
    r.delete("prov:wq:dirty", "prov:wq:delayed")
    assert idle(r) and snapshot(r)["idle"]


def test_keys_are_typed_values_whose_text_only_redis_and_messages_see(r):
    user = ReconcileKey("a", "user", "u1")
    assert str(user) == "a user u1" and ReconcileKey.parse(b"a user u1") == user
    assert user.object == "user:u1"
    assert ReconcileKey.parse("a group g 1") == ReconcileKey("a", "group", "g 1")
    for malformed in ("a", "a user", "a robot r1"):
        with pytest.raises(ValueError):
            ReconcileKey.parse(malformed)
    queue = Workqueue(r)
    assert queue.mark([user, "a user u1"]) == ["a user u1"]  # a key or its text: one key
    assert queue.claim(user, "w1") == "claimed"
    group = ReconcileKey("a", "group", "g1")
    assert queue.finish(user, "w1", follow_up=[group]) == ("done", ["a group g1"])


def test_what_the_queue_holds_of_an_app(r):
    queue = Workqueue(r)
    a1, a2, a3, b1 = (ReconcileKey(app, "user", u) for app, u in
                      (("a", "u1"), ("a", "u2"), ("a", "u3"), ("ab", "u1")))  # fmt: skip
    queue.mark([a1, a2, a3, b1])
    queue.claim(a1, "w1")  # in flight
    queue.claim(a2, "w1")
    queue.release(a2, "w1", 30.0)  # waiting out a backoff
    queue.park(a3, "why")
    assert queue.in_flight("a") == [a1] and queue.in_flight("ab") == []
    assert queue.busy("a") == {a1, a2, a3} and queue.busy("ab") == {b1}
    assert queue.parked("a") == {a3: "why"} and queue.parked("ab") == {}
    assert queue.due_soon("a", 1000)  # in flight
    assert not queue.due_soon("ab", 1000)  # dirty, but neither in flight nor delayed
    state = queue.state()
    assert state.stats == queue.stats() == QueueStats(dirty=3, in_flight=1, delayed=1, parked=1)
    mine = state.of_app("a")
    assert (sorted(mine.dirty), mine.in_flight, mine.parked) == ([a2, a3], [a1], {a3: "why"})
    due = queue.next_due_ms()
    assert due is not None and 0 < due - scripts.now_ms() <= 30_000
    queue.backoff(a3)
    assert queue.forget_app("a") == 3  # a2 and a3 dirty, a2 delayed; a1's lease stays
    assert queue.parked("a") == {} and not r.hexists("prov:wq:attempts", str(a3))
    assert queue.in_flight("a") == [a1] and queue.busy("ab") == {b1}


def test_run_now_drops_a_backoff_and_sends_no_message(r):
    queue = Workqueue(r)
    key = ReconcileKey("a", "user", "u1")
    queue.mark([key])
    queue.claim(key, "w1")
    queue.release(key, "w1", 60.0)
    assert queue.claim(key, "w2") == "delayed"
    queue.run_now(key)
    assert queue.claim(key, "w2") == "claimed"


def test_a_group_waits_for_members_on_their_way(r):
    queue = Workqueue(r)
    group = ReconcileKey("a", "group", "g1")
    members = [ReconcileKey("a", "user", u) for u in ("u1", "u2")]
    assert queue.waiting_since(group) is None and not queue.any_queued(members)
    queue.mark(members[1:])
    assert queue.any_queued(members)  # dirty
    queue.claim(members[1], "w1")
    assert queue.any_queued(members)  # in flight
    queue.wait_from_now(group)
    since = queue.waiting_since(group)
    assert since is not None and since <= scripts.now_ms()
    queue.wait_from_now(group)  # since the first time
    assert queue.waiting_since(group) == since
    queue.mark([group])
    queue.claim(group, "w1")
    queue.finish(group, "w1", forget_deferral=True)
    assert queue.waiting_since(group) is None


def test_one_sweeper_holds_the_lock(r):
    queue = Workqueue(r)
    assert queue.hold_sweep_lock("w1", 1000) and queue.hold_sweep_lock("w1", 1000)
    assert not queue.hold_sweep_lock("w2", 1000)
    r.delete("prov:wq:sweep")  # w1 died and its lock expired
    assert queue.hold_sweep_lock("w2", 1000)
