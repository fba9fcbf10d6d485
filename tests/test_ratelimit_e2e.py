"""The pool-wide rate limit, measured at the application (issue 5)."""

import threading
import time


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
    # any 1-second window
    most = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert most <= rate + burst, most
    # while the backlog lasts the pool keeps the app busy: ≥ 90 % of the limit
    span = times[-1] - times[0]
    used = (len(times) - burst) / span / rate
    assert used >= 0.9, f"{used:.2f} of the limit used over {span:.1f}s"


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
