"""Configuration from the environment, with defaults that suit a single host.

| variable | default | meaning |
|---|---|---|
| ``REDIS_URL`` | the local stack's Redis (``var/redis.url``) | the one Redis of the pool |
| ``PROVISIONER_HOME`` | the current directory | where ``var/`` (stack data) lives |
| ``PROVISIONER_LEASE_SECONDS`` | 60 | lease of a reconcile key; a killed worker's key runs again after it |
| ``PROVISIONER_VISIBILITY_TIMEOUT`` | 900 | seconds before the broker redelivers an unacked message |
| ``PROVISIONER_JOURNAL_MAXLEN`` | 2000000 | events kept in the journal stream |
| ``SENTRY_DSN`` | none | report failures to Sentry |
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import redis


def home() -> Path:
    return Path(os.environ.get("PROVISIONER_HOME") or Path.cwd())


def var_dir() -> Path:
    return home() / "var"


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    local = var_dir() / "redis.url"
    if local.exists():
        return local.read_text().strip()
    raise SystemExit(
        "no Redis: set REDIS_URL, or start the local stack (`make run` / `provisioner stack`)"
    )


@dataclass(frozen=True)
class Settings:
    redis_url: str
    lease_seconds: float
    visibility_timeout: int
    journal_maxlen: int
    sentry_dsn: str | None


@cache
def settings() -> Settings:
    env = os.environ
    return Settings(
        redis_url=redis_url(),
        lease_seconds=float(env.get("PROVISIONER_LEASE_SECONDS", "60")),
        visibility_timeout=int(env.get("PROVISIONER_VISIBILITY_TIMEOUT", "900")),
        journal_maxlen=int(env.get("PROVISIONER_JOURNAL_MAXLEN", "2000000")),
        sentry_dsn=env.get("SENTRY_DSN") or None,
    )


_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """One connection pool per process, shared by its threads (a forked child builds its own)."""
    key = (os.getpid(), settings().redis_url)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:  # a worker's task threads share the pool
        if key not in _clients:
            _clients[key] = redis.Redis.from_url(
                settings().redis_url,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=30,
                retry_on_timeout=True,
            )
        return _clients[key]
