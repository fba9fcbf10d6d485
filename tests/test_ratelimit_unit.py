"""The pacing script on a real Redis, step by step (no worker touches this Redis).

The script runs on Redis's clock (``TIME``), so the tests time it on that clock too: the
``r`` client here reads ``TIME`` in the same transaction as each script it runs (``r.ran``),
and a slot is due at ``r.ran + wait``. Neither a slow start (a script loaded, a connection
opened) nor this process being held up between two calls (a loaded machine, other tests
running beside) moves what is measured, as long as it is held up for less than a slot: the
tests that run a backlog at 200/s (a slot every 5 ms), or whose keys sleep until their slots,
are run again (twice at most) when a full suite on 2 cores held them up longer than that; a
limiter that is wrong fails every run."""

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import own_redis
from tests.support.scimserver import ScimServer
from worker.config import settings
from worker.devstack.redis_server import RedisServer
from worker.queue.workqueue import Workqueue
from worker.store import keys
from worker.sync import ratelimit

pytestmark = pytest.mark.flaky(reruns=2, only_rerun=["AssertionError"])


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory)


class Timed(redis.Redis):
    """A client whose each script run reads Redis's clock in the same transaction, just before
    the script: ``ran`` is the time (s, Redis's clock) the last script saw."""

    ran = 0.0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        pipe = self.pipeline(transaction=True)
        pipe.time()
        pipe.evalsha(sha, numkeys, *keys_and_args)
        (seconds, micros), result = pipe.execute()
        self.ran = seconds + micros / 1e6
        return result


@pytest.fixture
def r(r: redis.Redis, redis_server: RedisServer) -> Iterator[Timed]:
    """The test Redis, wiped (conftest's ``r``), through a ``Timed`` client."""
    client = Timed.from_url(redis_server.url)
    ratelimit.pace(client, "warm-up", 1, 1)  # the script loaded, the connection open
    yield client
    client.close()


def due(r: Timed, wait: float) -> float:
    """When a slot is due, on Redis's clock: the last script's time plus the ``wait`` it gave."""
    return r.ran + wait


def test_burst_then_reserved_slots_in_order(r):
    waits, dues = [], []
    for i in range(5):
        waits.append(ratelimit.acquire(r, "a", 5, 2, "t", f"k{i}"))
        dues.append(due(r, waits[-1]))
    assert waits[:2] == [0, 0]  # the burst
    assert 0 < waits[2] < waits[3] < waits[4]  # then one slot every 200 ms, reserved in order
    assert dues[3] - dues[2] == pytest.approx(0.2, abs=0.002)
    assert ratelimit.acquire(r, "a", 5, 2, "t", "k2") > 0  # k2 keeps its slot, not a new one
    assert ratelimit.acquire(r, "b", 5, 2, "t", "k0") == 0  # another app is not affected


def test_retry_after_pauses_every_key_of_the_app(r):
    ratelimit.pause(r, "a", 1.0)
    paused_at = r.ran
    wait = ratelimit.acquire(r, "a", 100, 10, "t", "k1")
    assert 0 < wait <= 1.0 and due(r, wait) == pytest.approx(paused_at + 1.0, abs=0.002)
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
    # A run whose call went through closes the breaker as it ends (with its lease's token).
    queue = Workqueue(r)
    queue.mark(["a user k1"])
    queue.finish("a user k1", queue.claim("a user k1").token, close_breaker="a")
    assert ratelimit.breaker_state(r, "a") == "closed"
    assert ratelimit.acquire(r, "a", 100, 10, "other", "k2") == 0


def test_a_failed_probe_opens_the_breaker_for_longer(r):
    for _ in range(ratelimit.BREAKER_THRESHOLD):
        ratelimit.transient_failure(r, "a")
    r.delete("prov:rl:a:until")
    assert ratelimit.acquire(r, "a", 100, 10, "probe", "k1") == 0
    assert ratelimit.transient_failure(r, "a")  # the probe failed: open again
    first = float(r.get("prov:cb:a:cooldown"))
    assert first == min(ratelimit.BREAKER_MAX, settings().breaker_cooldown * 2)
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
    slots = [due(r, ratelimit.acquire(r, "fast", 200, 5, "t", f"k{i}")) for i in range(400)]
    assert all(s <= slots[4] for s in slots[:5])  # the burst
    spacing = (slots[-1] - slots[100]) / 299
    assert spacing == pytest.approx(1.05 / 205, abs=0.0001)
    slow = [due(r, ratelimit.acquire(r, "slow", 5, 5, "t", f"k{i}")) for i in range(8)]
    assert slow[6] - slow[5] == pytest.approx(0.2, abs=0.002)  # 5/s keeps 1 / rate


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
    real = time.time
    waits = []
    for i, skew in enumerate((5.0, -5.0, 5.0, -5.0)):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        waits.append(ratelimit.acquire(r, "skew", 5, 1, "t", f"k{i}"))
    assert waits[0] == 0
    assert [round(w, 1) for w in waits[1:]] == [0.2, 0.4, 0.6]


# -- the pace learned from 429s (issue 10) -----------------------------------------------------
def _age(r, app: str, ms: int, climb: bool = True) -> None:
    """Pretend the app's last 429 came ``ms`` earlier; without ``climb``, as if the pace had
    not climbed back since."""
    key = f"prov:rl:{app}:pace"
    state = {k.decode(): float(v) for k, v in r.hgetall(key).items()}
    r.hset(key, mapping={f: state[f] - ms for f in ("cut", *(["t"] if climb else []))})


def _due(r, app: str, rate: float, burst: int, names: list[str],
         since: float | None = None) -> list[float]:  # fmt: skip
    """When each key's slot is due, in seconds from the first request (or from ``since``), on
    Redis's clock: the time the requests themselves take does not count."""
    dues = [due(r, ratelimit.acquire(r, app, rate, burst, "t", name)) for name in names]
    origin = since if since is not None else (dues[0] if dues else 0.0)
    return [d - origin for d in dues]


def _pool(r, app: str, rate: float, burst: int, grants: int, keys: int = 8) -> list[float]:
    """A pool in miniature: ``keys`` keys, each sending one request after another as soon as
    the limiter lets it (a key told to wait comes back then, never sooner); the seconds at
    which the first ``grants`` requests were let through, from the first: the slot the
    limiter reserved for it (Redis's clock), or when it asked if it went at once."""
    fresh = next(_names)
    back = {f"{fresh}-{i}": 0.0 for i in range(keys)}  # when each key asks (this process)
    reserved: dict[str, float] = {}  # each waiting key's slot (Redis's clock)
    sent: list[float] = []
    while len(sent) < grants:
        key = min(back, key=back.__getitem__)
        time.sleep(max(0.0, back[key] - time.monotonic()))
        wait = ratelimit.acquire(r, app, rate, burst, "t", key)
        back[key] = time.monotonic() + wait  # measured after the answer: never early
        if wait == 0:
            sent.append(reserved.pop(key, r.ran))
        else:
            reserved[key] = due(r, wait)
    return [t - sent[0] for t in sent]


def _spacing(r, app: str, rate: float, burst: int, n: int = 10) -> float:
    """Seconds between the requests let through once the burst is spent (``_pool``)."""
    sent = _pool(r, app, rate, burst, burst + n)
    return (sent[-1] - sent[burst]) / (n - 1)


def _hold_climb(r, app: str) -> None:
    """Climb no faster than the slow probe (1 % of the pace per second) from now on."""
    r.hset(f"prov:rl:{app}:pace", "knee", r.hget(f"prov:rl:{app}:pace", "share"))


_names = itertools.count()


def test_a_429_slows_the_whole_pool_for_that_app(r):
    assert _spacing(r, "a", 20, 2) == pytest.approx(0.05, abs=0.003)
    assert ratelimit.refused(r, "a") == pytest.approx(0.8)
    # the 429s of the requests sent before the cut arrive together: they count, they do not cut
    assert ratelimit.refused(r, "a") == pytest.approx(0.8, abs=0.002)
    pace = ratelimit.pace(r, "a", 20, 2)
    assert pace["refused"] == 2 and pace["share"] == pytest.approx(0.8, abs=0.002)
    assert pace["requests_per_second"] == pytest.approx(20 * 0.99 * 0.8, abs=0.05)
    assert pace["ceiling"] == pytest.approx(19.8)
    _hold_climb(r, "a")
    # 0.8 of the rate, less the 1 % margin an app that refused gets from now on
    assert _spacing(r, "a", 20, 2) == pytest.approx(1 / (20 * 0.99 * 0.8), abs=0.003)
    assert ratelimit.pace(r, "b", 20, 2)["refused"] == 0  # another app keeps its pace
    assert _spacing(r, "b", 20, 2) == pytest.approx(0.05, abs=0.003)
    _age(r, "a", 1000, climb=False)  # a second later, a new 429 cuts again
    share = ratelimit.pace(r, "a", 20, 2)["share"]
    assert ratelimit.refused(r, "a") == pytest.approx(share * 0.8, abs=0.002)


def test_the_pace_climbs_back_fast_to_below_the_refused_one_then_slowly_to_the_rate(r):
    assert ratelimit.refused(r, "a") == pytest.approx(0.8)  # refused at the full pace
    _age(r, "a", 2000)
    assert ratelimit.pace(r, "a", 20, 2)["share"] == pytest.approx(0.9, abs=0.002)  # 5 %/s
    _age(r, "a", 1000)
    assert ratelimit.pace(r, "a", 20, 2)["share"] == pytest.approx(0.95, abs=0.002)  # the knee
    _age(r, "a", 2000)
    assert ratelimit.pace(r, "a", 20, 2)["share"] == pytest.approx(0.97, abs=0.002)  # 1 %/s
    _age(r, "a", 60000)
    pace = ratelimit.pace(r, "a", 20, 2)
    assert pace["share"] == 1.0  # and no further
    assert pace["requests_per_second"] == pytest.approx(19.8)  # never above the rate
    assert _spacing(r, "a", 20, 2) == pytest.approx(1 / 19.8, abs=0.003)


def test_the_pace_never_goes_below_the_floor(r):
    for _ in range(20):
        ratelimit.refused(r, "a")
        _age(r, "a", 1000, climb=False)
    _hold_climb(r, "a")
    pace = ratelimit.pace(r, "a", 50, 5)
    assert pace["share"] == pytest.approx(0.1) and pace["refused"] == 20
    # (climbing by 1 % a second since _hold_climb: 0.005/s more per 10 ms)
    assert pace["requests_per_second"] == pytest.approx(50 * 0.99 * 0.1, abs=0.05)
    # (climbing back meanwhile by 1 % a second: 0.1 to 0.116 over the 1.6 s it takes)
    assert _spacing(r, "a", 50, 5, n=8) == pytest.approx(1 / (50 * 0.99 * 0.108), abs=0.01)


def test_a_cut_moves_the_reservations_already_handed_out(r):
    """A backlog holds reservations for seconds ahead: a 429 slows them all down at once."""
    slots = [due(r, ratelimit.acquire(r, "a", 5, 5, "t", f"k{i}")) for i in range(8)]
    ratelimit.refused(r, "a")  # 0.8 of the pace, climbing back 5 % a second
    later = ratelimit.acquire(r, "a", 5, 5, "t", "k7")  # k7 came back early: wait some more
    left = slots[7] - r.ran  # what was left of its wait then
    assert left / 0.85 < later < left / 0.8 + 0.01


def test_keys_told_to_come_back_find_their_slot_as_the_pace_climbs(r):
    """Told when to come back, a key cannot be called back sooner: its slot is where the
    climbing pace will have brought the schedule by then, neither sooner nor later."""
    ratelimit.refused(r, "a")  # 0.8 of 20/s, climbing back 5 % a second
    names = [f"k{i}" for i in range(45)]
    first = ratelimit.acquire(r, "a", 20, 5, "t", names[0])
    start = time.monotonic()  # at or a little after the first request, on this process's clock
    due = [0.0, *_due(r, "a", 20, 5, names[1:], since=r.ran + first)]
    again = []  # more than 2 s of reservations
    for name, at in list(zip(names, due, strict=True))[4:]:  # the burst's 4 went at once
        time.sleep(max(0.0, start + at - time.monotonic()))  # never sooner than due
        again.append(ratelimit.acquire(r, "a", 20, 5, "t", name))
    assert again == [0] * (len(names) - 4)  # every key on time, none told to wait more
    gaps = [b - a for a, b in zip(due[5:], due[6:], strict=False)]
    assert gaps[0] == pytest.approx(1 / (19.8 * 0.8), abs=0.002)
    assert gaps[-1] == pytest.approx(1 / (19.8 * (0.8 + 0.05 * due[-1])), abs=0.002)


def test_once_an_app_refused_the_pool_keeps_part_of_its_burst_in_hand(r):
    """A burst spent at once empties an exact token bucket, and the next request must not
    arrive a hair early: after a 429, the last request of a burst waits 40 ms."""
    names = [f"k{i}" for i in range(7)]
    plain = _due(r, "a", 5, 5, names)
    assert all(d < 0.05 for d in plain[:5]) and plain[5] == pytest.approx(0.2, abs=0.005)
    ratelimit.refused(r, "b")
    _age(r, "b", 120000)  # long climbed back: the share is 1 again, the margin stays
    strict = _due(r, "b", 5, 5, names)
    assert all(d < 0.02 for d in strict[:4])  # four at once
    assert strict[4] == pytest.approx(0.04, abs=0.005)  # the last of the burst 40 ms later
    assert strict[5] == pytest.approx(1 / 4.95 + 0.04, abs=0.005)
    assert strict[6] - strict[5] == pytest.approx(1 / 4.95, abs=0.002)


def test_keys_coming_back_late_all_at_once_get_no_more_than_the_apps_bucket(r):
    """Reserved slots long due, their keys come back together (a stalled worker, the end of a
    pause): an app that never refused lets them through within the hard cap; for one that
    refused, the requests let through are paced as its bucket would count them, and the keys
    that come too soon get new places in the schedule, one interval apart."""
    for app in ("plain", "exact"):
        if app == "exact":
            ratelimit.refused(r, app)
            _age(r, app, 120000)
        waits = [ratelimit.acquire(r, app, 5, 5, "t", f"k{i}") for i in range(12)]
        assert sum(1 for w in waits if w == 0) == (5 if app == "plain" else 4)
    time.sleep(max(waits) + 1.1)  # every slot due, and the bucket full again
    plain = [ratelimit.acquire(r, "plain", 5, 5, "t", f"k{i}") for i in range(5, 12)]
    assert plain == [0] * 7  # within rate + burst in the window
    exact = _due(r, "exact", 5, 5, [f"k{i}" for i in range(4, 12)])
    assert all(d < 0.02 for d in exact[:4])  # the bucket's 5, less what it keeps in hand
    assert exact[4] == pytest.approx(0.04, abs=0.005)  # then the 5th, and one at a time
    gaps = [b - a for a, b in zip(exact[4:], exact[5:], strict=False)]
    assert gaps == pytest.approx([1 / 4.95] * 3, abs=0.003)


def test_the_token_bucket_double_counts_exactly_as_a_gateway_does():
    """``ScimServer(rate_limit=(5, 5))``: 5 requests at once, then one per 200 ms; a refused
    request is answered 429 with Retry-After: 1, takes no token and never reaches the app."""
    with ScimServer(rate_limit=(5.0, 5)) as scim:
        headers = {"Authorization": f"Bearer {scim.token}"}
        with httpx.Client(base_url=scim.base_url, headers=headers, timeout=10) as http:
            first = [http.get("/Users").status_code for _ in range(6)]
            refused = http.get("/Users")
            time.sleep(0.25)  # one token more
            later = [http.get("/Users").status_code for _ in range(2)]
        assert first == [200] * 5 + [429] and later == [200, 429]
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert scim.users() == []  # the double's own reads pass the gateway, uncounted
        assert (scim.bucket.accepted, scim.bucket.refused) == (6, 3)
        assert len(scim.requests) == 6 + 1  # the app saw what the gateway let through (+ ours)


def test_a_throttled_answer_teaches_the_pool_the_same_wherever_it_came_from(r):
    """``slow_down`` is what a reconcile and a listing (activation, verify) both call."""
    from worker.scim import Transient
    from worker.store import apps

    ratelimit.slow_down(r, "a", Transient(503, "busy"))  # no 429, no Retry-After: nothing
    assert ratelimit.pace(r, "a", 5.0, 5)["refused"] == 0
    ratelimit.slow_down(r, "a", Transient(429, "slow down", retry_after=2.0))
    learned = ratelimit.pace(r, "a", 5.0, 5)
    assert learned["refused"] == 1 and learned["share"] == pytest.approx(0.8)
    assert ratelimit.acquire(r, "a", 5.0, 5, "t", "a user u1") >= 1.5  # paused
    apps.remove(r, "a")  # the app is forgotten, and so is what its 429s taught
    assert ratelimit.pace(r, "a", 5.0, 5)["refused"] == 0
