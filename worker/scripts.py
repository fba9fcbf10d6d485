"""The Lua scripts that make multi-key changes atomic in Redis.

Each script is the shared prelude (``lua/mark.lua``: ``now``, ``mark``, ``schedule``) followed by
its own body; ``ARGV[1]`` is always the current time in milliseconds. The scripts read keys they
compute themselves, so they need a single Redis server (not Redis Cluster).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

_LUA = resources.files("worker") / "lua"
_scripts: dict[str, Script] = {}


def now_ms() -> int:
    return int(time.time() * 1000)


def _script(client: redis.Redis, name: str) -> Script:
    if name not in _scripts:
        source = (_LUA / "mark.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()
        _scripts[name] = Script(client, source)
    return _scripts[name]


def run(client: redis.Redis | redis.client.Pipeline, name: str, *args: Any) -> Any:
    """Run script ``name`` with ARGV ``(now_ms, *args)`` (queued, on a pipeline)."""
    return _script(client, name)(args=[now_ms(), *args], client=client)
