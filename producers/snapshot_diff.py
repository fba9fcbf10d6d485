"""The pure decisions of a snapshot (``docs/snapshot.md``): which v1 events take what the
projection holds for one object, or one pair, to what the snapshot says.

Every event derived from a snapshot has ``occurred_at`` = ``taken_at`` and an id hashed from
the source, ``taken_at``, the type and the data: the same snapshot always derives the same
events (a second publication is all duplicates), and the registers' last-writer-wins orders
them against every other event. An event is derived only where ``lua/ingest.lua`` would apply
it: the value differs, the register is older than the event, and the object is not deleted
(deletion is terminal). Deletions carry no version in the projection, so an object is deleted
only when none of its own registers was written by a newer event.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from worker.contract.events import GroupRecord, UserRecord, epoch_micros
from worker.contract.snapshot import taken_at_text

Document = dict[str, Any]
Kind = Literal["user", "group"]
Relation = Literal["member", "app_group", "app_user"]

# Hash fields of the projection (``lua/ingest.lua``), read with HMGET in this order.
USER_FIELDS = ("del", "rec", "rec_v", "st", "st_v")
GROUP_FIELDS = ("del", "name", "name_v")
# pair relation -> (event when paired, event when not, owner field, item field, item kind)
RELATIONS: dict[Relation, tuple[str, str, str, str, Kind]] = {
    "member": ("group.member_added", "group.member_removed", "group_id", "user_id", "user"),
    "app_group": ("app.group_associated", "app.group_disassociated", "app_id", "group_id", "group"),
    "app_user": ("app.user_associated", "app.user_disassociated", "app_id", "user_id", "user"),
}


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Stamp:
    """The snapshot's identity, which every derived event carries."""

    source: str
    taken_at: datetime

    @cached_property
    def occurred_at(self) -> str:
        return taken_at_text(self.taken_at)

    @cached_property
    def micros(self) -> int:
        return epoch_micros(self.taken_at)

    def event(self, type_: str, data: Document) -> Document:
        """A v1 event document of this snapshot: deterministic id, ``occurred_at`` = taken_at."""
        body = json.dumps([self.source, self.occurred_at, type_, data], sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False)  # fmt: skip
        event_id = "snap-" + hashlib.sha256(body.encode()).hexdigest()[:40]
        return {"id": event_id, "type": type_, "occurred_at": self.occurred_at, "data": data}

    def version(self, event: Document) -> str:
        """The event's last-writer-wins version, as ``worker.contract.events.version`` spells it."""
        return f"{self.micros:017d} {event['id']}"

    def newer(self, event: Document, held: str | None) -> bool:
        """Would ``event`` win over a register written at version ``held`` (None: never)?"""
        return held is None or self.version(event) > held


@dataclass(frozen=True)
class HeldUser:
    """What the projection holds for one user (``prov:u:<id>``)."""

    deleted: bool = False
    record: Document | None = None  # without ``state``
    record_v: str | None = None
    state: str | None = None
    state_v: str | None = None

    @classmethod
    def parse(cls, values: Sequence[bytes | None]) -> HeldUser:
        deleted, record, record_v, state, state_v = values
        return cls(deleted is not None, json.loads(record) if record else None,
                   _text(record_v), _text(state), _text(state_v))  # fmt: skip

    @property
    def exists(self) -> bool:
        return self.deleted or self.record is not None or self.state is not None

    @property
    def versions(self) -> tuple[str | None, ...]:
        return (self.record_v, self.state_v)


@dataclass(frozen=True)
class HeldGroup:
    """What the projection holds for one group (``prov:g:<id>``)."""

    deleted: bool = False
    name: str | None = None
    name_v: str | None = None

    @classmethod
    def parse(cls, values: Sequence[bytes | None]) -> HeldGroup:
        deleted, name, name_v = values
        return cls(deleted is not None, _text(name), _text(name_v))

    @property
    def exists(self) -> bool:
        return self.deleted or self.name is not None

    @property
    def versions(self) -> tuple[str | None, ...]:
        return (self.name_v,)


def user_events(stamp: Stamp, user: UserRecord, held: HeldUser) -> list[Document]:
    """``user.created`` for a user the projection lacks; ``user.updated`` (the whole record)
    when the record differs; ``user.suspended``/``user.activated`` when only the state does."""
    document = user.model_dump(mode="json", exclude_none=True)
    record = {k: v for k, v in document.items() if k != "state"}
    if held.deleted:
        return []
    if held.record is None:
        return [stamp.event("user.created", {"user": document})]
    whole = stamp.event("user.updated", {"user": document})
    if held.record != record and stamp.newer(whole, held.record_v):
        return [whole]
    if held.state != user.state:
        kind = "user.suspended" if user.state == "suspended" else "user.activated"
        change = stamp.event(kind, {"user_id": user.id})
        if stamp.newer(change, held.state_v):
            return [change]
    return []


def group_events(stamp: Stamp, group: GroupRecord, held: HeldGroup) -> list[Document]:
    """``group.created`` for a group the projection lacks, ``group.renamed`` for a new name."""
    if held.deleted:
        return []
    if held.name is None:
        return [stamp.event("group.created", {"group": group.model_dump(mode="json")})]
    if held.name != group.name:
        renamed = stamp.event("group.renamed", {"group_id": group.id, "name": group.name})
        if stamp.newer(renamed, held.name_v):
            return [renamed]
    return []


def pair_event(
    stamp: Stamp,
    relation: Relation,
    owner: str,
    item: str,
    wanted: bool,
    register: bytes | str | None,
    item_deleted: bool,
) -> Document | None:
    """The event that makes the pair (``owner``, ``item``) as ``wanted`` (paired or not), given
    its register (``"<flag><version>"``, None: never written); None if it already is, if a
    newer event wrote the register, or if the item is deleted (``ingest`` would ignore it)."""
    if item_deleted:
        return None
    held = _text(register)
    paired = held is not None and held[:1] == "1"
    if paired == wanted:
        return None
    added, removed, owner_field, item_field, _ = RELATIONS[relation]
    event = stamp.event(added if wanted else removed, {owner_field: owner, item_field: item})
    return event if stamp.newer(event, held[1:] if held else None) else None


def deletion_event(
    stamp: Stamp, kind: Kind, object_id: str, held: HeldUser | HeldGroup
) -> Document | None:
    """``user.deleted``/``group.deleted`` for an object the snapshot lacks; None if it is
    already deleted, or if one of its registers was written by an event newer than the
    snapshot (it existed after ``taken_at``)."""
    if held.deleted:
        return None
    event = stamp.event(f"{kind}.deleted", {f"{kind}_id": object_id})
    return event if all(stamp.newer(event, v) for v in held.versions) else None


def registers_of(event: Document) -> tuple[Kind, str] | None:
    """The user or group whose own registers (record, state, name) a v1 event (or a stored
    one) writes; None for the other events."""
    data = event.get("data") or {}
    kind = event.get("type", "")
    if kind in ("user.created", "user.updated"):
        return ("user", data["user"]["id"])
    if kind in ("user.suspended", "user.activated"):
        return ("user", data["user_id"])
    if kind == "group.created":
        return ("group", data["group"]["id"])
    if kind == "group.renamed":
        return ("group", data["group_id"])
    return None


def deleted_object(event: Document) -> tuple[Kind, str]:
    """The user or group a derived ``*.deleted`` event deletes."""
    kind: Kind = "user" if event["type"] == "user.deleted" else "group"
    return kind, event["data"][f"{kind}_id"]


# -- the deletion guard's share -----------------------------------------------------------------
@dataclass(frozen=True)
class GuardLimits:
    """``PROVISIONER_GUARD_PERCENT`` of the directory, at least ``PROVISIONER_GUARD_MINIMUM``
    (the defaults of ``worker/sync/guard.py``)."""

    percent: float = 10.0
    minimum: int = 20

    def share(self, held: int) -> int:
        return max(self.minimum, math.floor(held * self.percent / 100))


def refused_deletions(
    deletions: dict[Kind, int], held: dict[Kind, int], limits: GuardLimits, allowed: int | None
) -> list[str]:
    """Why the deletions are refused (empty: they may go): a kind whose deletions exceed both
    the guard's share of the directory and ``allowed`` (``--allow-deletions``)."""
    reasons = []
    for kind in ("user", "group"):
        count, share = deletions.get(kind, 0), limits.share(held.get(kind, 0))
        if count > max(share, allowed or 0):
            reasons.append(
                f"the snapshot would delete {count} of the projection's {held.get(kind, 0)} "
                f"{kind}s, more than the deletion guard's share ({share}: "
                f"{limits.percent:g} %, at least {limits.minimum})"
                + (f" and more than --allow-deletions {allowed}" if allowed else "")
                + f"; if they are really gone, run again with --allow-deletions {count}"
            )
    return reasons
