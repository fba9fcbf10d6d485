"""The provisioning audit log: every attempt, under the integration article's event names
(``user_create_provision``, ``group_update_provision``, ``idm_integration_*``, ...).
A Redis stream capped at ``PROVISIONER_AUDIT_MAXLEN`` entries (default 200000); entries never
hold a token or a request body.

Each entry carries the ids of the directory events that caused it: ``lua/ingest.lua`` remembers,
for every key it marks, the event being applied (``prov:wq:cause:<key>``: its id, when it
occurred and when it was accepted), and the claim of the key's reconcile takes them
(``lua/claim.lua``); the runner keeps the ids for the audit, the times for the lag metric.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis

from worker.config import settings
from worker.store import codec, keys
from worker.store.keys import ReconcileKey

CAUSES_PREFIX = keys.PREFIX + "wq:cause:"  # LIST per reconcile key, newest event id first


@dataclass(frozen=True)
class AuditEntry:
    name: str  # the article's event name
    app: str
    object: str  # "user:<id>" or "group:<id>" or "app:<id>"
    outcome: str  # success | failure | skipped | dry_run
    status: int | None = None  # HTTP status of the application's answer
    detail: str = ""
    remote_id: str | None = None
    time: float = 0.0
    causes: tuple[str, ...] = ()  # ids of the directory events that led to this attempt
    token: str = ""  # the fencing token of the run's lease (fence.py): grows per key


def maxlen() -> int:
    """Entries kept (approximately: Redis trims whole nodes): ``PROVISIONER_AUDIT_MAXLEN``."""
    return settings().audit_maxlen


def record(client: redis.Redis | redis.client.Pipeline, entry: AuditEntry) -> None:
    client.execute_command(*command(entry))


def command(entry: AuditEntry) -> tuple[str, ...]:
    """The ``XADD`` that records ``entry`` (for a script to run: ``fence.py``). Its time is
    Redis's, the stream id's (``read`` gives it), unless the entry has one."""
    document = asdict(entry)
    document["causes"] = list(entry.causes)
    document["time"] = entry.time or None
    return ("XADD", keys.AUDIT, "MAXLEN", "~", str(maxlen()), "*", "e", json.dumps(document))


def read(
    client: redis.Redis,
    *,
    app: str | None = None,
    name: str | None = None,
    object_id: str | None = None,
    since: float | None = None,
    failed: bool = False,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries that match, oldest first (read newest first, in pages)."""
    low = f"{int(since * 1000)}-0" if since else "-"
    high = "+"
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        page = codec.stream(client.xrevrange(keys.AUDIT, max=high, min=low, count=1000))
        for entry_id, fields in page:
            entry = json.loads(fields[b"e"])
            entry["time"] = entry.get("time") or _stream_time(entry_id)
            if _matches(entry, app, name, object_id, failed):
                found.append(entry)
                if len(found) >= limit:
                    break
        if len(page) < 1000:
            break
        high = "(" + page[-1][0].decode()
    found.reverse()
    return found


def _stream_time(entry_id: bytes | str) -> float:
    """When an entry was added, on Redis's clock: its stream id's milliseconds, as seconds."""
    return int(codec.text(entry_id).split("-")[0]) / 1000


def _matches(
    entry: dict[str, Any], app: str | None, name: str | None, object_id: str | None, failed: bool
) -> bool:
    if app and entry["app"] != app:
        return False
    if name and entry["name"] != name:
        return False
    if object_id and object_id not in (entry["object"], entry["object"].split(":", 1)[-1]):
        return False
    return not (failed and entry["outcome"] != "failure")


# -- causes ------------------------------------------------------------------------------------
def cause_key(reconcile_key: str) -> str:
    return CAUSES_PREFIX + reconcile_key


def forget_causes(client: redis.Redis, app_id: str) -> int:
    """Drop the causes remembered for an app's keys (its queued work was dropped)."""
    doomed = list(client.scan_iter(match=cause_key(ReconcileKey.prefix(app_id) + "*"), count=1000))
    for start in range(0, len(doomed), 1000):
        client.delete(*doomed[start : start + 1000])
    return len(doomed)


# -- --since -----------------------------------------------------------------------------------
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT_MINUTES = {"": 1.0, "s": 1 / 60, "m": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0}


def since(text: str, now: float) -> float:
    """``--since`` as a time (seconds since the epoch): minutes (``90``) or a relative time
    (``-2h``, ``30m``, ``1d``) back from ``now``, or an RFC 3339 instant
    (``2026-11-28T17:00:00Z``). ``now`` is the pool's clock, Redis's, which stamps the entries
    (a host whose clock is off would otherwise look at another window). Raises ``ValueError``."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_MINUTES[match.group(2)] * 60
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r}: expected minutes, a relative time like -2h / 30m / 1d, "
            "or an RFC 3339 time like 2026-11-28T17:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r}: an RFC 3339 time needs a zone (Z, +01:00)")
    return moment.timestamp()
