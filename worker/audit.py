"""The provisioning audit log: every attempt, under the integration article's event names
(DESIGN §4: ``user_create_provision``, ``group_update_provision``, ...). A Redis stream,
capped; entries never hold a token or a request body."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from worker import keys

MAXLEN = 200_000


@dataclass(frozen=True)
class AuditEntry:
    name: str  # the article's event name
    app: str
    object: str  # "user:<id>" or "group:<id>" or "app:<id>"
    outcome: str  # success | failure | skipped
    status: int | None = None  # HTTP status of the application's answer
    detail: str = ""
    remote_id: str | None = None
    time: float = 0.0
    causes: tuple[str, ...] = ()  # ids of the directory events that led to this attempt


def record(client: redis.Redis | redis.client.Pipeline, entry: AuditEntry) -> None:
    document = asdict(entry)
    document["causes"] = list(entry.causes)
    document["time"] = entry.time or time.time()
    client.xadd(keys.AUDIT, {"e": json.dumps(document)}, maxlen=MAXLEN, approximate=True)


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
    """Entries, oldest first, filtered."""
    start = f"{int(since * 1000)}-0" if since else "-"
    entries = []
    for _, fields in client.xrange(keys.AUDIT, min=start, max="+"):
        entry = json.loads(fields[b"e"])
        if app and entry["app"] != app:
            continue
        if name and entry["name"] != name:
            continue
        if object_id and object_id not in (entry["object"], entry["object"].split(":", 1)[-1]):
            continue
        if failed and entry["outcome"] != "failure":
            continue
        entries.append(entry)
    return entries[-limit:]
