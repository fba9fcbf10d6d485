"""A workqueue in Redis with the semantics of client-go's workqueue (README, "How it works").

- A key is never reconciled by two workers at once: ``claim`` takes a lease with an expiry, so
  the lease of a killed worker lapses and ``sweep`` makes its key dirty again. Its fencing
  token (growing with each claim of the key) must come with the run's writes and release, so
  a worker that wakes up past its lease writes nothing (``worker.store.fence``).
- One clock: every time here is Redis's (``scripts.redis_now_ms``), never a worker's.
- A key dirtied while it is being reconciled runs again after ``release``.
- Many marks of a key before it runs cost one run (``mark`` schedules only a clean key).

Scheduling a key means sending it a reconcile message; the caller does that for the keys these
functions return. Redis holds the truth, messages are only wake-ups: a lost or duplicate message
costs nothing but time (``sweep`` re-sends for keys left dirty with no message).

The queue's keys in Redis (``keys.WQ_*``) are read and written here and by its Lua scripts
only. A key is a ``ReconcileKey``; its text (as Celery's messages carry it) is taken too, and
the keys handed back are texts, for ``send_reconcile``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis

from worker.store import codec, keys, scripts
from worker.store.keys import ReconcileKey

Key = ReconcileKey | str


@dataclass(frozen=True)
class QueueStats:
    dirty: int
    in_flight: int
    delayed: int
    parked: int

    @property
    def idle(self) -> bool:
        return self.dirty == 0 and self.in_flight == 0 and self.delayed == 0


class Claim(NamedTuple):
    """What ``claim`` answers: its state (``claimed``, ``busy``, ``delayed`` or ``clean``, see
    lua/claim.lua) and, when claimed, the fencing token of the lease ('' otherwise)."""

    state: str
    token: str


@dataclass(frozen=True)
class ClaimedRun:
    """What ``claim_run`` answers: the claim, and when claimed, what the run needs to start."""

    state: str
    token: str = ""
    config: bytes | None = None  # the app's stored config
    causes: list[str] = field(default_factory=list)  # the events' cause texts, oldest first
    learned: dict[bytes, bytes] = field(default_factory=dict)  # see ``learned.parse``


@dataclass(frozen=True)
class QueueState:
    """The queue's keys at one instant (``read_state``)."""

    dirty: list[ReconcileKey] = field(default_factory=list)
    in_flight: list[ReconcileKey] = field(default_factory=list)
    parked: dict[ReconcileKey, str] = field(default_factory=dict)
    delayed: int = 0

    @property
    def stats(self) -> QueueStats:
        return QueueStats(len(self.dirty), len(self.in_flight), self.delayed, len(self.parked))

    def of_app(self, app_id: str) -> QueueState:
        """The keys of one app (``delayed`` stays the queue's count)."""
        return QueueState(
            [k for k in self.dirty if k.app == app_id],
            [k for k in self.in_flight if k.app == app_id],
            {k: why for k, why in self.parked.items() if k.app == app_id},
            self.delayed,
        )


def read_stats(pipe: redis.client.Pipeline) -> Callable[[Sequence[Any]], QueueStats]:
    """Queue the reads of ``Workqueue.stats`` on ``pipe`` (a MULTI the caller may share with
    reads of its own); the function returned makes them of the results, from the first of
    these reads on."""
    pipe.zcard(keys.WQ_DIRTY)
    pipe.hlen(keys.WQ_OWNER)
    pipe.zcard(keys.WQ_DELAYED)
    pipe.hlen(keys.WQ_PARKED)
    return lambda results: QueueStats(*results[:4])


def read_state(pipe: redis.client.Pipeline) -> Callable[[Sequence[Any]], QueueState]:
    """``read_stats`` for the keys themselves: dirty, in flight and parked (with the reason)."""
    pipe.zrange(keys.WQ_DIRTY, 0, -1)
    pipe.hkeys(keys.WQ_OWNER)
    pipe.hgetall(keys.WQ_PARKED)
    pipe.zcard(keys.WQ_DELAYED)

    def state(results: Sequence[Any]) -> QueueState:
        dirty, owned, parked, delayed = results[:4]
        reasons = {codec.text(k): codec.text(v) for k, v in parked.items()}
        return QueueState(
            _parsed(codec.texts(dirty)), _parsed(codec.texts(owned)), _parsed_map(reasons), delayed
        )

    return state


class Workqueue:
    def __init__(self, client: redis.Redis, lease_seconds: float = 60.0):
        self.redis = client
        self.lease_ms = int(lease_seconds * 1000)

    def mark(self, reconcile_keys: Iterable[Key]) -> list[str]:
        """Mark keys dirty; returns those that need a reconcile message."""
        texts = [str(k) for k in reconcile_keys]
        if not texts:
            return []
        return codec.texts(scripts.run(self.redis, "mark_keys", *texts))

    def run_now(self, key: Key) -> None:
        """Make ``key`` dirty with no backoff to wait out, and send no message: for a caller
        that claims it itself (``sync_now``)."""
        self.redis.zrem(keys.WQ_DELAYED, str(key))
        self.mark([key])

    def claim(self, key: Key) -> Claim:
        """Take the lease of a dirty key: its state and fencing token (see lua/claim.lua)."""
        state, token = codec.texts(scripts.run(self.redis, "claim", str(key), self.lease_ms))
        return Claim(state, token)

    def claim_run(self, key: Key, app_id: str, causes_key: str) -> ClaimedRun:
        """``claim``, and when claimed, in the same round trip: the app's stored config, the
        ids of the events that dirtied the key, taken (oldest first), and what the pool
        learned of the app (``learned.parse`` reads it; see lua/claim.lua)."""
        answer = scripts.run(
            self.redis, "claim", str(key), self.lease_ms, keys.app(app_id), causes_key
        )
        state, token = codec.texts(answer[:2])
        if state != "claimed":
            return ClaimedRun(state)
        config = answer[2] or None  # a missing field comes back as a nil (None)
        flat = answer[3]
        learned = dict(zip(flat[::2], flat[1::2], strict=True))
        return ClaimedRun(state, token, config, codec.texts(answer[:3:-1]), learned)

    def renew(
        self,
        key: Key,
        token: str,
        *,
        while_active: str | None = None,
        doubt: tuple[str, ...] | None = None,
    ) -> bool:
        """Extend the lease; False when it was lost, or when app ``while_active`` is not
        active any more (one round trip for both). With ``doubt`` (set key, member), the write
        about to be sent is marked in doubt once the lease is found ours (and, with a creating
        hash and a name after them, the name a create is sent with)."""
        extra = [while_active or "", *doubt] if doubt else [while_active] if while_active else []
        return bool(scripts.run(self.redis, "renew", str(key), token, self.lease_ms, *extra))

    def release(self, key: Key, token: str, delay_seconds: float = 0.0) -> str:
        """``done``, ``reschedule`` (send a message), ``delayed`` or ``lost``."""
        return self.finish(key, token, delay_seconds)[0]

    def finish(
        self,
        key: Key,
        token: str,
        delay_seconds: float = 0.0,
        *,
        succeeded: bool = False,
        close_breaker: str | None = None,
        forget_deferral: bool = False,
        follow_up: Iterable[Key] = (),
        causes: list[str] | tuple[str, ...] = (),
        keep_causes: bool = False,
        park: str | None = None,
    ) -> tuple[str, list[str]]:
        """The end of a run in one round trip: ``release``, and first, only while ``token``
        is the key's (else nothing at all: ``lost``), forget the key's failures when it
        ``succeeded``, ``park`` it with that reason, close app ``close_breaker``'s circuit
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
            str(key),
            token,
            delay_ms,
            "1" if succeeded else "0",
            close_breaker or "",
            "1" if forget_deferral else "0",
            "1" if keep_causes else "0",
            park or "",
            len(causes),
            *causes,
            *(str(k) for k in follow_up),
        )
        return codec.text(answer[0]), codec.texts(answer[1:])

    def sweep(self, *, stale_seconds: float, resend_stale: bool, limit: int = 1000) -> list[str]:
        """Recover expired leases, due backoffs and lost messages (``sweep.lua``); returns the
        keys to send a message for. ``resend_stale``: the reconcile queue is empty, so a stale
        key is sent again every ``stale_seconds`` rather than at doubling intervals."""
        return codec.texts(
            scripts.run(
                self.redis, "sweep", int(stale_seconds * 1000), limit, "1" if resend_stale else "0"
            )
        )

    def due_in_ms(self) -> float | None:
        """In how many ms (Redis's clock) the soonest backoff or reserved slot is due, if any
        (at most 0 when it is due already). One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(keys.WQ_DELAYED, 0, 0, withscores=True)
        now, first = pipe.execute()
        soonest = codec.scored(first)
        return soonest[0][1] - scripts.time_ms(now) if soonest else None

    def hold_sweep_lock(self, holder: str, ttl_ms: int) -> bool:
        """One sweeper for the pool: take the lock for ``holder``, or keep it while ``holder`` has it."""
        if self.redis.set(keys.WQ_SWEEP_LOCK, holder, nx=True, px=ttl_ms):
            return True
        if self.redis.get(keys.WQ_SWEEP_LOCK) == holder.encode():
            self.redis.pexpire(keys.WQ_SWEEP_LOCK, ttl_ms)
            return True
        return False

    # -- failures ------------------------------------------------------------------------------
    def park(self, key: Key, reason: str) -> None:
        """Stop retrying a key after a permanent failure, until it changes again."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.WQ_PARKED, str(key), reason)
        pipe.hdel(keys.WQ_ATTEMPTS, str(key))
        pipe.execute()

    def unpark(self, key: Key) -> None:
        self.redis.hdel(keys.WQ_PARKED, str(key))

    def parked(self, app_id: str) -> dict[ReconcileKey, str]:
        """The app's parked keys, each with the reason."""
        stored = {
            codec.text(k): codec.text(v) for k, v in self.redis.hgetall(keys.WQ_PARKED).items()
        }
        return _parsed_map({k: stored[k] for k in _of_app(app_id, stored)})

    def backoff(
        self, key: Key, token: str, *, base: float = 1.0, cap: float = 300.0
    ) -> float | None:
        """Count a failed attempt of a key we hold (``token``) and return the seconds to wait
        before the next: capped exponential, full jitter. None (nothing counted) when the
        token is no longer the key's."""
        attempt = int(scripts.run(self.redis, "backoff", str(key), token))
        if attempt < 0:
            return None
        return random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 20)))

    # -- groups waiting for their members ------------------------------------------------------
    def waited_ms(self, key: Key) -> int | None:
        """For how long (ms, Redis's clock) ``key`` has waited for keys on their way
        (``wait_from_now``), if it does."""
        waited = int(scripts.run(self.redis, "deferral", "waited", str(key)))
        return waited if waited >= 0 else None

    def wait_from_now(self, key: Key) -> None:
        """Note that ``key`` waits from now on, unless it already did (forgotten by ``finish``
        with ``forget_deferral``)."""
        scripts.run(self.redis, "deferral", "start", str(key))

    def any_queued(self, reconcile_keys: Iterable[Key]) -> bool:
        """Whether one of the keys is dirty or in flight (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in reconcile_keys:
            pipe.zscore(keys.WQ_DIRTY, str(key))
            pipe.hexists(keys.WQ_OWNER, str(key))
        return any(pipe.execute())

    # -- the whole queue, or an app's part of it -----------------------------------------------
    def stats(self) -> QueueStats:
        pipe = self.redis.pipeline(transaction=False)
        stats = read_stats(pipe)
        return stats(pipe.execute())

    def state(self) -> QueueState:
        """The queue's keys, read at one instant."""
        pipe = self.redis.pipeline(transaction=True)
        state = read_state(pipe)
        return state(pipe.execute())

    def in_flight(self, app_id: str) -> list[ReconcileKey]:
        """The app's keys being reconciled now (a lease held)."""
        return _parsed(_of_app(app_id, self.redis.hkeys(keys.WQ_OWNER)))

    def busy(self, app_id: str) -> set[ReconcileKey]:
        """The app's keys that are dirty, in flight or waiting out a delay."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.WQ_DIRTY, 0, -1)
        pipe.hkeys(keys.WQ_OWNER)
        pipe.zrange(keys.WQ_DELAYED, 0, -1)
        return set(_parsed(_of_app(app_id, (k for texts in pipe.execute() for k in texts))))

    def due_soon(self, app_id: str, within_ms: int) -> bool:
        """A key of the app is in flight, or due within ``within_ms`` (two bounded reads: the
        leases held and the soonest delayed keys, in one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hkeys(keys.WQ_OWNER)
        pipe.zrange(keys.WQ_DELAYED, 0, 999, withscores=True)
        now, held, delayed = pipe.execute()
        horizon = scripts.time_ms(now) + within_ms
        due = [key for key, at in codec.scored(delayed) if at <= horizon]
        return bool(_of_app(app_id, (*held, *due)))

    def drop_app(self, app_id: str) -> int:
        """Forget queued work of an app (it is re-derived on reactivation). Leases stay."""
        dropped = 0
        for zset in (keys.WQ_DIRTY, keys.WQ_DELAYED):
            members = _of_app(app_id, self.redis.zrange(zset, 0, -1))
            if members:
                dropped += self.redis.zrem(zset, *members)
        return dropped

    def forget_app(self, app_id: str) -> int:
        """``drop_app``, and forget the app's parked keys and counts of failures too (the app
        is removed). Returns the queued keys dropped."""
        dropped = self.drop_app(app_id)
        for hash_key in (keys.WQ_PARKED, keys.WQ_ATTEMPTS):
            doomed = _of_app(app_id, self.redis.hkeys(hash_key))
            if doomed:
                self.redis.hdel(hash_key, *doomed)
        return dropped


def _of_app(app_id: str, texts: Iterable[Any]) -> list[str]:
    """The texts of the app's keys among stored ones."""
    prefix = ReconcileKey.prefix(app_id)
    return [text for text in codec.texts(texts) if text.startswith(prefix)]


def _parsed(texts: Iterable[str]) -> list[ReconcileKey]:
    """The keys of stored texts; a malformed text (never reconciled: ``process_key`` drops
    it) is left out."""
    return [key for key, _ in _parsed_pairs((text, None) for text in texts)]


def _parsed_map(values: dict[str, str]) -> dict[ReconcileKey, str]:
    return dict(_parsed_pairs(values.items()))


def _parsed_pairs(pairs: Iterable[tuple[str, Any]]) -> Iterable[tuple[ReconcileKey, Any]]:
    for text, value in pairs:
        try:
            yield ReconcileKey.parse(text), value
        except ValueError:
            continue
