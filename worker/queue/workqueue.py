"""A workqueue in Redis with the semantics of client-go's workqueue (README, "How it works").

- A key is never reconciled by two workers at once: ``claim`` takes a lease with an expiry, so
  the lease of a killed worker lapses and ``sweep`` makes its key dirty again.
- A key dirtied while it is being reconciled runs again after ``release``.
- Many marks of a key before it runs cost one run (``mark`` schedules only a clean key).

Scheduling a key means sending it a reconcile message; the caller does that for the keys these
functions return. Redis holds the truth, messages are only wake-ups: a lost or duplicate message
costs nothing but time (``sweep`` re-sends for keys left dirty with no message).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import redis

from worker.store import keys, scripts


@dataclass(frozen=True)
class QueueStats:
    dirty: int
    in_flight: int
    delayed: int
    parked: int

    @property
    def idle(self) -> bool:
        return self.dirty == 0 and self.in_flight == 0 and self.delayed == 0


class Workqueue:
    def __init__(self, client: redis.Redis, lease_seconds: float = 60.0):
        self.redis = client
        self.lease_ms = int(lease_seconds * 1000)

    def mark(self, reconcile_keys: list[str]) -> list[str]:
        """Mark keys dirty; returns those that need a reconcile message."""
        if not reconcile_keys:
            return []
        return _decode(scripts.run(self.redis, "mark_keys", *reconcile_keys))

    def claim(self, key: str, token: str) -> str:
        """``claimed``, ``busy``, ``delayed`` or ``clean`` (see lua/claim.lua)."""
        return _decode1(scripts.run(self.redis, "claim", key, token, self.lease_ms))

    def claim_run(
        self, key: str, token: str, app_id: str, causes_key: str
    ) -> tuple[str, bytes | None, list[str], dict[bytes, bytes]]:
        """``claim``, and when claimed, in the same round trip: the app's stored config, the
        ids of the events that dirtied the key, taken (oldest first), and what the pool
        learned of the app (``learned.parse`` reads it; see lua/claim.lua)."""
        answer = scripts.run(
            self.redis, "claim", key, token, self.lease_ms, keys.app(app_id), causes_key
        )
        state = _decode1(answer[0])
        if state != "claimed":
            return state, None, [], {}
        config = answer[1] or None  # a missing field comes back as a nil (None)
        flat = answer[2]
        learned = dict(zip(flat[::2], flat[1::2], strict=True))
        return state, config, _decode(answer[:2:-1]), learned

    def renew(self, key: str, token: str, *, while_active: str | None = None) -> bool:
        """Extend the lease; False when it was lost, or when app ``while_active`` is not
        active any more (one round trip for both)."""
        extra = [while_active] if while_active else []
        return bool(scripts.run(self.redis, "renew", key, token, self.lease_ms, *extra))

    def release(self, key: str, token: str, delay_seconds: float = 0.0) -> str:
        """``done``, ``reschedule`` (send a message), ``delayed`` or ``lost``."""
        return self.finish(key, token, delay_seconds)[0]

    def finish(
        self,
        key: str,
        token: str,
        delay_seconds: float = 0.0,
        *,
        succeeded: bool = False,
        close_breaker: str | None = None,
        forget_deferral: bool = False,
        follow_up: list[str] | tuple[str, ...] = (),
        causes: list[str] | tuple[str, ...] = (),
        keep_causes: bool = False,
    ) -> tuple[str, list[str]]:
        """The end of a run in one round trip: ``release``, and first (lease or not) forget
        the key's failures when it ``succeeded``, close app ``close_breaker``'s circuit
        breaker, forget since when the key waited for members, ``mark`` the ``follow_up``
        keys and hand them the run's ``causes`` (event ids, oldest first), which go back to
        the key itself with ``keep_causes``. Any ``delay_seconds`` above 0 keeps the key dirty
        until then. Returns the release's answer and the follow-ups that need a message."""
        # rounded up: a backoff's full jitter can draw under a millisecond, and a delay of 0
        # would release a failed run as done, its retry lost
        delay_ms = math.ceil(delay_seconds * 1000) if delay_seconds > 0 else 0
        answer = scripts.run(
            self.redis,
            "release",
            key,
            token,
            delay_ms,
            "1" if succeeded else "0",
            close_breaker or "",
            "1" if forget_deferral else "0",
            "1" if keep_causes else "0",
            len(causes),
            *causes,
            *follow_up,
        )
        return _decode1(answer[0]), _decode(answer[1:])

    def sweep(self, *, stale_seconds: float, resend_stale: bool, limit: int = 1000) -> list[str]:
        """Recover expired leases, due backoffs and (when ``resend_stale``) lost messages."""
        return _decode(
            scripts.run(
                self.redis, "sweep", int(stale_seconds * 1000), limit, "1" if resend_stale else "0"
            )
        )

    def park(self, key: str, reason: str) -> None:
        """Stop retrying a key after a permanent failure, until it changes again."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.WQ_PARKED, key, reason)
        pipe.hdel(keys.WQ_ATTEMPTS, key)
        pipe.execute()

    def unpark(self, key: str) -> None:
        self.redis.hdel(keys.WQ_PARKED, key)

    def backoff(self, key: str, *, base: float = 1.0, cap: float = 300.0) -> float:
        """Seconds to wait before the next attempt: capped exponential, full jitter."""
        attempt = self.redis.hincrby(keys.WQ_ATTEMPTS, key, 1)
        return random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 20)))

    def stats(self) -> QueueStats:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.WQ_DIRTY)
        pipe.hlen(keys.WQ_OWNER)
        pipe.zcard(keys.WQ_DELAYED)
        pipe.hlen(keys.WQ_PARKED)
        dirty, in_flight, delayed, parked = pipe.execute()
        return QueueStats(dirty=dirty, in_flight=in_flight, delayed=delayed, parked=parked)

    def drop_app(self, app_id: str) -> int:
        """Forget queued work of an app (it is re-derived on reactivation). Leases stay."""
        prefix = f"{app_id} ".encode()
        dropped = 0
        for zset in (keys.WQ_DIRTY, keys.WQ_DELAYED):
            members = [m for m in self.redis.zrange(zset, 0, -1) if m.startswith(prefix)]
            if members:
                dropped += self.redis.zrem(zset, *members)
        return dropped


def _decode(values: list[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def _decode1(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
