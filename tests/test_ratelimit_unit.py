"""The pacing script on a real Redis, step by step (no worker touches this Redis)."""

import time
from collections.abc import Iterator

import pytest

from tests.conftest import own_redis
from worker import keys, ratelimit, scripts
from worker.redis_server import RedisServer
from worker.workqueue import Workqueue


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory)


def test_burst_then_reserved_slots_in_order(r):
    waits = [ratelimit.acquire(r, "a", 5, 2, "t", f"k{i}") for i in range(5)]
    assert waits[:2] == [0, 0]  # the burst
    assert 0 < waits[2] < waits[3] < waits[4]  # then one slot every 200 ms, reserved in order
    assert waits[3] - waits[2] == pytest.approx(0.2, abs=0.01)
    assert ratelimit.acquire(r, "a", 5, 2, "t", "k2") > 0  # k2 keeps its slot, not a new one
    assert ratelimit.acquire(r, "b", 5, 2, "t", "k0") == 0  # another app is not affected


def test_retry_after_pauses_every_key_of_the_app(r):
    ratelimit.pause(r, "a", 1.0)
    assert 0.9 <= ratelimit.acquire(r, "a", 100, 10, "t", "k1") <= 1.0
    assert ratelimit.acquire(r, "b", 100, 10, "t", "k1") == 0


def test_the_breaker_opens_then_lets_a_single_probe_through(r):
    for _ in range(ratelimit.BREAKER_THRESHOLD - 1):
        assert not ratelimit.transient_failure(r, "a")
    assert ratelimit.transient_failure(r, "a")  # the threshold: open, the app paused
    assert ratelimit.breaker_state(r, "a") == "open"
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") > 0
    r.delete("prov:rl:a:until")  # the cooldown is over
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") == 0  # the probe goes
    assert ratelimit.breaker_state(r, "a") == "probing"
    assert ratelimit.acquire(r, "a", 100, 10, "other", "k2") > 0  # everyone else waits
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") == 0  # the probe's next call
    # A run whose call went through closes the breaker as it ends (lease or not).
    Workqueue(r).finish("a user k1", "probe", close_breaker="a")
    assert ratelimit.breaker_state(r, "a") == "closed"
    assert ratelimit.acquire(r, "a", 100, 10, "other", "k2") == 0


def test_a_failed_probe_opens_the_breaker_for_longer(r):
    for _ in range(ratelimit.BREAKER_THRESHOLD):
        ratelimit.transient_failure(r, "a")
    r.delete("prov:rl:a:until")
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") == 0
    assert ratelimit.transient_failure(r, "a")  # the probe failed: open again
    first = float(r.get("prov:cb:a:cooldown"))
    assert first == min(ratelimit.BREAKER_MAX, ratelimit.BREAKER_COOLDOWN * 2)
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") > 0


def test_a_slot_checks_the_lease_and_marks_the_write_in_doubt_in_the_same_round_trip(r):
    r.hset("prov:wq:owner", "k1", "t1")
    r.sadd("prov:apps:active", "a")
    lease, doubt = ("t1", 60000), (keys.mirror_doubt("a", "user"), "u1")
    assert ratelimit.acquire(r, "a", 5, 1, "t1", "k1", lease=lease, doubt=doubt) == 0
    assert r.sismember(*doubt)
    assert r.zscore("prov:wq:leases", "k1") > 0  # renewed
    # not our lease, or the app deactivated: no slot taken, nothing marked
    r.delete(doubt[0])
    stolen = ("someone else", 60000)
    assert ratelimit.acquire(r, "a", 5, 1, "t1", "k1", lease=stolen, doubt=doubt) == ratelimit.LOST
    r.srem("prov:apps:active", "a")
    assert ratelimit.acquire(r, "a", 5, 1, "t1", "k1", lease=lease, doubt=doubt) == ratelimit.LOST
    assert not r.exists(doubt[0])
    # the app is back; the next slot is 200 ms away: reserved, and nothing is in doubt yet
    r.sadd("prov:apps:active", "a")
    wait = ratelimit.acquire(r, "a", 5, 1, "t1", "k1", lease=lease, doubt=doubt)
    assert 0 < wait <= 0.2
    assert not r.exists(doubt[0])


def test_a_fast_app_is_paced_so_that_the_cap_holds_on_its_own(r):
    """At 200/s with a burst of 5, slots are reserved (rate + burst) / 1.05 s apart, 5.12 ms:
    a backlog never meets the hard cap, which would cost a key a second run."""
    slots = []  # when each slot is due, on this process's clock
    for i in range(400):
        asked = time.monotonic()
        slots.append(asked + ratelimit.acquire(r, "fast", 200, 5, "t", f"k{i}"))
    assert all(s <= slots[4] for s in slots[:5])  # the burst
    spacing = (slots[-1] - slots[100]) / 299
    assert spacing == pytest.approx(1.05 / 205, abs=0.0001)
    slow = [ratelimit.acquire(r, "slow", 5, 5, "t", f"k{i}") for i in range(8)]
    assert slow[6] - slow[5] == pytest.approx(0.2, abs=0.005)  # 5/s keeps 1 / rate


def test_slots_used_late_never_bunch_beyond_the_cap(r):
    """Keys whose reserved slots are long due all come back at once: the hard cap lets rate +
    burst of them through in the window (1.05 s) and makes the others wait."""
    waits = [ratelimit.acquire(r, "late", 200, 5, "t", f"k{i}") for i in range(300)]
    time.sleep(max(waits) + 1.2)  # every reservation due, and the burst's grants out of the window
    again = [ratelimit.acquire(r, "late", 200, 5, "t", f"k{i}") for i in range(300)]
    assert sum(1 for w in again if w == 0) == 205  # rate + burst
    assert all(0 < w <= 1.05 for w in again if w)


def test_pacing_follows_redis_clock_whatever_the_workers_clocks_say(r, monkeypatch):
    """Two workers whose clocks are 10 s apart share one app's pace: each slot comes 1 / rate
    after the one before, not 10 s later (or at once) as their own clocks would have it."""
    real = scripts.now_ms
    waits = []
    for i, skew in enumerate((5000, -5000, 5000, -5000)):
        monkeypatch.setattr(scripts, "now_ms", lambda skew=skew: real() + skew)
        waits.append(ratelimit.acquire(r, "skew", 5, 1, "t", f"k{i}"))
    assert waits[0] == 0
    assert [round(w, 1) for w in waits[1:]] == [0.2, 0.4, 0.6]
