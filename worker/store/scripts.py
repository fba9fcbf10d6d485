"""The Lua scripts that make multi-key changes atomic in Redis.

Each script is the shared prelude (``lua/mark.lua``: ``now``, ``mark``, ``schedule``) followed by
its own body. The pool has one clock, Redis's: the prelude reads ``TIME`` and every lease,
backoff, dirty time, heartbeat and age is stamped with it, never with a worker's clock (a host
a few minutes off would take leases still held, or keep its own for ever). ``ARGV[1]`` is
always ``clock_offset_ms``, added to that time: 0, but in tests, which move it on instead of
sleeping. The scripts read keys they compute themselves, so they need a single Redis server
(not Redis Cluster).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import Script
from redis.exceptions import NoScriptError

_LUA = resources.files("worker.store") / "lua"
_scripts: dict[str, Script] = {}

# Milliseconds added to Redis's clock by every script of this process, and by ``redis_now_ms``:
# 0 in production. A test moves it on (tests/support/clock.py) to wait out a lease or a backoff
# without sleeping; Redis's own clock (the pacing of throttle.lua, key expiries) is untouched.
clock_offset_ms: int = 0


def redis_now_ms(client: redis.Redis) -> int:
    """The pool's time (ms since the epoch): Redis's ``TIME``, plus ``clock_offset_ms``, as the
    scripts see it. One round trip; where it would be one more, queue ``TIME`` on a pipeline
    and read its answer with ``time_ms``."""
    return time_ms(client.time())


def time_ms(reply: Sequence[int]) -> int:
    """The pool's time (ms) from the answer to a ``TIME`` (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000 + clock_offset_ms


@functools.cache
def source(name: str) -> tuple[str, str]:
    """A script's full text (the prelude, then its body) and its SHA1, as EVALSHA takes it."""
    text = (_LUA / "mark.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()
    return text, hashlib.sha1(text.encode()).hexdigest()


def _script(client: redis.Redis, name: str) -> Script:
    if name not in _scripts:
        _scripts[name] = Script(client, source(name)[0])
    return _scripts[name]


def run(client: redis.Redis | redis.client.Pipeline, name: str, *args: Any) -> Any:
    """Run script ``name`` with ARGV ``(clock_offset_ms, *args)`` (queued, on a pipeline)."""
    return _script(client, name)(args=[clock_offset_ms, *args], client=client)


async def run_async(client: redis.asyncio.Redis, name: str, *args: Any) -> Any:
    """``run`` on an asyncio client: EVALSHA, and the script loaded first if Redis lacks it
    (after a restart)."""
    text, sha = source(name)
    argv = [clock_offset_ms, *args]
    try:
        return await client.evalsha(sha, 0, *argv)
    except NoScriptError:
        await client.script_load(text)
        return await client.evalsha(sha, 0, *argv)
