"""Application integrations: their settings in Redis, and their tokens, which never are.

A token is read from a file (``--token-file``; on a multi-host pool, a mounted secret that
every worker host has), so Redis, logs and process listings never hold it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

import redis

from worker.contract.model import AppSettings, UserDeletePolicy
from worker.store import codec, keys
from worker.store.keys import Kind

APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AppError(ValueError):
    """A refused change to an integration, with a message for the administrator."""


@dataclass(frozen=True)
class AppConfig:
    id: str
    base_url: str
    token_file: str
    profile: str = "zscaler"
    group_management: bool = True
    user_delete_policy: UserDeletePolicy = "deactivate"
    excluded_attributes: tuple[str, ...] = ()
    active: bool = False
    paused: str | None = None  # why syncing is paused (bad credentials), None when running
    rate: float | None = None  # requests/s for the whole pool; None: the profile's
    burst: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    verify_every: float | None = None  # seconds between scheduled verifies; None: none
    verify_fix: bool = False  # a scheduled verify repairs what it finds

    def settings(self) -> AppSettings:
        return AppSettings(
            id=self.id,
            profile=self.profile,
            group_management=self.group_management,
            user_delete_policy=self.user_delete_policy,
            excluded_attributes=frozenset(self.excluded_attributes),
        )


def check_app_id(app_id: str) -> str:
    if not APP_ID.match(app_id):
        raise AppError(
            f"invalid app id {app_id!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return app_id


def check_base_url(url: str) -> str:
    """https, or http on a loopback address only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AppError(f"invalid base URL {url!r}: expected https://host/path")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise AppError(f"refusing plain http to {host}: use https (http is for loopback only)")
    return url.rstrip("/")


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise AppError(f"cannot read the token file {path}: {error.strerror}") from None
    if not token:
        raise AppError(f"the token file {path} is empty")
    return token


def load(client: redis.Redis, app_id: str) -> AppConfig | None:
    raw = client.hget(keys.app(app_id), "config")
    return None if raw is None else parse(raw)


def parse(raw: bytes | str) -> AppConfig:
    """An app's config as stored (``save``); the worker reads it in the claim's round trip."""
    data = json.loads(raw)
    data["excluded_attributes"] = tuple(data.get("excluded_attributes", ()))
    return AppConfig(**data)


def save(client: redis.Redis, config: AppConfig) -> None:
    pipe = client.pipeline()
    pipe.hset(keys.app(config.id), "config", json.dumps(asdict(config)))
    pipe.sadd(keys.APPS, config.id)
    if config.active and not config.paused:
        pipe.sadd(keys.APPS_ACTIVE, config.id)
    else:
        pipe.srem(keys.APPS_ACTIVE, config.id)
    pipe.execute()


def update(client: redis.Redis, app_id: str, **changes: object) -> AppConfig:
    config = load(client, app_id)
    if config is None:
        raise AppError(f"no app {app_id!r}")
    config = replace(config, **changes)  # type: ignore[arg-type]
    save(client, config)
    return config


def list_apps(client: redis.Redis) -> list[AppConfig]:
    ids = sorted(codec.texts(client.smembers(keys.APPS)))
    return [c for i in ids if (c := load(client, i)) is not None]


def remove(client: redis.Redis, app_id: str) -> None:
    kinds: tuple[Kind, ...] = ("user", "group")
    pipe = client.pipeline()
    pipe.delete(
        keys.app(app_id),
        keys.app_learned(app_id),
        f"{keys.PREFIX}rl:{app_id}:pace",  # the pace learned from its 429s (lua/throttle.lua)
        *(keys.mirror(app_id, kind) for kind in kinds),
        *(keys.mirror_absent(app_id, kind) for kind in kinds),
        *(keys.mirror_doubt(app_id, kind) for kind in kinds),
    )
    pipe.srem(keys.APPS, app_id)
    pipe.srem(keys.APPS_ACTIVE, app_id)
    pipe.execute()


def token_file_path(path: str) -> str:
    """An absolute path: workers may run in another directory than the CLI."""
    return os.path.abspath(path)
