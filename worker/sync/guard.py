"""Accidental-deletion guard: past a threshold of deactivations and deletions of one app within
a window, further ones are held for an administrator (``provisioner approve|reject APP``);
the app's other work goes on.

The threshold is 10 % of the users the app holds for us, at least 20, per 10 minutes
(``PROVISIONER_GUARD_PERCENT``, ``PROVISIONER_GUARD_MINIMUM``, ``PROVISIONER_GUARD_WINDOW``).
"""

from __future__ import annotations

import redis

from worker.config import settings
from worker.store import codec, keys, scripts

DESTRUCTIVE = frozenset({"user_deprovision", "user_delete_provision", "group_delete_provision"})


class Held(Exception):
    """A destructive call was staged, not sent: it waits for ``approve`` or ``reject``."""


def _limits() -> tuple[float, int, int]:
    conf = settings()
    return conf.guard_percent, conf.guard_minimum, conf.guard_window


def _key(app_id: str, part: str) -> str:
    return f"{keys.PREFIX}guard:{app_id}:{part}"


def check(client: redis.Redis, app_id: str, reconcile_key: str, detail: str) -> None:
    """Count a destructive call of ``reconcile_key``; raise ``Held`` past the threshold."""
    percent, minimum, window = _limits()
    threshold = scripts.run(
        client, "guard", app_id, reconcile_key, detail, window, percent, minimum
    )
    if threshold:
        raise Held(f"{reconcile_key}: held by the deletion guard ({threshold} per {window}s)")


def held(client: redis.Redis, app_id: str) -> dict[str, str]:
    held = client.hgetall(_key(app_id, "held"))
    return {codec.text(k): codec.text(v) for k, v in held.items()}


def approve(client: redis.Redis, app_id: str) -> list[str]:
    """Let destructive calls through for one window; returns the held keys to run again."""
    _, _, window = _limits()
    pipe = client.pipeline()
    pipe.hkeys(_key(app_id, "held"))
    pipe.delete(_key(app_id, "held"))
    pipe.set(_key(app_id, "approved"), "1", ex=window)
    held_keys, _, _ = pipe.execute()
    return [k.decode() for k in held_keys]


def reject(client: redis.Redis, app_id: str) -> list[str]:
    """Drop the held calls: those objects stay as they are in the app until they change."""
    pipe = client.pipeline()
    pipe.hkeys(_key(app_id, "held"))
    pipe.delete(_key(app_id, "held"), _key(app_id, "recent"), _key(app_id, "places"))
    held_keys, _ = pipe.execute()
    return [k.decode() for k in held_keys]
