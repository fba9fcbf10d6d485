"""The journal of accepted events (the Redis stream ``prov:journal``): retention and reading.
Replaying a range and rebuilding the projection from it are in ``worker.apps.rebuild``.

Retention is by size and by age (both pool-wide):

| variable | default | how |
|---|---|---|
| ``PROVISIONER_JOURNAL_MAXLEN`` | ``2000000`` | ``XADD … MAXLEN ~`` as each event is journaled |
| ``PROVISIONER_JOURNAL_MAX_AGE_DAYS`` | ``30`` | ``trim()`` (``XTRIM MINID ~``), run by the sweeper |

The duplicate filter (``prov:ev:recent``, ids by acceptance time; see ``store_batch.lua``) is
bounded by the same two limits; ``trim()`` publishes the age to Redis so that producers need no
setting of their own. Trimming the stream is approximate (whole stream nodes): a few more
entries than the limits may stay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import redis

from worker import config
from worker.contract.events import EventError, parse_event, version
from worker.store import audit, codec, keys, scripts

MAX_REPORTED = 20
PAGE = 1000  # entries read per XRANGE
SNAPSHOT_SKEW_MS = 5 * 60 * 1000  # the directory's clock against Redis's, for a snapshot


class JournalError(ValueError):
    """Invalid journal entries, or a journal that cannot serve the request; ``lines`` says why."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


# -- retention --------------------------------------------------------------------------------
def configured_max_age() -> float:
    """``PROVISIONER_JOURNAL_MAX_AGE_DAYS`` in seconds, read now (``config.SettingsError``, a
    ``ValueError``, when it is not a positive number)."""
    return config.load().journal_max_age_days * 86400


def trim(
    client: redis.Redis, max_age_seconds: float | None = None, *, approximate: bool = True
) -> int:
    """Drop journal entries and duplicate-filter ids older than ``max_age_seconds`` (default:
    from the environment), and publish that age to producers. Returns the entries dropped.

    Cheap (``~`` trims whole stream nodes only): meant to run at every sweep of a worker.
    """
    age = configured_max_age() if max_age_seconds is None else max_age_seconds
    age_ms = int(age * 1000)
    cutoff = scripts.redis_now_ms(client) - age_ms  # the stream ids' clock
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
    last = codec.stream(client.xrevrange(keys.JOURNAL, count=1))
    if not last:
        return None
    start = "-" if since is None else str(_ms(since))
    end = last[0][0].decode() if until is None else str(max(0, _ms(until) - 1))  # "<ms>": all
    return start, end


def entries(
    client: redis.Redis, bounds: tuple[str, str], page: int = PAGE
) -> Iterator[tuple[str, str]]:
    """``(stream id, stored event JSON)`` of the journal between inclusive ``bounds``."""
    start, end = bounds
    while True:
        chunk = codec.stream(client.xrange(keys.JOURNAL, start, end, count=page))
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
    last = codec.stream(client.xrevrange(keys.JOURNAL, count=1))
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
def parse_time(text: str, now: float | None = None) -> datetime:
    """``--since``/``--until`` as for ``audit``: RFC 3339 with a zone (exact), or a time back
    from ``now`` (``-30m``, ``-2h``, ``-7d``; the pool's clock, Redis's, which stamps the
    journal; this host's when None). Raises ``ValueError``."""
    moment = audit.since(text, time.time() if now is None else now)
    return datetime.fromtimestamp(moment, UTC)


def _ms(moment: datetime) -> int:
    return max(0, int(moment.timestamp() * 1000))


def validate(client: redis.Redis, bounds: tuple[str, str]) -> int:
    """Count the entries between ``bounds``; raise ``JournalError`` naming the invalid ones."""
    total = 0
    problems: list[str] = []
    for entry_id, document in entries(client, bounds):
        total += 1
        problem = check(entry_id, document)
        if problem and len(problems) < MAX_REPORTED:
            problems.append(problem)
    if problems:
        raise JournalError(problems)
    return total


def occurred(document: str) -> int:
    """When a stored event occurred, in µs since the epoch (the first part of its ``v``)."""
    start = document.rfind('"v":"') + 5
    return int(document[start : start + 17])


def trimmed(client: redis.Redis) -> int:
    """How many accepted events the journal no longer holds (trimmed by size or age)."""
    published = int(client.hget(keys.COUNTERS, "published") or 0)
    return max(0, published - int(client.xlen(keys.JOURNAL)))


def snapshot_gap(client: redis.Redis, taken_at: datetime) -> str | None:
    """Why the journal cannot bring a snapshot taken at ``taken_at`` up to date (None: it can):
    it dropped entries accepted later than ``taken_at`` (less 5 minutes of clock skew)."""
    missing = trimmed(client)
    if not missing:
        return None
    first = codec.stream(client.xrange(keys.JOURNAL, count=1))
    if first:  # every dropped entry is older than the first one kept
        boundary = int(first[0][0].split(b"-")[0])
    else:  # none kept: the last one ever added bounds them
        try:
            boundary = int(client.xinfo_stream(keys.JOURNAL)["last-generated-id"].split(b"-")[0])
        except redis.ResponseError:
            boundary = scripts.redis_now_ms(client)
    if boundary <= _ms(taken_at) - SNAPSHOT_SKEW_MS:
        return None
    since = datetime.fromtimestamp(boundary / 1000, UTC).isoformat(timespec="seconds")
    return (
        f"the journal no longer holds {missing} of the accepted events, some of them accepted "
        f"up to {since}, later than the snapshot (taken at "
        f"{taken_at.isoformat(timespec='seconds')}, less 5 minutes for clock skew): the "
        "rebuilt directory would miss them; take a newer snapshot; nothing was changed"
    )
