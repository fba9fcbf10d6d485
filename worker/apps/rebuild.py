"""Replay a range of the journal, and rebuild the projection from it (``provisioner
replay-journal``, ``provisioner rebuild``).

A replay re-publishes stored events without the duplicate filter (``publish_wire``); the
projection's last-writer-wins registers make it idempotent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Protocol

import redis

from worker.apps.lifecycle import drain
from worker.config import settings
from worker.contract.events import epoch_micros
from worker.progress import Progress
from worker.queue.publish import BATCH_SIZE, ingest_now, publish_wire
from worker.store import apps, keys
from worker.store.journal import (
    MAX_REPORTED,
    JournalError,
    check,
    count,
    entries,
    occurred,
    snapshot_gap,
    stream_bounds,
    trimmed,
)
from worker.sync.runner import full_sync

REBUILD_PAUSE = "rebuild in progress (if it was interrupted, run `provisioner rebuild` again)"


@dataclass
class ReplayResult:
    events: int = 0
    batches: list[str] = field(default_factory=list)


def replay_range(
    client: redis.Redis,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    progress: IO[str] | None = None,
    ingest: bool = False,
    label: str = "replay",
    newer_than: int | None = None,
) -> ReplayResult:
    """Re-publish the events accepted in ``[since, until)``, in journal order, 1,000 a batch.

    Each batch is checked before it is stored (an invalid entry stops the replay; what was
    published before it is harmless). ``ingest``: apply each batch here, at once, instead of
    waking the workers (rebuild). ``newer_than``: only the events that occurred after this
    many microseconds since the epoch (rebuild from a snapshot).
    """
    result = ReplayResult()
    bounds = stream_bounds(client, since, until)
    if bounds is None:
        return result
    meter = Progress(label, count(client, bounds), progress)
    for chunk in _chunks(entries(client, bounds), BATCH_SIZE):
        problems = [p for p in (check(i, d) for i, d in chunk) if p]
        if problems:
            raise JournalError(problems[:MAX_REPORTED])
        meter.advance(len(chunk))
        documents = [d for _, d in chunk if newer_than is None or occurred(d) > newer_than]
        if not documents:
            continue
        batches = ingest_now(client, documents) if ingest else publish_wire(client, documents)
        client.hincrby(keys.COUNTERS, "replayed", len(documents))
        result.events += len(documents)
        result.batches += batches
    meter.finish()
    return result


def _chunks(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class RebuildResult:
    wiped: int
    events: int  # journal events replayed
    synced: dict[str, int]
    seeded: int = 0  # events derived from the snapshot it started from


class Seed(Protocol):
    """A directory snapshot a rebuild starts from (``producers.snapshot.SnapshotSeed``)."""

    source: str
    taken_at: datetime

    def apply(self, client: redis.Redis, progress: IO[str] | None) -> int:
        """Apply the snapshot to the wiped projection; returns the events applied."""
        ...


def wipe_projection(client: redis.Redis) -> int:
    """Delete the directory projection (only its keys); returns how many keys went."""
    deleted = 0
    for pattern in keys.PROJECTION_PATTERNS:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    return deleted


def pause_for_rebuild(client: redis.Redis) -> list[str]:
    """Pause every running app (and take over those a broken rebuild left paused)."""
    paused = []
    for app in apps.list_apps(client):
        if app.active and (app.paused is None or app.paused == REBUILD_PAUSE):
            apps.update(client, app.id, paused=REBUILD_PAUSE)
            paused.append(app.id)
    return paused


def rebuild(
    client: redis.Redis, *, progress: IO[str] | None = sys.stderr, snapshot: Seed | None = None
) -> RebuildResult:
    """Rebuild the projection from the journal, then fully sync every active app.

    Running apps are paused meanwhile, so that no reconcile reads a half-built projection;
    events that arrive meanwhile are journaled and ingested as usual. Without ``snapshot``,
    refused when the journal no longer holds every accepted event (the rebuilt directory would
    miss facts, and a full sync would act on that). With one, the wiped projection gets the
    snapshot first, then the journal's events that occurred after it; refused only when the
    journal dropped events accepted after the snapshot was taken. Interrupted, it leaves the
    apps paused: run it again.
    """
    if snapshot is not None:
        gap = snapshot_gap(client, snapshot.taken_at)
        if gap:
            raise JournalError([gap])
    elif missing := trimmed(client):
        raise JournalError(
            [
                f"the journal no longer holds {missing} of the accepted events (retention by "
                f"size or age): a rebuild from it would lose them; rebuild from a snapshot "
                f"(--from-snapshot FILE) instead; nothing was changed"
            ]
        )

    app_ids = pause_for_rebuild(client)  # reconciles in flight stop before their next call
    deadline = time.monotonic() + settings().lease_seconds + 30  # a killed one's lease lapses
    if any(drain(client, a, max(0.0, deadline - time.monotonic())) for a in app_ids):
        raise JournalError(["reconciles still running; nothing wiped, apps paused: run it again"])
    wiped = wipe_projection(client)
    seeded = snapshot.apply(client, progress) if snapshot is not None else 0
    newer_than = epoch_micros(snapshot.taken_at) if snapshot is not None else None
    replayed = replay_range(client, progress=progress, ingest=True, label="rebuild",
                            newer_than=newer_than)  # fmt: skip
    synced = {}
    for app_id in app_ids:
        apps.update(client, app_id, paused=None)
        synced[app_id] = full_sync(client, app_id)
    return RebuildResult(wiped=wiped, events=replayed.events, synced=synced, seeded=seeded)
