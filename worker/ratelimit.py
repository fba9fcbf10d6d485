"""Pool-wide pacing of each application: a GCRA in Redis shared by every worker, pauses for
``Retry-After``, and a circuit breaker that opens on a storm of 5xx and probes before resuming.

Nothing here sleeps for long: a request that must wait reserves the next free slot and raises
``Throttled``; the runner gives the key back to the workqueue until that slot, so the worker
serves other keys and other applications meanwhile, and a backlog costs no futile retries.
"""

from __future__ import annotations

import logging
import os

import redis

from worker import keys, scripts

log = logging.getLogger("provisioner.ratelimit")

BREAKER_THRESHOLD = 10  # consecutive transient failures that open the breaker
BREAKER_WINDOW = 60  # seconds over which they count
# first pause; doubles on each failed probe, up to BREAKER_MAX
BREAKER_COOLDOWN = float(os.environ.get("PROVISIONER_BREAKER_COOLDOWN", "15"))
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
    doubt: tuple[str, str] | None = None,
) -> float:
    """Take a request slot for ``key``; returns 0.0, or the seconds until the slot reserved
    for it (asking again then goes through).

    In the same round trip: with ``lease`` (token, lease ms), the caller's lease of ``key`` is
    checked and renewed, and the app must still be active, else ``LOST`` and no slot is
    taken; with ``doubt`` (set key, member), a slot granted marks the write about to be sent
    as in doubt (``Mirror.begin_write``)."""
    interval_ms = 1000.0 / rate
    extra: list[object] = []
    if lease or doubt:
        token, lease_ms = lease or ("", "")
        set_key, member = doubt or ("", "")
        extra = [lease_ms, token, set_key, member]
    wait_ms = scripts.run(
        client, "throttle", app_id, repr(interval_ms), max(burst, 1), probe, key, *extra
    )
    return LOST if int(wait_ms) < 0 else int(wait_ms) / 1000.0


def pause(client: redis.Redis, app_id: str, seconds: float) -> None:
    """Stop every request to the app for ``seconds`` (never shortens a longer pause)."""
    until = scripts.now_ms() + int(seconds * 1000)
    key = f"{keys.PREFIX}rl:{app_id}:until"
    current = client.get(key)
    if current is None or int(current) < until:
        client.set(key, until, px=int(seconds * 1000) + 1000)


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
        seconds = min(BREAKER_MAX, float(cooldown) * 2) if state == b"probing" else BREAKER_COOLDOWN
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
    return state.decode() if state else "closed"
