"""Pure mapping: JumpCloud's objects and Directory Insights events to the v1 contract.

A system user (API 1.0 ``systemuser``: ``_id``, ``username``, ``email``, ``firstname``,
``lastname``, ``displayname``, ``employeeIdentifier``, ``department``, ``suspended``,
``activated`` and ``state``, one of ``STAGED``, ``ACTIVATED``, ``SUSPENDED``) becomes the v1
user record. ``state`` is ``suspended`` for a suspended user and for a staged one (not yet
activated: no account of it should be usable in an application), ``active`` otherwise; a
user is never left out for its state, since a snapshot takes an absent user for deleted, and
deletion is final.

Directory Insights (*Event Types*, Directory - Object Events and User and Admin Events):
``user_create``, ``user_update``, ``user_delete``, ``user_suspended``, ``user_unsuspended``,
``user_activated``, ``user_password_set`` (a user out of pending) name the user in
``resource``; ``group_create``, ``group_update``, ``group_delete`` name the group
(``resource.type`` ``user_group``; system groups have events of the same names);
``association_change`` ("Resource bound/unbound to a group") carries ``association.op``
(``add``, ``remove``) and ``association.connection.from`` / ``.to`` (``type``,
``object_id``), as JumpCloud's own dashboard reads them. A user or group event only says which
object changed: the follower reads the object as it is now. An association says everything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from worker.contract.events import GroupRecord, UserRecord

TEXT_MAX = 256  # the contract's optional texts
USER_FIELDS = (  # v1 record field <- systemuser attribute
    ("email", "email"),
    ("firstname", "firstname"),
    ("lastname", "lastname"),
    ("displayname", "displayname"),
    ("employee_id", "employeeIdentifier"),
    ("department", "department"),
)
USER_EVENTS = frozenset(
    {"user_create", "user_update", "user_delete", "user_suspended", "user_unsuspended",
     "user_activated", "user_password_set",
     # the event type named in the Directory Attributes table ("systemuser_update")
     "systemuser_create", "systemuser_update", "systemuser_delete"}
)  # fmt: skip
GROUP_EVENTS = frozenset({"group_create", "group_update", "group_delete"})
ASSOCIATION = "association_change"
EVENT_TYPES = tuple(sorted(USER_EVENTS | GROUP_EVENTS | {ASSOCIATION}))
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class MappingError(ValueError):
    """A JumpCloud object the v1 contract cannot carry; names the object."""


def truthy(value: Any) -> bool | None:
    """A boolean from JSON or from a CSV cell (``True``, ``false``, ``1``, ``""``: None)."""
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def object_id(record: Mapping[str, Any]) -> str:
    """An object's id: ``_id`` (API 1.0, CSV exports), ``id`` (API 2.0)."""
    return str(record.get("_id") or record.get("id") or "").strip()


def user_state(raw: Mapping[str, Any]) -> Literal["active", "suspended"]:
    state = str(raw.get("state") or "").strip().upper()
    if truthy(raw.get("suspended")) or state in ("SUSPENDED", "STAGED"):
        return "suspended"
    if state == "ACTIVATED":
        return "active"
    return "suspended" if truthy(raw.get("activated")) is False else "active"


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def user_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The v1 user record of a system user (optional texts cut at 256 characters); a record
    the contract refuses (no username, an email SCIM applications refuse) is a
    ``MappingError``: the directory is the source of truth, to be fixed there."""
    uid, username = object_id(raw), _text(raw.get("username"))
    record: dict[str, Any] = {"id": uid, "username": username, "state": user_state(raw)}
    for ours, theirs in USER_FIELDS:
        value = _text(raw.get(theirs))
        if value:
            record[ours] = value[:TEXT_MAX]
    try:
        UserRecord(**record)
    except ValidationError as error:  # e.g. an address SCIM applications refuse: fix it there
        raise MappingError(f"user {uid or '(no id)'}: {_reason(error)}") from None
    return record


def group_record(raw: Mapping[str, Any]) -> dict[str, str]:
    """The v1 group record of a user group: ``{"id", "name"}``."""
    record = {"id": object_id(raw), "name": str(raw.get("name") or "").strip()}
    try:
        GroupRecord(**record)
    except ValidationError as error:
        raise MappingError(f"group {record['id'] or '(no id)'}: {_reason(error)}") from None
    return record


def _reason(error: ValidationError) -> str:
    return "; ".join(f"{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


# -- Directory Insights ------------------------------------------------------------------------
EdgeKind = Literal["member", "app_group", "app_user"]


@dataclass(frozen=True)
class ObjectChange:
    """A user or group changed somehow: read it now (gone: deleted)."""

    kind: Literal["user", "group"]
    id: str
    created: bool = False


@dataclass(frozen=True)
class EdgeChange:
    """A membership (group -> user) or an application's association (app -> group or user)."""

    kind: EdgeKind
    source: str  # the group, or the JumpCloud application
    target: str  # the user, or the group
    added: bool


_PAIRS: dict[frozenset[str], tuple[EdgeKind, str, str]] = {
    frozenset({"user_group", "user"}): ("member", "user_group", "user"),
    frozenset({"application", "user_group"}): ("app_group", "application", "user_group"),
    frozenset({"application", "user"}): ("app_user", "application", "user"),
}


def classify(event: Mapping[str, Any]) -> ObjectChange | EdgeChange | None:
    """What an Insights event changed in the directory, or None (not ours, or failed)."""
    kind = str(event.get("event_type") or "")
    if event.get("success") is False:
        return None
    found = event.get("resource")
    resource: Mapping[str, Any] = found if isinstance(found, dict) else {}
    rtype = str(resource.get("type") or "").lower()
    rid = object_id(resource)
    if kind in USER_EVENTS and rid and rtype in ("", "user", "systemuser"):
        return ObjectChange("user", rid, created=kind.endswith("_create"))
    if kind in GROUP_EVENTS and rid and rtype in ("", "user_group", "usergroup"):
        return ObjectChange("group", rid, created=kind.endswith("_create"))
    if kind == ASSOCIATION:
        return _edge(event.get("association"))
    return None


def _edge(association: Any) -> EdgeChange | None:
    if not isinstance(association, dict) or not isinstance(association.get("connection"), dict):
        return None
    added = {"add": True, "remove": False}.get(str(association.get("op") or "").lower())
    ends: dict[str, str] = {}
    for side in ("from", "to"):
        end = association["connection"].get(side)
        if isinstance(end, dict):
            kind = str(end.get("type") or "").lower()
            ends[kind] = str(end.get("object_id") or "").strip() or object_id(end)
    pair = _PAIRS.get(frozenset(ends))
    if added is None or pair is None or not all(ends.values()):
        return None
    edge, source, target = pair
    return EdgeChange(edge, ends[source], ends[target], added)


def event_id(event: Mapping[str, Any]) -> str:
    """The v1 id of what an Insights event becomes: ``jc-<its id>`` (hashed if unfit)."""
    raw = str(event.get("id") or "")
    if _SAFE_ID.match(raw):
        return f"jc-{raw}"
    basis = raw or repr(sorted(event.items()))
    return "jc-h" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def event_time(event: Mapping[str, Any]) -> datetime:
    """An Insights event's ``timestamp`` (RFC 3339, UTC)."""
    moment = datetime.fromisoformat(str(event["timestamp"]))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def object_events(
    change: ObjectChange, current: Mapping[str, Any] | None, eid: str, read_at: datetime
) -> list[dict[str, Any]]:
    """The v1 event for an object read at ``read_at`` (None: 404, deleted since)."""
    stamp = rfc3339(read_at)
    if change.kind == "user":
        if current is None:
            return [_event(eid, "user.deleted", stamp, user_id=change.id)]
        kind = "user.created" if change.created else "user.updated"
        return [_event(eid, kind, stamp, user=user_record(current))]
    if current is None:
        return [_event(eid, "group.deleted", stamp, group_id=change.id)]
    group = group_record(current)
    if change.created:
        return [_event(eid, "group.created", stamp, group=group)]
    return [_event(eid, "group.renamed", stamp, group_id=group["id"], name=group["name"])]


def edge_events(
    change: EdgeChange, apps: Mapping[str, Sequence[str]], eid: str, at: datetime
) -> list[dict[str, Any]]:
    """The v1 events of a membership or association change; an association of an application
    that stands for no app (``apps``: JumpCloud application id -> app ids) gives none."""
    stamp = rfc3339(at)
    if change.kind == "member":
        kind = "group.member_added" if change.added else "group.member_removed"
        return [_event(eid, kind, stamp, group_id=change.source, user_id=change.target)]
    on = "associated" if change.added else "disassociated"
    if change.kind == "app_group":
        return [_event(f"{eid}.{app}", f"app.group_{on}", stamp, app_id=app,
                       group_id=change.target) for app in apps.get(change.source, ())]  # fmt: skip
    return [_event(f"{eid}.{app}", f"app.user_{on}", stamp, app_id=app, user_id=change.target)
            for app in apps.get(change.source, ())]  # fmt: skip


def _event(eid: str, kind: str, stamp: str, **data: Any) -> dict[str, Any]:
    return {"id": eid, "type": kind, "occurred_at": stamp, "data": data}
