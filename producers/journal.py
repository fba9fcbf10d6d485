"""The journal of accepted events (the Redis stream ``prov:journal``): retention, reading, replay
of a range and rebuild of the projection.

Retention is by size and by age (both pool-wide):

| variable | default | how |
|---|---|---|
| ``PROVISIONER_JOURNAL_MAXLEN`` | ``2000000`` | ``XADD … MAXLEN ~`` as each event is journaled |
| ``PROVISIONER_JOURNAL_MAX_AGE_DAYS`` | ``30`` | ``trim()`` (``XTRIM MINID ~``), run by the sweeper |

The duplicate filter (``prov:ev:recent``, ids by acceptance time; see ``store_batch.lua``) is
bounded by the same two limits; ``trim()`` publishes the age to Redis so that producers need no
setting of their own. Trimming the stream is approximate (whole stream nodes): a few more
entries than the limits may stay.

A replay re-publishes stored events without the duplicate filter (``publish_wire``); the
projection's last-writer-wins registers make it idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Protocol

import redis

from producers.publish import BATCH_SIZE, publish_wire, version
from worker import apps, audit, keys, scripts
from worker.celery_app import send_reconcile
from worker.config import settings
from worker.events import EventError, epoch_micros, parse_event

MAX_AGE_ENV = "PROVISIONER_JOURNAL_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 30.0
MAX_REPORTED = 20
SNAPSHOT_SKEW_MS = 5 * 60 * 1000  # the directory's clock against Redis's, for a snapshot
REBUILD_PAUSE = "rebuild in progress (if it was interrupted, run `provisioner rebuild` again)"


class JournalError(ValueError):
    """Invalid journal entries, or a journal that cannot serve the request; ``lines`` says why."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


# -- retention --------------------------------------------------------------------------------
def configured_max_age() -> float:
    """``PROVISIONER_JOURNAL_MAX_AGE_DAYS`` in seconds (default 30 days)."""
    days = float(os.environ.get(MAX_AGE_ENV) or DEFAULT_MAX_AGE_DAYS)
    if days <= 0:
        raise ValueError(f"{MAX_AGE_ENV} must be a positive number of days, not {days:g}")
    return days * 86400


def trim(
    client: redis.Redis, max_age_seconds: float | None = None, *, approximate: bool = True
) -> int:
    """Drop journal entries and duplicate-filter ids older than ``max_age_seconds`` (default:
    from the environment), and publish that age to producers. Returns the entries dropped.

    Cheap (``~`` trims whole stream nodes only): meant to run at every sweep of a worker.
    """
    age = configured_max_age() if max_age_seconds is None else max_age_seconds
    age_ms = int(age * 1000)
    cutoff = scripts.now_ms() - age_ms
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.JOURNAL_MAX_AGE, age_ms)
    pipe.xtrim(keys.JOURNAL, minid=cutoff, approximate=approximate)
    pipe.zremrangebyscore(keys.RECENT_EVENTS, "-inf", cutoff)
    return int(pipe.execute()[1])


# -- reading ----------------------------------------------------------------------------------
def stream_bounds(
    client: redis.Redis, since: datetime | None = None, until: datetime | None = None
) -> tuple[str, str] | None:
    """The stream ids of entries accepted in ``[since, until)``; ``until`` None: up to the last
    entry now (later ones are left out). None when the journal is empty."""
    last = client.xrevrange(keys.JOURNAL, count=1)
    if not last:
        return None
    start = "-" if since is None else str(_ms(since))
    end = last[0][0].decode() if until is None else str(max(0, _ms(until) - 1))  # "<ms>": all
    return start, end


def entries(
    client: redis.Redis, bounds: tuple[str, str], page: int = BATCH_SIZE
) -> Iterator[tuple[str, str]]:
    """``(stream id, stored event JSON)`` of the journal between inclusive ``bounds``."""
    start, end = bounds
    while True:
        chunk = client.xrange(keys.JOURNAL, start, end, count=page)
        for entry_id, fields in chunk:
            yield entry_id.decode(), fields[b"e"].decode()
        if len(chunk) < page:
            return
        start = "(" + chunk[-1][0].decode()


def read_range(
    client: redis.Redis, since: datetime | None = None, until: datetime | None = None
) -> Iterator[str]:
    """Stored events (v1 JSON plus ``v``) accepted in ``[since, until)``, oldest first."""
    bounds = stream_bounds(client, since, until)
    if bounds is not None:
        for _, document in entries(client, bounds):
            yield document


def count(client: redis.Redis, bounds: tuple[str, str]) -> int:
    """How many entries lie between ``bounds`` (a pass over them, unless it is the whole)."""
    last = client.xrevrange(keys.JOURNAL, count=1)
    if bounds[0] == "-" and last and bounds[1] == last[0][0].decode():
        return int(client.xlen(keys.JOURNAL))
    return sum(1 for _ in entries(client, bounds))


def check(entry_id: str, document: str) -> str | None:
    """Why a journal entry is not a valid stored v1 event, or None."""
    try:
        data = json.loads(document)
        stored_version = data.pop("v", None) if isinstance(data, dict) else None
        event = parse_event(data)
    except EventError as error:
        return f"entry {entry_id}: {error}"
    except ValueError as error:
        return f"entry {entry_id}: malformed JSON: {error}"
    if stored_version != version(event):
        return f"entry {entry_id}: /v: expected {version(event)!r}, found {stored_version!r}"
    return None


# -- time arguments ---------------------------------------------------------------------------
def parse_time(text: str) -> datetime:
    """``--since``/``--until`` as for ``audit``: RFC 3339 with a zone (exact), or a time back
    from now (``-30m``, ``-2h``, ``-7d``). Raises ``ValueError``."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is not None:
        return moment.astimezone(UTC)
    try:
        minutes = audit.minutes_back(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(str(error)) from None
    return datetime.now(UTC) - timedelta(minutes=minutes)


def _ms(moment: datetime) -> int:
    return max(0, int(moment.timestamp() * 1000))


# -- progress ---------------------------------------------------------------------------------
class Progress:
    """Rate and ETA: a line redrawn in place on a terminal, a plain line every 2 s in a pipe."""

    def __init__(self, label: str, total: int, out: IO[str] | None):
        self.label, self.total, self.out = label, total, out
        self.tty = bool(out and out.isatty())
        self.started = self.last = time.monotonic()
        self.done = self.shown = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.out and (self.tty and now - self.last >= 0.1 or now - self.last >= 2):
            self.last = now
            self._write()

    def finish(self) -> None:
        if self.out:
            if self.shown != self.done or not self.done:
                self._write()
            if self.tty:
                self.out.write("\n")
                self.out.flush()

    def _write(self) -> None:
        assert self.out is not None
        self.shown = self.done
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate else 0.0
        line = f"{self.label} {self.done}/{self.total} events, {rate:,.0f}/s, ETA {eta:.0f}s"
        if self.tty:
            width = 24
            filled = width * self.done // max(self.total, 1)
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()


# -- replay of a range ------------------------------------------------------------------------
@dataclass
class ReplayResult:
    events: int = 0
    batches: list[str] = field(default_factory=list)


def validate(client: redis.Redis, bounds: tuple[str, str]) -> int:
    """Count the entries between ``bounds``; raise ``JournalError`` naming the invalid ones."""
    total, problems = 0, []
    for entry_id, document in entries(client, bounds):
        total += 1
        problem = check(entry_id, document)
        if problem and len(problems) < MAX_REPORTED:
            problems.append(problem)
    if problems:
        raise JournalError(problems)
    return total


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


def occurred(document: str) -> int:
    """When a stored event occurred, in µs since the epoch (the first part of its ``v``)."""
    start = document.rfind('"v":"') + 5
    return int(document[start : start + 17])


def ingest_now(client: redis.Redis, documents: list[str]) -> list[str]:
    """Apply stored events to the projection here, at once, outside the journal (rebuild);
    returns their batches. Reconciles go to the workers."""
    batches = publish_wire(client, documents, notify=False)
    for batch_id in batches:
        result_keys = scripts.run(client, "ingest", batch_id)[3:]
        send_reconcile(k.decode() for k in result_keys)
    return batches


def _chunks(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- rebuild ----------------------------------------------------------------------------------
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


def trimmed(client: redis.Redis) -> int:
    """How many accepted events the journal no longer holds (trimmed by size or age)."""
    published = int(client.hget(keys.COUNTERS, "published") or 0)
    return max(0, published - int(client.xlen(keys.JOURNAL)))


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


def snapshot_gap(client: redis.Redis, taken_at: datetime) -> str | None:
    """Why the journal cannot bring a snapshot taken at ``taken_at`` up to date (None: it can):
    it dropped entries accepted later than ``taken_at`` (less 5 minutes of clock skew)."""
    missing = trimmed(client)
    if not missing:
        return None
    first = client.xrange(keys.JOURNAL, count=1)
    if first:  # every dropped entry is older than the first one kept
        boundary = int(first[0][0].split(b"-")[0])
    else:  # none kept: the last one ever added bounds them
        try:
            boundary = int(client.xinfo_stream(keys.JOURNAL)["last-generated-id"].split(b"-")[0])
        except redis.ResponseError:
            boundary = scripts.now_ms()
    if boundary <= _ms(taken_at) - SNAPSHOT_SKEW_MS:
        return None
    since = datetime.fromtimestamp(boundary / 1000, UTC).isoformat(timespec="seconds")
    return (
        f"the journal no longer holds {missing} of the accepted events, some of them accepted "
        f"up to {since}, later than the snapshot (taken at "
        f"{taken_at.isoformat(timespec='seconds')}, less 5 minutes for clock skew): the "
        "rebuilt directory would miss them; take a newer snapshot; nothing was changed"
    )


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
    from worker.lifecycle import drain
    from worker.runner import full_sync

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
