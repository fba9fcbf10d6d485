"""Full-state directory snapshots (``provisioner snapshot FILE|-``; the format and the rules:
``docs/snapshot.md``): the events that take the projection from what it holds to the directory
a snapshot describes, deletions of what the snapshot lacks included, published like any
others (journal, duplicate filter, ``lua/ingest.lua``).

``publish_snapshot`` is the stable entry point for producers (a directory connector writes
snapshot lines and calls it). The decisions are pure (``worker.contract.snapshot``: the line
models; ``snapshot_diff``: which events); this module reads Redis and the input, and publishes.

**Bounded memory.** The input is read once, line by line. Lines wait in a chunk of at most
1,000 objects (10,000 ids counting member and association lists), which is then compared with
the projection in one pipelined round trip (``HMGET`` of the users' and groups' registers;
``HMGET`` of the pair registers for the listed members and associations, ``SSCAN`` of the
projection's current ones). Derived events go to a temporary file, not to memory, until the
whole snapshot has been read and validated and the deletions counted: nothing is published
before every line is known good and the deletion guard has had its say. The process holds one
chunk, one group's member list (its line holds it anyway), the first ``show`` events and the
app ids: nothing that grows with the number of users.

**What the snapshot lacks.** The projection keeps no list of its ids: a user or group is a
key (``prov:u:<id>``, ``prov:g:<id>``). The snapshot's ids go to two temporary Redis sets
(``prov:snapshot:<run>:users|groups``, expiring after an hour, deleted at the end) as they
are read (``SMISMEMBER`` before each ``SADD`` finds an id listed twice). Then one ``SCAN MATCH
prov:[ug]:*`` walks the projection's objects a page at a time and ``SMISMEMBER`` tells which of
them the snapshot holds (one round trip a page). Redis rather than an on-disk sort: the
projection's ids are only in Redis, so a sort on disk would first have to export them; the
sets cost Redis 64 to 80 bytes an id (measured) for the length of a run, nothing in the process.

**Ordering.** Derived events carry ``occurred_at`` = ``taken_at``, so the registers'
last-writer-wins keeps any newer event's value; the diff derives only events that would apply.
Deletion is terminal and unversioned, so an object whose own registers (record, state, name) a
newer event wrote is not deleted, whether that event was ingested before the comparison or
journaled while it ran (the journal since then is read again just before publishing).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import IO, Any

import redis

from producers.snapshot_diff import (
    GROUP_FIELDS,
    RELATIONS,
    USER_FIELDS,
    Document,
    GuardLimits,
    HeldGroup,
    HeldUser,
    Kind,
    Relation,
    Stamp,
    deleted_object,
    deletion_event,
    group_events,
    pair_event,
    refused_deletions,
    registers_of,
    user_events,
)
from worker import config
from worker.contract.events import parse_documents
from worker.contract.snapshot import (
    AppLine,
    Body,
    GroupLine,
    Header,
    UserLine,
    is_blank,
    parse_line,
    place_problem,
)
from worker.progress import Progress
from worker.queue.publish import BATCH_SIZE, ingest_now, publish, wire
from worker.store import codec, journal, keys

CHUNK = 1000  # objects, pairs or keys per round trip
CHUNK_IDS = 10_000  # ids (lines and their lists) waiting at once
SCRATCH_TTL = 3600  # seconds a run's temporary sets outlive a crashed run
MAX_REPORTED = 20
SHOW = 20  # events a dry run prints
USER_PREFIX, GROUP_PREFIX = keys.user(""), keys.group("")

Line = str | bytes | dict[str, Any]


class SnapshotError(ValueError):
    """A snapshot refused whole, nothing published: ``lines`` says why (line, field, reason)."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


class DeletionsRefused(SnapshotError):
    """More deletions than the deletion guard's share; ``result`` is the difference found."""

    def __init__(self, lines: list[str], result: SnapshotResult):
        super().__init__(lines)
        self.result = result


@dataclass
class SnapshotResult:
    """What a snapshot changed (or, on a dry run, would change)."""

    source: str = ""
    taken_at: datetime | None = None
    lines: int = 0  # lines read, the header and blank lines included
    users: int = 0  # objects the snapshot lists
    groups: int = 0
    apps: int = 0
    held: dict[Kind, int] = field(default_factory=Counter)  # live users, groups in the projection
    counts: dict[str, int] = field(default_factory=Counter)  # derived events per type
    sample: list[Document] = field(default_factory=list)  # the first ``show`` events
    deletions: dict[Kind, int] = field(default_factory=Counter)  # users, groups to delete
    deleted_before: dict[Kind, int] = field(default_factory=Counter)  # listed, but deleted
    kept_newer: dict[Kind, int] = field(default_factory=Counter)  # lacking, but newer events
    published: int = 0  # events the journal accepted (0 on a dry run)
    duplicates: int = 0  # events it already held (the same snapshot published before)
    dry_run: bool = False

    @property
    def events(self) -> int:
        return sum(self.counts.values())


def publish_snapshot(
    client: redis.Redis,
    lines: Iterable[Line],
    *,
    dry_run: bool = False,
    allow_deletions: int | None = None,
    show: int = SHOW,
    progress: IO[str] | None = None,
) -> SnapshotResult:
    """Publish the events that take the projection to the directory ``lines`` describe.

    ``lines``: the snapshot's lines in order, each a JSON text (``str``/``bytes``) or an
    already decoded ``dict``; read once. Raises ``SnapshotError`` (every problem by line and
    field, at most 20) if any line is bad, and ``DeletionsRefused`` if it would delete more
    users or groups than the deletion guard's share and than ``allow_deletions``; in both
    cases nothing is published. ``dry_run``: compute and count, publish nothing. Publishing
    the same snapshot again derives no event.
    """
    run = _Run(client, show=show, progress=progress)
    try:
        run.read(lines)
        run.find_lacking()
        run.settle_deletions()
        result = run.result
        result.dry_run = dry_run
        limits = guard_limits()
        reasons = refused_deletions(result.deletions, result.held, limits, allow_deletions)
        if reasons:
            raise DeletionsRefused(reasons, result)
        if not dry_run:
            run.publish()
        return result
    finally:
        run.close()


def guard_limits() -> GuardLimits:
    """The deletion guard's share, read now from the settings ``worker/sync/guard.py`` uses."""
    conf = config.load()
    return GuardLimits(percent=conf.guard_percent, minimum=conf.guard_minimum)


def file_lines(path: str) -> Iterator[bytes]:
    """A snapshot file's lines, read as they are used (``-``: standard input)."""
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the last line
    except OSError as error:
        raise SnapshotError([f"cannot read {path}: {error.strerror}"]) from None
    with f:
        yield from f


# -- rebuild from a snapshot ------------------------------------------------------------------
@dataclass
class SnapshotSeed:
    """A validated snapshot file that ``worker.apps.rebuild.rebuild`` starts from (``rebuild
    --from-snapshot``): applied to the wiped projection, then the journal's newer events."""

    path: str
    source: str
    taken_at: datetime

    @classmethod
    def load(cls, client: redis.Redis, path: str) -> SnapshotSeed:
        """Validate the whole file (raises ``SnapshotError``); reads the projection not at all."""
        run = _Run(client, compare=False)
        try:
            run.read(file_lines(path))
        finally:
            run.close()
        assert run.result.taken_at is not None
        return cls(path, run.result.source, run.result.taken_at)

    def apply(self, client: redis.Redis, progress: IO[str] | None) -> int:
        """Apply the snapshot to the (wiped) projection at once, outside the journal; returns
        the events applied."""
        run = _Run(client, progress=progress)
        try:
            run.read(file_lines(self.path))
            meter = Progress("snapshot", run.result.events, progress)
            for chunk in run.staged():
                ingest_now(client, [wire(e).decode() for e in parse_documents(chunk)])
                meter.advance(len(chunk))
            meter.finish()
            return run.result.events
        finally:
            run.close()


# -- one run ----------------------------------------------------------------------------------
@dataclass
class _Pairs:
    """One list of a snapshot line (a group's members, an app's groups or users) to compare
    with the projection's pair registers."""

    relation: Relation
    owner: str
    wanted: list[str]
    removed: set[str] = field(default_factory=set)

    @cached_property
    def wanted_set(self) -> set[str]:
        return set(self.wanted)

    @property
    def registers(self) -> str:
        return {
            "member": keys.group_member_registers,
            "app_group": keys.app_group_registers,
            "app_user": keys.app_user_registers,
        }[self.relation](self.owner)

    @property
    def index(self) -> str:
        return {"member": keys.group_members, "app_group": keys.app_groups,
                "app_user": keys.app_users}[self.relation](self.owner)  # fmt: skip

    def item_key(self, item: str) -> str:
        return keys.user(item) if RELATIONS[self.relation][4] == "user" else keys.group(item)


class _Run:
    """One pass over a snapshot: validation, comparison, staging, publication."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        compare: bool = True,
        show: int = SHOW,
        progress: IO[str] | None = None,
    ):
        self.client = client
        self.compare = compare
        self.show = show
        self.progress = progress
        base = f"{keys.PREFIX}snapshot:{uuid.uuid4().hex}:"
        self.seen = {"user": base + "users", "group": base + "groups"}
        self.gone = base + "gone"
        self.apps: set[str] = set()
        self.changes = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.deletions = tempfile.TemporaryFile()  # noqa: SIM115
        self.kept = tempfile.TemporaryFile()  # noqa: SIM115
        self.result = SnapshotResult()
        self.problems: list[str] = []
        self.stamp: Stamp | None = None
        self.waiting: list[tuple[int, Body]] = []
        self.waiting_ids = 0
        self.candidates: list[tuple[_Pairs, str, bool, bytes | None]] = []
        self.removals: list[tuple[_Pairs, str]] = []
        self.started_ms = self._journal_watch()

    def close(self) -> None:
        self.client.delete(*self.seen.values(), self.gone)
        for f in (self.changes, self.deletions, self.kept):
            f.close()

    # -- reading ----------------------------------------------------------------------------
    def read(self, lines: Iterable[Line]) -> None:
        """Validate every line and compare it with the projection; raises ``SnapshotError``."""
        first, started, shown = True, time.monotonic(), time.monotonic()
        for number, raw in enumerate(lines, start=1):
            self.result.lines = number
            if is_blank(raw):
                continue
            line, found = parse_line(raw)
            misplaced = place_problem(number, line, first)
            first = False
            if found:
                self.problems += [f"line {number}: {problem}" for problem in found]
            elif misplaced:
                self.problems.append(misplaced)
            elif isinstance(line, Header):
                self.stamp = Stamp(line.source, line.taken_at)
                self.result.source, self.result.taken_at = line.source, line.taken_at
            else:
                assert line is not None
                self.waiting.append((number, line))
                self.waiting_ids += _ids(line)
                if len(self.waiting) >= CHUNK or self.waiting_ids >= CHUNK_IDS:
                    self._flush()
            if len(self.problems) >= MAX_REPORTED:
                break
            if self.progress and time.monotonic() - shown >= 2:
                shown = time.monotonic()
                rate = number / (shown - started)
                self.progress.write(f"snapshot: {number:,} lines read, {rate:,.0f}/s\n")
                self.progress.flush()
        self._flush()
        if first:
            self.problems.append("line 1: /: empty snapshot: no header")
        if self.problems:  # duplicates are found as a chunk is compared: in line order
            ordered = sorted(self.problems, key=lambda p: int(p.split(":", 1)[0].split()[1]))
            raise SnapshotError(ordered[:MAX_REPORTED])

    def _flush(self) -> None:
        waiting, self.waiting, self.waiting_ids = self.waiting, [], 0
        compare = self.compare and not self.problems
        self._users([(n, x) for n, x in waiting if isinstance(x, UserLine)], compare)
        self._groups([(n, x) for n, x in waiting if isinstance(x, GroupLine)], compare)
        self._apps([(n, x) for n, x in waiting if isinstance(x, AppLine)], compare)

    def _known(
        self, kind: Kind, chunk: list[tuple[int, str]], fields: tuple[str, ...] | None
    ) -> list[Any]:
        """Record the ids as the snapshot's, report those listed twice; the registers of each
        (``fields``, None: none read)."""
        ids = [object_id for _, object_id in chunk]
        pipe = self.client.pipeline(transaction=False)
        pipe.smismember(self.seen[kind], ids)
        pipe.sadd(self.seen[kind], *ids)
        pipe.expire(self.seen[kind], SCRATCH_TTL)
        if fields:
            for object_id in ids:
                pipe.hmget((keys.user if kind == "user" else keys.group)(object_id), fields)
        before, _, _, *registers = pipe.execute()
        here: set[str] = set()
        for (number, object_id), earlier in zip(chunk, before, strict=True):
            if earlier or object_id in here:
                self.problems.append(f"line {number}: /{kind}/id: duplicate: {kind} "
                                     f"{object_id!r} is on an earlier line")  # fmt: skip
            here.add(object_id)
        return registers

    def _users(self, chunk: list[tuple[int, UserLine]], compare: bool) -> None:
        if not chunk:
            return
        self.result.users += len(chunk)
        ids = [(n, line.user.id) for n, line in chunk]
        registers = self._known("user", ids, USER_FIELDS if compare else None)
        for (_, line), values in zip(chunk, registers, strict=False):
            held = HeldUser.parse(values)
            self.result.deleted_before["user"] += held.deleted
            for event in user_events(self._stamp, line.user, held):
                self._emit(event)

    def _groups(self, chunk: list[tuple[int, GroupLine]], compare: bool) -> None:
        if not chunk:
            return
        self.result.groups += len(chunk)
        ids = [(n, line.group.id) for n, line in chunk]
        registers = self._known("group", ids, GROUP_FIELDS if compare else None)
        lists = []
        for (_, line), values in zip(chunk, registers, strict=False):
            held = HeldGroup.parse(values)
            self.result.deleted_before["group"] += held.deleted
            for event in group_events(self._stamp, line.group, held):
                self._emit(event)
            if not held.deleted:
                lists.append(_Pairs("member", line.group.id, line.members))
        if compare:
            self._pairs(lists)

    def _apps(self, chunk: list[tuple[int, AppLine]], compare: bool) -> None:
        lists = []
        for number, line in chunk:
            if line.app_id in self.apps:
                self.problems.append(f"line {number}: /app_id: duplicate: app "
                                     f"{line.app_id!r} is on an earlier line")  # fmt: skip
            self.apps.add(line.app_id)
            self.result.apps += 1
            lists.append(_Pairs("app_group", line.app_id, line.groups))
            lists.append(_Pairs("app_user", line.app_id, line.users))
        if compare and lists:
            self._pairs(lists)

    @property
    def _stamp(self) -> Stamp:
        assert self.stamp is not None  # the header comes first, or nothing is compared
        return self.stamp

    # -- pairs: members and associations --------------------------------------------------
    def _pairs(self, lists: list[_Pairs]) -> None:
        """Compare each list with its registers: the first 1,000 of every list and the first
        page of the projection's current pairs in one round trip, the rest a page a trip."""
        pipe = self.client.pipeline(transaction=False)
        for pairs in lists:
            if pairs.wanted:
                pipe.hmget(pairs.registers, pairs.wanted[:CHUNK])
            pipe.sscan(pairs.index, 0, count=CHUNK)
        answers = iter(pipe.execute())
        for pairs in lists:
            if pairs.wanted:
                self._wanted(pairs, pairs.wanted[:CHUNK], next(answers))
            cursor, page = next(answers)
            self._current(pairs, page)
            for start in range(CHUNK, len(pairs.wanted), CHUNK):
                part = pairs.wanted[start : start + CHUNK]
                registers = codec.optional_blobs(self.client.hmget(pairs.registers, part))
                self._wanted(pairs, part, registers)
            while cursor:
                cursor, page = self.client.sscan(pairs.index, cursor, count=CHUNK)
                self._current(pairs, page)
        self._removal_registers()
        self._decide()

    def _wanted(self, pairs: _Pairs, items: list[str], registers: list[bytes | None]) -> None:
        for item, register in zip(items, registers, strict=True):
            if not (register and register[:1] == b"1"):
                self.candidates.append((pairs, item, True, register))
        if len(self.candidates) >= CHUNK:
            self._decide()

    def _current(self, pairs: _Pairs, page: Iterable[bytes | str]) -> None:
        for item in codec.texts(page):
            if item not in pairs.wanted_set and item not in pairs.removed:
                pairs.removed.add(item)  # SSCAN may return an item twice
                self.removals.append((pairs, item))
        if len(self.removals) >= CHUNK:
            self._removal_registers()

    def _removal_registers(self) -> None:
        if not self.removals:
            return
        pipe = self.client.pipeline(transaction=False)
        for pairs, item in self.removals:
            pipe.hget(pairs.registers, item)
        for (pairs, item), register in zip(self.removals, pipe.execute(), strict=True):
            self.candidates.append((pairs, item, False, register))
        self.removals.clear()
        if len(self.candidates) >= CHUNK:
            self._decide()

    def _decide(self) -> None:
        """The candidates' events, now that whether each item is deleted is known."""
        if not self.candidates:
            return
        pipe = self.client.pipeline(transaction=False)
        for pairs, item, _, _ in self.candidates:
            pipe.hexists(pairs.item_key(item), "del")
        for (pairs, item, wanted, register), deleted in zip(
            self.candidates, pipe.execute(), strict=True
        ):
            event = pair_event(self._stamp, pairs.relation, pairs.owner, item, wanted, register,
                               bool(deleted))  # fmt: skip
            if event is not None:
                self._emit(event)
        self.candidates.clear()

    # -- what the snapshot lacks ------------------------------------------------------------
    def find_lacking(self) -> None:
        """Stage a deletion for each live user and group of the projection the snapshot lacks;
        count the live ones (the guard's base)."""
        cursor = None
        while cursor != 0:
            cursor, page = self.client.scan(cursor or 0, match=keys.PREFIX + "[ug]:*",
                                            count=CHUNK)  # fmt: skip
            names = codec.texts(page)
            users = [k[len(USER_PREFIX) :] for k in names if k.startswith(USER_PREFIX)]
            groups = [k[len(GROUP_PREFIX) :] for k in names if k.startswith(GROUP_PREFIX)]
            self._lacking([("user", u) for u in users] + [("group", g) for g in groups])

    def _lacking(self, objects: list[tuple[Kind, str]]) -> None:
        if not objects:
            return
        pipe = self.client.pipeline(transaction=False)
        for kind in ("user", "group"):
            ids = [object_id for k, object_id in objects if k == kind]
            if ids:
                pipe.smismember(self.seen[kind], ids)
        for kind, object_id in objects:
            if kind == "user":
                pipe.hmget(keys.user(object_id), ("del", "rec_v", "st_v"))
            else:
                pipe.hmget(keys.group(object_id), ("del", "name_v"))
        answers = pipe.execute()
        listed: list[int] = []
        for kind in ("user", "group"):
            if any(k == kind for k, _ in objects):
                listed += answers.pop(0)
        # objects are users first, then groups, as find_lacking lists them
        gone: list[tuple[Kind, Document]] = []
        for (kind, object_id), in_snapshot, values in zip(objects, listed, answers,
                                                          strict=True):  # fmt: skip
            held: HeldUser | HeldGroup
            if kind == "user":
                held = HeldUser(values[0] is not None, None, codec.optional_text(values[1]),
                                None, codec.optional_text(values[2]))  # fmt: skip
            else:
                held = HeldGroup(values[0] is not None, None, codec.optional_text(values[1]))
            if held.deleted:
                continue
            self.result.held[kind] += 1
            if in_snapshot:
                continue
            event = deletion_event(self._stamp, kind, object_id, held)
            if event is None:
                self.result.kept_newer[kind] += 1
            else:
                gone.append((kind, event))
        if gone:
            pipe = self.client.pipeline(transaction=False)
            for kind, event in gone:
                pipe.sadd(self.gone, f"{kind} {event['data'][f'{kind}_id']}")
            pipe.expire(self.gone, SCRATCH_TTL)
            for (_, event), new in zip(gone, pipe.execute(), strict=False):
                if new:  # SCAN may return a key twice
                    self.deletions.write(json.dumps(event).encode() + b"\n")

    def settle_deletions(self) -> None:
        """Drop the deletions of objects whose registers an event newer than the snapshot,
        journaled since this run started, writes (the scan may not have seen it); count the
        others."""
        touched = self._touched_since(self.started_ms)
        self.deletions.seek(0)
        for raw in self.deletions:
            event = json.loads(raw)
            kind, _ = subject = deleted_object(event)
            if subject in touched:
                self.result.kept_newer[kind] += 1
                continue
            self.result.deletions[kind] += 1
            self._count(event)
            self.kept.write(raw)

    def _journal_watch(self) -> int:
        """Where to read the journal from in ``settle_deletions``: now, or the oldest batch
        still waiting for ingest (its events were not in the projection yet)."""
        seconds, micros = self.client.time()
        now = seconds * 1000 + micros // 1000
        oldest = codec.scored(self.client.zrange(keys.PENDING_BATCHES, 0, 0, withscores=True))
        return min([now] + [int(score) for _, score in oldest])

    def _touched_since(self, since_ms: int) -> set[tuple[Kind, str]]:
        touched: set[tuple[Kind, str]] = set()
        if self.stamp is None:
            return touched
        bounds = (str(since_ms), "+")
        for _, document in journal.entries(self.client, bounds):
            if journal.occurred(document) > self.stamp.micros:
                subject = registers_of(json.loads(document))
                if subject is not None:
                    touched.add(subject)
        return touched

    # -- staging and publication ------------------------------------------------------------
    def _emit(self, event: Document) -> None:
        self.changes.write(json.dumps(event).encode() + b"\n")
        self._count(event)

    def _count(self, event: Document) -> None:
        self.result.counts[event["type"]] += 1
        if len(self.result.sample) < self.show:
            self.result.sample.append(event)

    def staged(self) -> Iterator[list[Document]]:
        """The derived events in batches of 1,000: changes, then deletions."""
        chunk: list[Document] = []
        for f in (self.changes, self.kept):
            f.seek(0)
            for raw in f:
                chunk.append(json.loads(raw))
                if len(chunk) >= BATCH_SIZE:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def publish(self) -> None:
        meter = Progress("publish", self.result.events, self.progress)
        for chunk in self.staged():
            outcome = publish(self.client, parse_documents(chunk))
            self.result.published += len(outcome.accepted)
            self.result.duplicates += len(outcome.duplicates)
            meter.advance(len(chunk))
        meter.finish()


def _ids(line: Body) -> int:
    if isinstance(line, GroupLine):
        return 1 + len(line.members)
    if isinstance(line, AppLine):
        return 1 + len(line.groups) + len(line.users)
    return 1
