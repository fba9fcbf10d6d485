"""Pool-wide pacing of each application: a GCRA in Redis shared by every worker, pauses for
``Retry-After``, a pace learned from the application's 429s, and a circuit breaker that opens
on a storm of 5xx and probes before resuming.

Nothing here sleeps for long: a request that must wait reserves the next free slot and raises
``Throttled``; the runner gives the key back to the workqueue until that slot, so the worker
serves other keys and other applications meanwhile, and a backlog costs no futile retries.

The configured rate is a ceiling, not a promise: each 429 takes the pool's pace for the app
down by a fifth (at most once a second), then it climbs back, fast up to just below the pace
that was refused and slowly beyond, never above the configured rate nor below a tenth of it
(AIMD). From its first 429 on, an app is taken to count exactly, as a token bucket does: it is
paced 1 % under its rate, keeps 40 ms of its burst in hand for the spread of the trips, and
the requests actually let through are paced once more as they happen, so that keys coming back
late (or early, for a pace since lowered) never bunch up. ``lua/throttle.lua`` has the figures.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import redis

from worker.config import settings
from worker.queue import metrics
from worker.store import codec, keys, scripts

if TYPE_CHECKING:
    from worker.scim.errors import Transient

log = logging.getLogger("provisioner.ratelimit")

BREAKER_THRESHOLD = 10  # consecutive transient failures that open the breaker
BREAKER_WINDOW = 60  # seconds over which they count
# the first pause is PROVISIONER_BREAKER_COOLDOWN; it doubles on each failed probe, up to:
BREAKER_MAX = 300.0
SHORT_WAIT = 0.1  # waits below this are slept through instead of re-queued


class Throttled(Exception):
    """The application may not be called now; try again after ``wait`` seconds."""

    def __init__(self, app_id: str, wait: float):
        super().__init__(f"{app_id}: throttled for {wait:.2f}s")
        self.wait = wait


LOST = -1.0  # what ``acquire`` returns when the caller's lease was lost (see ``lease``)


def acquire(
    client: redis.Redis,
    app_id: str,
    rate: float,
    burst: int,
    probe: str,
    key: str,
    *,
    lease: tuple[str, int] | None = None,
    doubt: tuple[str, ...] | None = None,
) -> float:
    """Take a request slot for ``key``; returns 0.0, or the seconds until the slot reserved
    for it (asking again then goes through).

    In the same round trip: with ``lease`` (token, lease ms), the caller's lease of ``key`` is
    checked and renewed, and the app must still be active, else ``LOST`` and no slot is
    taken; with ``doubt`` (set key, member), a slot granted marks the write about to be sent
    as in doubt (``Mirror.begin_write``), and with (creating hash, name) after them, the name a
    create is sent with (``Mirror.creating``)."""
    interval_ms = 1000.0 / rate
    extra: list[object] = []
    if lease or doubt:
        token, lease_ms = lease or ("", "")
        extra = [lease_ms, token, *(doubt or ("", ""))]
    wait_ms = scripts.run(
        client, "throttle", app_id, repr(interval_ms), max(burst, 1), probe, key, *extra
    )
    return LOST if int(wait_ms) < 0 else int(wait_ms) / 1000.0


def pause(client: redis.Redis, app_id: str, seconds: float) -> None:
    """Stop every request to the app for ``seconds`` (never shortens a longer pause), on
    Redis's clock, in one atomic step."""
    scripts.run(client, "throttle", app_id, "pause", max(1, math.ceil(seconds * 1000)))


def slow_down(client: redis.Redis, app_id: str, error: Transient) -> None:
    """What a throttled answer teaches the whole pool, from a reconcile or a listing alike: a
    429 lowers the app's learned pace, a ``Retry-After`` pauses the app."""
    if error.status == 429:
        metrics.throttled(app_id)
        refused(client, app_id)
    if error.retry_after:
        metrics.retry_after_pause(app_id)
        pause(client, app_id, error.retry_after)


def refused(client: redis.Redis, app_id: str) -> float:
    """The app answered 429: lower the pool's pace for it (once per second at most); returns
    the learned share of the configured pace."""
    share = float(scripts.run(client, "throttle", app_id, "refused"))
    log.warning("%s refused a request (429): pacing at %.0f%% of its rate", app_id, share * 100)
    return share


def pace(client: redis.Redis, app_id: str, rate: float, burst: int) -> dict[str, Any]:
    """What the pool learned of the app's limit, for ``status``: the pace it keeps now, its
    ceiling (the configured pace, less the margin of an app that refused) and the share of it,
    the 429s counted, when the last one lowered the pace, and how long the app is paused."""
    share, now, ceiling, refusals, cut_ms, paused_ms = scripts.run(
        client, "throttle", app_id, "pace", repr(1000.0 / rate), max(burst, 1)
    )
    return {
        "requests_per_second": round(float(now), 3),
        "ceiling": round(float(ceiling), 3),
        "share": round(float(share), 3),
        "refused": int(refusals),
        "last_cut_seconds_ago": None if int(cut_ms) < 0 else round(int(cut_ms) / 1000, 1),
        "paused_seconds": round(int(paused_ms) / 1000, 1),
    }


def transient_failure(client: redis.Redis, app_id: str) -> bool:
    """Count a 5xx or timeout; opens the breaker at the threshold. True when it opened."""
    base = f"{keys.PREFIX}cb:{app_id}"
    pipe = client.pipeline()
    pipe.incr(base + ":fails")
    pipe.expire(base + ":fails", BREAKER_WINDOW)
    pipe.get(base + ":state")
    pipe.get(base + ":cooldown")
    fails, _, state, cooldown = pipe.execute()
    if state == b"probing" or (fails >= BREAKER_THRESHOLD and state != b"open"):
        probing = state == b"probing"
        seconds = min(BREAKER_MAX, float(cooldown) * 2) if probing else settings().breaker_cooldown
        pipe = client.pipeline()
        pipe.set(base + ":state", "open")
        pipe.set(base + ":cooldown", seconds)
        pipe.delete(base + ":probe", base + ":fails")
        pipe.execute()
        pause(client, app_id, seconds)
        log.error("circuit breaker of %s open for %.0fs", app_id, seconds)
        return True
    return False


def breaker_state(client: redis.Redis, app_id: str) -> str:
    state = client.get(f"{keys.PREFIX}cb:{app_id}:state")
    return codec.optional_text(state) or "closed"
