"""The verify schedule: ``apps update APP --verify-every 24h [--verify-fix on]`` has the pool
run ``verify`` (issue 10). The sweeper that holds the pool's lock looks every second for
active apps whose last verify (any: scheduled or from the CLI) started that long ago and
queues a ``prov.verify`` Celery task for each; the task runs ``verify.run`` under the app's
verify lock, so one verify of an app runs at a time across the pool and the CLI.
"""

from __future__ import annotations

import json
import re

import redis

from worker.store import apps, keys, scripts
from worker.store.apps import AppError
from worker.sync.verify import RESULT_FIELD, Report, lock_key, run

QUEUED_TIMEOUT = 600.0  # a queued run not started after this is queued again (a lost message)
QUEUED_FIELD = "verify_queued"  # when the last run was queued, in the app's hash (keys.app)


# -- durations (pure) --------------------------------------------------------------------------
_EVERY = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_every(text: str) -> float:
    """``--verify-every``: ``24h``, ``30m``, ``7d``, ``90`` (seconds) -> seconds; ``off`` or
    ``0`` -> 0 (no schedule)."""
    text = text.strip().lower()
    if text in ("off", "none", "never"):
        return 0.0
    match = _EVERY.match(text)
    if not match:
        raise ValueError(f"{text!r}: expected a duration such as 24h, 30m, 7d, or off")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def every_text(seconds: float | None) -> str:
    if not seconds:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def is_due(
    now: float,
    every: float | None,
    last_started: float | None,
    queued_at: float | None,
    queued_timeout: float = QUEUED_TIMEOUT,
) -> bool:
    """A scheduled verify is due: a schedule, no run queued recently, and the last run (any,
    scheduled or not) started ``every`` seconds ago or never."""
    if not every:
        return False
    if queued_at is not None and now - queued_at < queued_timeout:
        return False
    return last_started is None or now - last_started >= every


# -- the pool's side ---------------------------------------------------------------------------
def schedule_due(client: redis.Redis, now: float | None = None) -> list[str]:
    """Queue a ``prov.verify`` task for each active app whose scheduled verify is due (run by
    the sweeper that holds the pool's lock); returns their ids."""
    from worker.queue.celery_app import RECONCILE_QUEUE, celery

    now = scripts.redis_now_ms(client) / 1000 if now is None else now  # as verify.py stamps
    queued = []
    for app in apps.list_apps(client):
        if not app.verify_every or not app.active or app.paused:
            continue
        result, at = client.hmget(keys.app(app.id), RESULT_FIELD, QUEUED_FIELD)
        started = json.loads(result)["started"] if result else None
        if client.exists(lock_key(app.id)):
            continue  # running now
        if is_due(now, app.verify_every, started, float(at) if at else None):
            client.hset(keys.app(app.id), QUEUED_FIELD, now)
            celery().send_task("prov.verify", args=[app.id], queue=RECONCILE_QUEUE)
            queued.append(app.id)
    return queued


def run_scheduled(client: redis.Redis, app_id: str) -> Report | None:
    """The ``prov.verify`` task: a scheduled verify, repairing when the app says so."""
    client.hdel(keys.app(app_id), QUEUED_FIELD)
    app = apps.load(client, app_id)
    if app is None or not app.active or app.paused or not app.verify_every:
        return None
    try:
        return run(client, app_id, fix=app.verify_fix, trigger="schedule")
    except AppError:  # another verify of it is running
        return None
