"""``provisioner jumpcloud sync``: the whole directory read through the API, as one snapshot.

The snapshot is streamed to ``var/jumpcloud/<org>.snapshot.jsonl`` (written as ``.tmp`` and
renamed once complete, mode 0600), then handed to ``producers.snapshot.publish_snapshot``,
which publishes the events that take the projection to it, deletions guarded.

Resuming after an interruption is running ``sync`` again, on purpose: a snapshot says that
whatever it lacks is deleted, so only a complete read may be published, and a read pieced
together from two runs (``skip`` offsets shifted by deletions in between) could lack live
users. Running it again is cheap and safe: every event derived from a snapshot has a
deterministic id and ``occurred_at`` = ``taken_at``, so what the first run published is not
published twice, and the pool changes nothing for what did not change. At 5 requests/s, a
directory of 10,000 users in 100 groups is about 120 user pages, 2 group pages, 100+ member
pages and 2 per app: a little over a minute.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from producers.jumpcloud.api import Client
from producers.jumpcloud.directory import read_snapshot
from worker import config
from worker.store import keys


@dataclass
class SyncOutcome:
    taken_at: str
    lines: Counter[str]  # snapshot lines by kind
    requests: int  # JumpCloud requests made
    seconds: float  # reading JumpCloud
    path: Path  # the snapshot written
    result: Any  # what publish_snapshot answered


def source_of(org: str | None) -> str:
    return f"jumpcloud:{org or 'default'}"


def spool_path(org: str | None) -> Path:
    return config.var_dir() / "jumpcloud" / f"{org or 'default'}.snapshot.jsonl"


def write_lines(lines: Any, path: Path) -> Counter[str]:
    """Stream ``lines`` (dicts) to ``path`` as JSON Lines: a ``.tmp`` file renamed when done,
    so ``path`` always holds a complete snapshot. Returns the count of lines by kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    counts: Counter[str] = Counter()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for line in lines:
            counts[line["kind"]] += 1
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    os.replace(partial, path)
    return counts


def sync(
    jc: Client,
    client: redis.Redis,
    *,
    org: str | None,
    apps: Mapping[str, str],
    dry_run: bool = False,
    allow_deletions: int | None = None,
) -> SyncOutcome:
    """Read the directory, write the snapshot, publish it (``dry_run``: count only)."""
    from producers.snapshot import publish_snapshot

    taken_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    started, requests = time.monotonic(), jc.requests
    path = spool_path(org)
    counts = write_lines(read_snapshot(jc, source_of(org), taken_at, apps), path)
    seconds = time.monotonic() - started
    with path.open(encoding="utf-8") as lines:
        result = publish_snapshot(client, lines, dry_run=dry_run, allow_deletions=allow_deletions)
    if not dry_run:
        record = {"taken_at": taken_at, "finished": time.time(), "lines": dict(counts)}
        client.set(keys.jumpcloud(org or "default", "synced"), json.dumps(record))
    return SyncOutcome(taken_at, counts, jc.requests - requests, seconds, path, result)


def last_sync(client: redis.Redis, org: str | None) -> dict[str, Any] | None:
    raw = client.get(keys.jumpcloud(org or "default", "synced"))
    return None if raw is None else json.loads(raw)


def describe(outcome: SyncOutcome) -> str:
    c = outcome.lines
    return (
        f"read {c['user']} users, {c['group']} groups and {c['app']} apps from JumpCloud in "
        f"{outcome.seconds:.1f} s ({outcome.requests} requests); snapshot taken at "
        f"{outcome.taken_at} in {outcome.path}"
    )
