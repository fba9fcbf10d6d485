"""Workqueue semantics (client-go's) against a real Redis."""

from collections.abc import Iterator

import pytest

from tests.conftest import own_redis
from worker.devstack.redis_server import RedisServer
from worker.queue.workqueue import ClaimedRun, QueueStats, Workqueue
from worker.store.keys import ReconcileKey


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of the session pool touches it."""
    yield from own_redis(tmp_path_factory)


def test_many_marks_before_a_run_cost_one_message(r):
    queue = Workqueue(r)
    assert queue.mark(["a user u1"]) == ["a user u1"]
    assert queue.mark(["a user u1", "a user u1"]) == []
    state, w1 = queue.claim("a user u1")
    assert state == "claimed"
    assert queue.release("a user u1", w1) == "done"
    assert queue.claim("a user u1") == ("clean", "")  # a duplicate message costs nothing


def test_a_key_is_never_held_twice_and_runs_again_when_dirtied_meanwhile(r):
    queue = Workqueue(r)
    queue.mark(["a group g1"])
    state, w1 = queue.claim("a group g1")
    assert state == "claimed"
    assert queue.mark(["a group g1"]) == []  # the holder will reschedule it
    assert queue.claim("a group g1").state == "busy"
    assert queue.release("a group g1", w1) == "reschedule"
    assert queue.claim("a group g1").state == "claimed"


def test_each_claim_of_a_key_hands_out_a_greater_fencing_token(r):
    queue = Workqueue(r)
    tokens = []
    for _ in range(3):
        queue.mark(["a user u1"])
        claim = queue.claim("a user u1")
        tokens.append(int(claim.token))
        assert r.hget("prov:wq:owner", "a user u1") == claim.token.encode()
        queue.release("a user u1", claim.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    queue.mark(["a user u2"])
    assert queue.claim("a user u2").token == "1"  # per key


def test_the_lease_of_a_dead_worker_lapses_and_the_key_comes_back(r, clock):
    queue = Workqueue(r, lease_seconds=60)
    queue.mark(["a user u1"])
    dead = queue.claim("a user u1").token
    assert queue.sweep(stale_seconds=300, resend_stale=False) == []
    clock.advance(59)  # Redis's clock runs on meanwhile: a second of margin
    assert queue.sweep(stale_seconds=300, resend_stale=False) == []
    clock.advance(2)
    assert queue.sweep(stale_seconds=300, resend_stale=False) == ["a user u1"]
    assert queue.release("a user u1", dead) == "lost"  # it cannot write any more
    assert queue.renew("a user u1", dead) is False
    assert queue.claim("a user u1").state == "claimed"


def test_a_release_with_a_stale_token_changes_nothing(r, clock):
    """A worker that wakes up past its lease (another holds the key now) neither forgets
    failures, parks, closes a breaker, forgets a deferral, nor marks follow-ups."""
    queue = Workqueue(r, lease_seconds=1)
    queue.mark(["a user u1"])
    stale = queue.claim("a user u1").token
    clock.advance(2)
    assert queue.sweep(stale_seconds=300, resend_stale=False) == ["a user u1"]
    current = queue.claim("a user u1").token
    r.hset("prov:wq:attempts", "a user u1", 3)
    r.hset("prov:wq:deferred", "a user u1", 1)
    r.set("prov:cb:a:state", "probing")
    before = {k: r.dump(k) for k in r.keys("prov:*")}
    answer = queue.finish("a user u1", stale, 5.0, succeeded=True, close_breaker="a",
                          forget_deferral=True, follow_up=["a group g1"], causes=["e1"],
                          keep_causes=True, park="why")  # fmt: skip
    assert answer == ("lost", [])
    assert {k: r.dump(k) for k in r.keys("prov:*")} == before
    assert queue.backoff("a user u1", stale) is None
    assert r.hget("prov:wq:attempts", "a user u1") == b"3"
    assert queue.backoff("a user u1", current) is not None
    assert queue.finish("a user u1", current, park="why") == ("done", [])
    assert queue.parked("a") == {ReconcileKey("a", "user", "u1"): "why"}


def test_a_backoff_keeps_the_key_dirty_until_due(r, clock):
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    w1 = queue.claim("a user u1").token
    assert queue.release("a user u1", w1, delay_seconds=60) == "delayed"
    assert queue.mark(["a user u1"]) == []  # later changes coalesce into the retry
    assert queue.claim("a user u1").state == "delayed"
    assert not queue.stats().idle
    clock.advance(59)
    assert queue.sweep(stale_seconds=300, resend_stale=False) == []  # not due yet
    assert queue.claim("a user u1").state == "delayed"
    clock.advance(1)
    assert queue.sweep(stale_seconds=300, resend_stale=False) == ["a user u1"]
    assert queue.claim("a user u1").state == "claimed"


def test_a_backoff_under_a_millisecond_still_keeps_the_key_dirty(r, clock):
    """Full jitter can draw a backoff of a few µs: the failed run is retried all the same
    (rounded down to 0 ms, it was released as done and its retry lost; the chaos test caught
    it as a user left with the attributes of its failed write)."""
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    w1 = queue.claim("a user u1").token
    assert queue.finish("a user u1", w1, 0.0004) == ("delayed", [])
    assert not queue.stats().idle
    clock.advance(0.001)
    assert queue.sweep(stale_seconds=30, resend_stale=False) == ["a user u1"]
    assert queue.claim("a user u1").state == "claimed"


def test_a_lost_message_is_sent_again_whether_or_not_its_queue_is_empty(r, clock):
    """``resend_stale``: the queue is empty. The schedule behind a backlog (doubling
    intervals) is tested in tests/test_lost_wakeup_e2e.py."""
    queue = Workqueue(r)
    queue.mark(["a user u1"])  # its message never reaches the broker
    clock.advance(0.05)
    assert queue.sweep(stale_seconds=0.01, resend_stale=True) == ["a user u1"]
    clock.advance(0.05)
    assert queue.sweep(stale_seconds=0.01, resend_stale=False) == ["a user u1"]


def test_renewing_while_the_app_is_active_stops_when_it_is_deactivated(r):
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    w1 = queue.claim("a user u1").token
    r.sadd("prov:apps:active", "a")
    assert queue.renew("a user u1", w1, while_active="a") is True
    r.srem("prov:apps:active", "a")
    assert queue.renew("a user u1", w1, while_active="a") is False
    assert queue.renew("a user u1", w1) is True  # the lease itself is still ours
    assert queue.release("a user u1", w1) == "done"


def test_claiming_a_run_also_reads_the_app_and_takes_its_causes(r):
    queue = Workqueue(r)
    r.hset("prov:app:a", "config", b'{"id": "a"}')
    r.lpush("prov:wq:cause:a user u1", "e1", "e2")  # newest first, as lua/mark.lua keeps them
    assert queue.claim_run("a user u1", "a", "prov:wq:cause:a user u1") == ClaimedRun("clean")
    assert r.llen("prov:wq:cause:a user u1") == 2  # not claimed: the causes stay
    queue.mark(["a user u1"])
    r.hset("prov:app:a:learned", "form:member_remove", "value")
    run = queue.claim_run("a user u1", "a", "prov:wq:cause:a user u1")
    assert (run.state, run.token, run.config) == ("claimed", "1", b'{"id": "a"}')
    assert run.causes == ["e1", "e2"]
    assert run.learned == {b"form:member_remove": b"value"}
    assert not r.exists("prov:wq:cause:a user u1")
    assert queue.claim_run("a user u1", "a", "prov:wq:cause:a user u1").state == "busy"
    queue.release("a user u1", run.token)
    queue.mark(["b user u2"])  # an app that is not stored: no config
    claimed = queue.claim_run("b user u2", "b", "prov:wq:cause:b user u2")
    assert claimed == ClaimedRun("claimed", "1", None, [], {})


def test_finishing_a_run_releases_marks_follow_ups_and_forgets_failures_in_one_go(r):
    queue = Workqueue(r)
    queue.mark(["a user u1", "a group g2"])
    w1 = queue.claim("a user u1").token
    r.hset("prov:wq:attempts", "a user u1", 3)
    r.hset("prov:wq:parked", "a user u1", "why")
    r.hset("prov:wq:deferred", "a user u1", 1)
    r.set("prov:cb:a:state", "probing")
    r.set("prov:cb:a:fails", 4)
    released, follow_up = queue.finish(
        "a user u1", w1, succeeded=True, close_breaker="a", forget_deferral=True,
        follow_up=["a group g1", "a group g2"],
    )  # fmt: skip
    assert (released, follow_up) == ("done", ["a group g1"])  # g2 was dirty already
    assert not r.hexists("prov:wq:attempts", "a user u1")
    assert not r.hexists("prov:wq:parked", "a user u1")
    assert not r.hexists("prov:wq:deferred", "a user u1")
    assert not r.exists("prov:cb:a:state", "prov:cb:a:fails")
    # a failed run: nothing forgotten, the key comes back after its backoff
    queue.mark(["a user u1"])
    w2 = queue.claim("a user u1").token
    r.hset("prov:wq:attempts", "a user u1", 1)
    assert queue.finish("a user u1", w2, 0.5) == ("delayed", [])
    assert r.hexists("prov:wq:attempts", "a user u1")
    # a lost lease: nothing is marked (the key's holder, or its next run, does that)
    assert queue.finish("a user u1", w2, follow_up=["a group g3"]) == ("lost", [])
    assert r.zscore("prov:wq:dirty", "a group g3") is None


def test_the_end_of_a_run_hands_its_causes_on(r):
    """Follow-ups get the run's causes; a run cut short keeps them for its next attempt."""
    from worker.store.audit import cause_key

    queue = Workqueue(r)
    queue.mark(["a user u1"])
    w1 = queue.claim("a user u1").token
    r.lpush(cause_key("a group g1"), "e0")  # a follow-up with a cause of its own
    state, scheduled = queue.finish("a user u1", w1, succeeded=True, causes=["e1", "e2"],
                                    follow_up=["a group g1", "a group g2"])  # fmt: skip
    assert (state, scheduled) == ("done", ["a group g1", "a group g2"])
    assert r.lrange(cause_key("a group g1"), 0, -1) == [b"e2", b"e1", b"e0"]  # newest first
    assert r.lrange(cause_key("a group g2"), 0, -1) == [b"e2", b"e1"]
    assert not r.exists(cause_key("a user u1"))  # answered by this run
    assert 0 < r.ttl(cause_key("a group g2")) <= 86400

    queue.mark(["a user u2"])
    w1 = queue.claim("a user u2").token
    state, _ = queue.finish("a user u2", w1, 2.0, causes=["e3"], keep_causes=True)
    assert state == "delayed"
    assert r.lrange(cause_key("a user u2"), 0, -1) == [b"e3"]


def test_idle_is_what_the_snapshot_says(r):
    from worker.cli.status import idle, snapshot

    assert idle(r) and snapshot(r)["idle"]
    queue = Workqueue(r)
    queue.mark(["a user u1"])
    assert not idle(r) and not snapshot(r)["idle"]
    w1 = queue.claim("a user u1").token
    assert not idle(r) and not snapshot(r)["idle"]  # in flight
    queue.release("a user u1", w1, 5.0)
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
    state, w1 = queue.claim(user)
    assert state == "claimed"
    group = ReconcileKey("a", "group", "g1")
    assert queue.finish(user, w1, follow_up=[group]) == ("done", ["a group g1"])


def test_what_the_queue_holds_of_an_app(r):
    queue = Workqueue(r)
    a1, a2, a3, b1 = (ReconcileKey(app, "user", u) for app, u in
                      (("a", "u1"), ("a", "u2"), ("a", "u3"), ("ab", "u1")))  # fmt: skip
    queue.mark([a1, a2, a3, b1])
    queue.claim(a1)  # in flight
    queue.release(a2, queue.claim(a2).token, 30.0)  # waiting out a backoff
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
    due_in = queue.due_in_ms()
    assert due_in is not None and 0 < due_in <= 30_000
    r.hset("prov:wq:attempts", str(a3), 1)
    assert queue.forget_app("a") == 3  # a2 and a3 dirty, a2 delayed; a1's lease stays
    assert queue.parked("a") == {} and not r.hexists("prov:wq:attempts", str(a3))
    assert queue.in_flight("a") == [a1] and queue.busy("ab") == {b1}


def test_run_now_drops_a_backoff_and_sends_no_message(r):
    queue = Workqueue(r)
    key = ReconcileKey("a", "user", "u1")
    queue.mark([key])
    queue.release(key, queue.claim(key).token, 60.0)
    assert queue.claim(key).state == "delayed"
    queue.run_now(key)
    assert queue.claim(key).state == "claimed"


def test_a_group_waits_for_members_on_their_way(r, clock):
    queue = Workqueue(r)
    group = ReconcileKey("a", "group", "g1")
    members = [ReconcileKey("a", "user", u) for u in ("u1", "u2")]
    assert queue.waited_ms(group) is None and not queue.any_queued(members)
    queue.mark(members[1:])
    assert queue.any_queued(members)  # dirty
    queue.claim(members[1])
    assert queue.any_queued(members)  # in flight
    queue.wait_from_now(group)
    assert queue.waited_ms(group) is not None
    clock.advance(10)
    queue.wait_from_now(group)  # since the first time
    waited = queue.waited_ms(group)
    assert waited is not None and 10_000 <= waited < 11_000
    queue.mark([group])
    queue.finish(group, queue.claim(group).token, forget_deferral=True)
    assert queue.waited_ms(group) is None


def test_one_sweeper_holds_the_lock(r):
    queue = Workqueue(r)
    assert queue.hold_sweep_lock("w1", 1000) and queue.hold_sweep_lock("w1", 1000)
    assert not queue.hold_sweep_lock("w2", 1000)
    r.delete("prov:wq:sweep")  # w1 died and its lock expired
    assert queue.hold_sweep_lock("w2", 1000)
