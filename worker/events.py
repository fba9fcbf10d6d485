"""The directory event contract, v1 (DESIGN §2).

Events are strict: unknown fields, wrong types and timestamps without a zone are refused,
and every error names the field that caused it (a JSON pointer such as ``/3/data/user_id``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

# Ids become parts of Redis keys and reconcile keys: no whitespace or control characters (the
# separator of reconcile keys), no glob characters (SCAN patterns), no braces (cluster hash
# tags), no quotes or backslashes.
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r'^[^\s\x00-\x1f\x7f*?\[\]{}"\\]+$'),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
OptionalText = Annotated[str, StringConstraints(max_length=256)] | None


def _require_zone(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a zone (RFC 3339), e.g. 2026-11-28T17:50:51Z")
    return value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(_require_zone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UserRecord(_Strict):
    id: Id
    username: Name
    email: OptionalText = None
    firstname: OptionalText = None
    lastname: OptionalText = None
    displayname: OptionalText = None
    employee_id: OptionalText = None
    department: OptionalText = None
    state: Literal["active", "suspended"]


class GroupRecord(_Strict):
    id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class UserData(_Strict):
    user: UserRecord


class UserRef(_Strict):
    user_id: Id


class GroupData(_Strict):
    group: GroupRecord


class GroupRef(_Strict):
    group_id: Id


class GroupRename(_Strict):
    group_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Membership(_Strict):
    group_id: Id
    user_id: Id


class AppGroup(_Strict):
    app_id: Id
    group_id: Id


class AppUser(_Strict):
    app_id: Id
    user_id: Id


class _Event(_Strict):
    id: Id
    # Strict mode refuses strings for datetimes; JSON input is parsed in lax mode for this field.
    occurred_at: Annotated[Timestamp, Field(strict=False)]

    @property
    def version(self) -> tuple[int, str]:
        """The last-writer-wins version of the event: (microseconds since epoch, id)."""
        return (epoch_micros(self.occurred_at), self.id)


class UserUpsert(_Event):
    type: Literal["user.created", "user.updated"]
    data: UserData


class UserStateChange(_Event):
    type: Literal["user.suspended", "user.activated"]
    data: UserRef


class UserDeleted(_Event):
    type: Literal["user.deleted"]
    data: UserRef


class GroupCreated(_Event):
    type: Literal["group.created"]
    data: GroupData


class GroupRenamed(_Event):
    type: Literal["group.renamed"]
    data: GroupRename


class GroupDeleted(_Event):
    type: Literal["group.deleted"]
    data: GroupRef


class MembershipChange(_Event):
    type: Literal["group.member_added", "group.member_removed"]
    data: Membership


class AppGroupChange(_Event):
    type: Literal["app.group_associated", "app.group_disassociated"]
    data: AppGroup


class AppUserChange(_Event):
    type: Literal["app.user_associated", "app.user_disassociated"]
    data: AppUser


Event = Annotated[
    UserUpsert
    | UserStateChange
    | UserDeleted
    | GroupCreated
    | GroupRenamed
    | GroupDeleted
    | MembershipChange
    | AppGroupChange
    | AppUserChange,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[str, ...] = (
    "user.created",
    "user.updated",
    "user.suspended",
    "user.activated",
    "user.deleted",
    "group.created",
    "group.renamed",
    "group.deleted",
    "group.member_added",
    "group.member_removed",
    "app.group_associated",
    "app.group_disassociated",
    "app.user_associated",
    "app.user_disassociated",
)

EVENT = TypeAdapter(Event)
_many = TypeAdapter(list[Event])


class EventError(ValueError):
    """Refused input. ``problems`` lists ``{"pointer", "reason"}`` pairs, one per bad field."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p['pointer'] or '/'}: {p['reason']}" for p in problems))


def _pointer(loc: tuple[Any, ...], prefix: tuple[Any, ...] = ()) -> str:
    # pydantic inserts the discriminator's value ("user.created") as a step of the location;
    # it is not a field of the document, so it is dropped from the pointer.
    parts = [str(p) for p in (*prefix, *loc) if not (isinstance(p, str) and p in EVENT_TYPES)]
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _problems(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, str]]:
    problems = []
    for item in error.errors(include_url=False):
        reason = item["msg"]
        loc = tuple(item["loc"])
        if item["type"] == "union_tag_invalid":
            reason = "unknown event type; expected one of " + ", ".join(EVENT_TYPES)
            loc = (*loc, "type")
        elif item["type"] == "union_tag_not_found":
            reason = "missing field"
            loc = (*loc, "type")
        elif item["type"] == "extra_forbidden":
            reason = "unknown field"
        problems.append({"pointer": _pointer(loc, prefix), "reason": reason})
    return problems


def parse_event(document: Any) -> Event:
    """Validate one decoded JSON document as an event."""
    try:
        return EVENT.validate_python(document)
    except ValidationError as error:
        raise EventError(_problems(error)) from None


def parse_documents(documents: list[Any]) -> list[Event]:
    """Validate decoded JSON documents as events, in one pass; pointers start with the index."""
    try:
        return _many.validate_python(documents)
    except ValidationError as error:
        raise EventError(_problems(error)) from None


def parse_events(raw: bytes | str) -> list[Event]:
    """Validate a JSON document holding one event or an array of events.

    The whole document is refused if any event is invalid.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise EventError([{"pointer": "", "reason": f"malformed JSON: {error}"}]) from None
    if isinstance(document, list):
        try:
            return _many.validate_python(document)
        except ValidationError as error:
            raise EventError(_problems(error)) from None
    return [parse_event(document)]


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch, the ordering part of an event's version."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
