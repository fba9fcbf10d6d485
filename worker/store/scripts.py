"""The Lua scripts that make multi-key changes atomic in Redis.

Each script is the shared prelude (``lua/mark.lua``: ``now``, ``mark``, ``schedule``) followed by
its own body; ``ARGV[1]`` is always the current time in milliseconds. The scripts read keys they
compute themselves, so they need a single Redis server (not Redis Cluster).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import Script
from redis.exceptions import NoScriptError

_LUA = resources.files("worker.store") / "lua"
_scripts: dict[str, Script] = {}


def wall_clock_ms() -> int:
    """The time, in milliseconds since the epoch."""
    return int(time.time() * 1000)


# What ``now_ms`` reads: the wall clock. A test may put a clock of its own in its place (in
# this process only) and move it on instead of sleeping; Redis's own clock (``TIME``, which
# the pacing script reads, and key expiries) goes on as before.
clock: Callable[[], int] = wall_clock_ms


def now_ms() -> int:
    """The ``now`` every script gets as ``ARGV[1]``: ``clock()``."""
    return clock()


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
    """Run script ``name`` with ARGV ``(now_ms, *args)`` (queued, on a pipeline)."""
    return _script(client, name)(args=[now_ms(), *args], client=client)


async def run_async(client: redis.asyncio.Redis, name: str, *args: Any) -> Any:
    """``run`` on an asyncio client: EVALSHA, and the script loaded first if Redis lacks it
    (after a restart)."""
    text, sha = source(name)
    argv = [now_ms(), *args]
    try:
        return await client.evalsha(sha, 0, *argv)
    except NoScriptError:
        await client.script_load(text)
        return await client.evalsha(sha, 0, *argv)
