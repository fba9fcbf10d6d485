"""The pool-wide rate limit, timed at the application: the figures that
``tests/test_ratelimit_e2e.py`` used to pin (moved here by issue 12: a test asserts what must
hold on any machine, however loaded; a benchmark what the pace achieves on this one).

Each scenario is the test's own, on the tests' set-up (``tests.support``: a pool of 2 workers
x 2 threads with the tests' timings, a scim2-server, its own Redis), and reports the figure
against the target the test asserted:

- *backlog*: 80 users (a lookup and a create each: 160 calls) at ``--rate 20 --burst 5``: the
  share of the limit used from the first call to the last (target ≥ 0.9); the most calls in any
  1-second window (≤ rate + burst) is still asserted by the test;
- *exact bucket*: 150 users behind ``ScimServer(rate_limit=(20, 5))`` (exactly 20/s, burst 5),
  the app itself refusing its 30th request: the share of the limit used by the accepted calls
  (target ≥ 0.75); the 429s under 1 % of the calls is still asserted by the test;
- *isolation*: 20 users for an app at ``--rate 2 --burst 1`` and 20 for an unthrottled one,
  published at once: seconds until the unthrottled app has all of its users (target < 8 s; the
  throttled one needs ~20 s); the test asserts it finishes while the throttled app has done
  less than half.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import table

BACKLOG_RATE, BACKLOG_BURST, BACKLOG_USERS = 20, 5, 80
TARGET_BACKLOG_SHARE = 0.9
BUCKET_RATE, BUCKET_BURST, BUCKET_USERS = 20.0, 5, 150
TARGET_BUCKET_SHARE = 0.75
TARGET_REFUSED = 0.01
ISOLATION_USERS = 20
TARGET_FAST_SECONDS = 8.0


@dataclass
class RateLimitResult:
    backlog_calls: int
    backlog_most_in_a_second: int
    backlog_share: float
    backlog_span: float
    bucket_calls: int
    bucket_refused: int
    bucket_share: float
    fast_seconds: float
    slow_done_then: int

    @property
    def bucket_refused_share(self) -> float:
        return self.bucket_refused / self.bucket_calls if self.bucket_calls else 0.0


def _users_of(h: Any, app: str, prefix: str, n: int) -> list[dict[str, Any]]:
    events = [h.event("app.user_associated", app_id=app, user_id=f"{prefix}{i}") for i in range(n)]
    return events + [h.user(f"{prefix}{i}") for i in range(n)]


def backlog(h: Any) -> tuple[int, int, float, float]:
    """(calls, most calls in any 1 s, share of the limit used, seconds first to last call)."""
    import threading

    h.activate("zs", "--rate", str(BACKLOG_RATE), "--burst", str(BACKLOG_BURST))
    times: list[float] = []
    lock = threading.Lock()

    def recorder(environ: dict[str, Any]) -> None:
        if environ["PATH_INFO"].startswith(("/v2/Users", "/v2/Groups")):
            with lock:
                times.append(time.monotonic())

    h.scim.inject(recorder)
    h.send(*_users_of(h, "zs", "u", BACKLOG_USERS), wait=False)
    h.wait(timeout=120)
    h.scim.inject(None)
    times.sort()
    most = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    span = times[-1] - times[0]
    return len(times), most, (len(times) - BACKLOG_BURST) / span / BACKLOG_RATE, span


def exact_bucket(h: Any) -> tuple[int, int, float]:
    """(calls at the gateway, refused by it, share of the limit used by the accepted ones)."""
    bucket = h.scim.bucket
    h.activate("zs", "--rate", f"{BUCKET_RATE:g}", "--burst", str(BUCKET_BURST))
    time.sleep(1.2)  # the activation's calls went through the bucket: a full bucket to start
    bucket.clear()
    seen = itertools.count(1)

    def refuse_the_30th(environ: dict[str, Any]) -> Any:
        if next(seen) == 30:
            return 429, {"Retry-After": "1"}, b'{"detail": "slow down"}'
        return None

    h.scim.inject(refuse_the_30th)
    h.send(*_users_of(h, "zs", "u", BUCKET_USERS), wait=False)
    h.wait(timeout=150)
    h.scim.inject(None)
    accepted = [t for t, ok, _ in bucket.arrivals if ok]
    share = (len(accepted) - BUCKET_BURST) / (accepted[-1] - accepted[0]) / BUCKET_RATE
    return len(bucket.arrivals), bucket.refused, share


def isolation(h: Any) -> tuple[float, int]:
    """(seconds until the unthrottled app has its users, users the throttled one had then)."""
    h.activate("slow", "--rate", "2", "--burst", "1")
    h.activate("fast")
    n = ISOLATION_USERS
    slow = [h.event("app.user_associated", app_id="slow", user_id=f"s{i}") for i in range(n)]
    fast = [h.event("app.user_associated", app_id="fast", user_id=f"f{i}") for i in range(n)]
    users = [h.user(f"s{i}") for i in range(n)] + [h.user(f"f{i}") for i in range(n)]
    started = time.monotonic()
    h.send(*slow, *fast, *users, wait=False)
    while len([u for u in h.scim.users() if u["userName"].startswith("f")]) < n:
        if time.monotonic() - started > 60:
            raise TimeoutError("the unthrottled app did not get its users in 60 s")
        time.sleep(0.1)
    fast_seconds = time.monotonic() - started
    slow_done = len([u for u in h.scim.users() if u["userName"].startswith("s")])
    h.cli("apps", "deactivate", "slow")
    h.wait(timeout=60)
    return fast_seconds, slow_done


def run(workdir: Path, log: Any = print) -> RateLimitResult:
    """The three scenarios, each on a fresh Redis, SCIM server and pool."""
    import redis

    from tests.support.harness import Harness, WorkerPool
    from tests.support.scimserver import ScimServer
    from worker.devstack.redis_server import RedisServer

    def scenario(name: str, rate_limit: tuple[float, int] | None, body: Any) -> Any:
        server = RedisServer(workdir / f"redis-ratelimit-{name}").start()
        pool = WorkerPool(server.url, processes=2, concurrency=2).start()
        try:
            with ScimServer(rate_limit=rate_limit) as scim:
                tmp = workdir / f"ratelimit-{name}"
                tmp.mkdir(parents=True, exist_ok=True)
                client = redis.Redis.from_url(server.url)
                return body(Harness(client, scim, tmp, redis_url=server.url))
        finally:
            pool.stop()
            server.stop()

    log("ratelimit: a backlog at 20/s burst 5 ...")
    calls, most, share, span = scenario("backlog", None, backlog)
    log(f"  {calls} calls in {span:.1f} s, at most {most} in a second; {share:.3f} of the limit")
    log("ratelimit: behind an exact token bucket of 20/s burst 5, the 30th call refused ...")
    b_calls, b_refused, b_share = scenario("bucket", (BUCKET_RATE, BUCKET_BURST), exact_bucket)
    log(f"  {b_refused} of {b_calls} calls refused; {b_share:.3f} of the limit used")
    log("ratelimit: an app at 2/s beside an unthrottled one ...")
    fast_seconds, slow_done = scenario("isolation", None, isolation)
    log(f"  the unthrottled app done in {fast_seconds:.1f} s ({slow_done} users of the other)")
    return RateLimitResult(calls, most, share, span, b_calls, b_refused, b_share, fast_seconds,
                           slow_done)  # fmt: skip


# -- checks and rendering --------------------------------------------------------------------
def checks(r: RateLimitResult) -> dict[str, bool]:
    """Each figure against the target the test asserted (``True``: met)."""
    return {
        "backlog share": r.backlog_share >= TARGET_BACKLOG_SHARE,
        "backlog cap": r.backlog_most_in_a_second <= BACKLOG_RATE + BACKLOG_BURST,
        "bucket share": r.bucket_share >= TARGET_BUCKET_SHARE,
        "bucket refused": r.bucket_refused_share < TARGET_REFUSED,
        "isolation": r.fast_seconds < TARGET_FAST_SECONDS,
    }


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summary_rows(r: RateLimitResult) -> list[list[str]]:
    ok = checks(r)
    return [
        [f"rate limit, backlog of {BACKLOG_USERS} users at {BACKLOG_RATE}/s: share of the "
         "limit used", f"**{r.backlog_share:.3f}** ({r.backlog_calls} calls in "
         f"{r.backlog_span:.1f} s)", f"≥ {TARGET_BACKLOG_SHARE}",
         f"{r.backlog_share / TARGET_BACKLOG_SHARE:.3f}", _met(ok["backlog share"])],
        [f"rate limit, exact bucket of {BUCKET_RATE:g}/s, {BUCKET_USERS} users: share of the "
         "limit used", f"**{r.bucket_share:.3f}** ({r.bucket_refused} of {r.bucket_calls} "
         "refused)", f"≥ {TARGET_BUCKET_SHARE}", f"{r.bucket_share / TARGET_BUCKET_SHARE:.3f}",
         _met(ok["bucket share"] and ok["bucket refused"])],
        ["rate limit, an unthrottled app beside one at 2/s: seconds until done",
         f"**{r.fast_seconds:.1f} s** (the other had {r.slow_done_then} of "
         f"{ISOLATION_USERS} users)", f"< {TARGET_FAST_SECONDS:g} s",
         f"{r.fast_seconds / TARGET_FAST_SECONDS:.3f}", _met(ok["isolation"])],
    ]  # fmt: skip


def details(r: RateLimitResult) -> list[str]:
    ok = checks(r)
    rows = [
        ["backlog, most calls in any 1 s", r.backlog_most_in_a_second,
         f"≤ {BACKLOG_RATE + BACKLOG_BURST}", _met(ok["backlog cap"])],
        ["exact bucket, 429s / calls", f"{r.bucket_refused_share:.2%}",
         f"< {TARGET_REFUSED:.0%}", _met(ok["bucket refused"])],
    ]  # fmt: skip
    return [
        "### Rate limit at the application (the figures tests/test_ratelimit_e2e.py pinned)",
        "",
        table(["scenario", "figure", "target", "met"], rows),
    ]


def main() -> int:
    """``python -m benchmarks.ratelimit``: the three scenarios, their checks; 1 if one fails."""
    import shutil
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="prov-bench-ratelimit-"))
    try:
        r = run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(["metric", "value", "target", "ratio to target", "met"], summary_rows(r)))
    print("\n".join(details(r)[2:]))
    failed = [name for name, ok in checks(r).items() if not ok]
    if failed:
        print(f"checks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
