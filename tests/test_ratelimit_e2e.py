"""The pool-wide rate limit, measured at the application (issues 5 and 10). What the pace
achieves (the share of the limit used, how soon an unthrottled app is done) depends on the
machine: it is measured by ``benchmarks/ratelimit.py``; the tests assert what holds anyway."""

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.harness import Harness, wait_until
from tests.support.scimserver import ScimServer
from worker.sync import ratelimit


def _record_times(h):
    times: list[float] = []
    lock = threading.Lock()

    def recorder(environ):
        if environ["PATH_INFO"].startswith("/v2/Users") or environ["PATH_INFO"].startswith(
            "/v2/Groups"
        ):
            with lock:
                times.append(time.monotonic())
        return None

    h.scim.inject(recorder)
    return times


# Timed at the app's arrival, which a loaded 2-core machine can bunch (a stalled server thread
# serves several granted requests at once): run again, twice at most; a wrong limiter fails all.
@pytest.mark.single_calls  # a workload of single requests (Bulk's: test_bulk.py, test_bulk_e2e.py)
@pytest.mark.flaky(reruns=2, only_rerun=["AssertionError"])
def test_requests_never_exceed_rate_plus_burst_and_a_backlog_uses_the_limit(harness):
    h = harness
    rate, burst = 20, 5
    h.activate("zs", "--rate", str(rate), "--burst", str(burst))
    times = _record_times(h)
    users = 80  # lookup + create each: 160 calls, 8 s at 20/s
    events = [h.event("app.user_associated", app_id="zs", user_id=f"u{i}") for i in range(users)]
    events += [h.user(f"u{i}") for i in range(users)]
    h.send(*events, wait=False)
    h.wait(timeout=120)
    h.scim.inject(None)
    assert len(h.scim.users()) == users
    assert len(times) >= 2 * users
    times.sort()
    # any 1-second window (the share of the limit the backlog used: benchmarks/ratelimit.py)
    most = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert most <= rate + burst, most


@pytest.mark.single_calls  # a Bulk operation's result has no headers (a whole request's 429: test_bulk.py)
def test_retry_after_pauses_the_whole_pool_then_everything_lands(harness):
    h = harness
    h.activate("zs")
    answered = {"429": 0}
    times: list[float] = []

    def throttle_twice(environ):
        times.append(time.monotonic())
        if environ["REQUEST_METHOD"] == "POST" and answered["429"] < 2:
            answered["429"] += 1
            return 429, {"Retry-After": "2"}, b'{"detail": "slow down"}'
        return None

    h.scim.inject(throttle_twice)
    events = [h.event("app.user_associated", app_id="zs", user_id=f"u{i}") for i in range(10)]
    events += [h.user(f"u{i}") for i in range(10)]
    started = time.monotonic()
    h.send(*events, wait=False)
    h.wait(timeout=60)
    h.scim.inject(None)
    assert len(h.scim.users()) == 10
    assert time.monotonic() - started >= 2  # nobody went on during the pause
    failures = [e for e in h.redis.xrange("prov:audit")]
    assert failures  # the 429s are in the audit log


def test_a_storm_of_5xx_opens_the_breaker_which_probes_before_resuming(harness):
    h = harness
    h.activate("zs")
    seen: list[tuple[float, str]] = []
    state = {"healthy": False}

    def storm(environ):
        seen.append((time.monotonic(), environ["REQUEST_METHOD"]))
        return None if state["healthy"] else (500, {}, b'{"detail": "down"}')

    h.scim.inject(storm)
    events = [h.event("app.user_associated", app_id="zs", user_id=f"u{i}") for i in range(30)]
    h.send(*events, *[h.user(f"u{i}") for i in range(30)], wait=False)
    deadline = time.monotonic() + 30
    # Watched in Redis, not through `status` (a CLI process takes seconds to start on a busy
    # machine, and the probe is due 2 s after the breaker opens).
    while ratelimit.breaker_state(h.redis, "zs") == "closed":
        assert time.monotonic() < deadline, "the breaker never opened"
        time.sleep(0.02)
    opened = time.monotonic()
    time.sleep(1.0)
    during = [t for t, _ in seen if opened + 0.3 < t < opened + 1.0]
    assert during == []  # open: nothing is sent
    state["healthy"] = True
    h.wait(timeout=90)
    assert len(h.users()) == 30
    assert json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["breaker"] == "closed"


def test_one_throttled_application_never_slows_another(harness):
    """The slow app needs ~20 s (40 calls at 2/s): the fast one is done while the slow one
    has not done half of its users, whatever the machine's speed (how soon, on this machine:
    benchmarks/ratelimit.py)."""
    h = harness
    h.activate("slow", "--rate", "2", "--burst", "1")
    h.activate("fast")
    slow = [h.event("app.user_associated", app_id="slow", user_id=f"s{i}") for i in range(20)]
    fast = [h.event("app.user_associated", app_id="fast", user_id=f"f{i}") for i in range(20)]
    users = [h.user(f"s{i}") for i in range(20)] + [h.user(f"f{i}") for i in range(20)]
    h.send(*slow, *fast, *users, wait=False)
    deadline = time.monotonic() + 30
    while len([u for u in h.scim.users() if u["userName"].startswith("f")]) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    slow_done_so_far = len([u for u in h.scim.users() if u["userName"].startswith("s")])
    assert slow_done_so_far < 10, slow_done_so_far
    h.cli("apps", "deactivate", "slow")  # rather than wait for the rest of its 20 s
    h.wait(timeout=90)


RATE, BURST = 20.0, 5  # the gateway's exact limit, and the app's configured one


@pytest.fixture
def gateway(r, worker_pool, tmp_path) -> Iterator[Harness]:
    """A harness whose application sits behind an exact token bucket."""
    with ScimServer(rate_limit=(RATE, BURST)) as scim:
        yield Harness(r, scim, tmp_path)


@pytest.mark.single_calls
def test_an_exact_token_bucket_refuses_under_1_percent_and_nothing_is_lost(gateway):
    """The app enforces exactly the configured rate and burst and refuses with 429 and
    Retry-After: 1 (issue 10). Sooner or later a request is refused: a hair early into an
    empty bucket, or for a reason of the app's own (here the 30th request, so that this test
    never depends on luck). The pool must not answer with a storm of 429s (the slots falling
    due in the pause all sent as it ends, into a bucket of 5), but learn: the gateway's
    refusals stay under 1 % of the calls, every 429 reaches the limiter, every user is
    provisioned."""
    h, bucket = gateway, gateway.scim.bucket
    h.activate("zs", "--rate", f"{RATE:g}", "--burst", str(BURST))
    # the activation's calls were counted too: a full bucket to start with
    wait_until(bucket.full, timeout=5, what="a full bucket")
    bucket.clear()
    seen = itertools.count(1)

    def refuse_the_30th(environ):
        if next(seen) == 30:
            return 429, {"Retry-After": "1"}, b'{"detail": "slow down"}'
        return None

    h.scim.inject(refuse_the_30th)
    users = 150  # a lookup and a create each: 300 calls, 15 s
    events = [h.event("app.user_associated", app_id="zs", user_id=f"u{i}") for i in range(users)]
    events += [h.user(f"u{i}") for i in range(users)]
    h.send(*events, wait=False)
    h.wait(timeout=150)
    h.scim.inject(None)
    assert len(h.scim.users()) == users  # nothing lost
    calls, refused = len(bucket.arrivals), bucket.refused
    assert calls >= 2 * users
    assert refused * 100 < calls, f"{refused} of {calls} calls refused by the gateway"
    state = json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]
    assert state["pace"]["refused"] == refused + 1  # the app's 429 too
    assert state["parked"] == {}
    # (that the pace came back, ≥ 0.75 of the limit used: benchmarks/ratelimit.py)
