"""The directory event contract, v1.

Events are strict: unknown fields, wrong types and timestamps without a zone are refused,
and every error names the field that caused it (a JSON pointer such as ``/3/data/user_id``).
A user's email must be an address SCIM applications accept (see ``_check_email``), or empty.
The webhook and ``provisioner replay`` both validate with this module, so they refuse alike.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import email_validator
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.networks import validate_email

# Ids become parts of Redis keys and reconcile keys: no whitespace or control characters (the
# separator of reconcile keys), no glob characters (SCAN patterns), no braces (cluster hash
# tags), no quotes or backslashes.
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r'^[^\s\x00-\x1f\x7f*?\[\]{}"\\]+$'),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
OptionalText = Annotated[str, StringConstraints(max_length=256)] | None


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(5138, 11, 16, 9, 46, 39, 999999, tzinfo=UTC)  # 10**17 - 1 µs: 17 digits of `v`
RANGE = "it must fall within 1970-01-01T00:00:00Z and 5138-11-16T09:46:39Z"


def _require_zone(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a zone (RFC 3339), e.g. 2026-11-28T17:50:51Z")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00:00-05:00 is in year 10000 in UTC
        raise ValueError(f"timestamp out of range: {RANGE}") from None
    if not EARLIEST <= moment <= LATEST:  # the version `v` orders as a 17-digit string
        raise ValueError(f"timestamp out of range: {RANGE}")
    return moment


RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?"
)  # the zone is checked after parsing, with its own message


def _require_text(value: Any) -> Any:
    """An RFC 3339 string (or a datetime, from code): never a number nor a number in a string,
    which pydantic would read as Unix time although the contract says RFC 3339."""
    if isinstance(value, str) and not RFC3339.fullmatch(value):
        raise ValueError(
            "timestamp must be RFC 3339 (date, time with seconds, zone), e.g. 2026-11-28T17:50:51Z"
        )
    if isinstance(value, int | float):
        raise ValueError("timestamp must be an RFC 3339 string, e.g. 2026-11-28T17:50:51Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_require_text), AfterValidator(_require_zone)]


# A plain ASCII address (dot-separated atoms @ host labels, a letter TLD) that email-validator
# always accepts: checked by this regex in a microsecond rather than 20 (the receiver's hot
# path). Anything else goes to email-validator itself, and so do labels with "--" (Punycode,
# R-LDH) and the special-use domains email-validator refuses (its own list).
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})"
)
_SPECIAL_USE = [d.lower() for d in email_validator.SPECIAL_USE_DOMAIN_NAMES]
_SPECIAL_USE_TLDS = frozenset(d for d in _SPECIAL_USE if "." not in d)
_SPECIAL_USE_SUFFIXES = tuple(p + d for d in _SPECIAL_USE if "." in d for p in ".@")


def plainly_an_email(value: str) -> bool:
    """True for a plain ASCII address that email-validator accepts without a doubt."""
    match = _PLAIN_EMAIL.fullmatch(value) if len(value) <= 254 else None
    if not match or match.group(1).lower() in _SPECIAL_USE_TLDS:
        return False
    domain = value[value.index("@") :].lower()  # "@x.y": ends with "@d" when it is d
    return "--" not in domain and not domain.endswith(_SPECIAL_USE_SUFFIXES)


def _check_email(value: str) -> str:
    """An address SCIM applications accept, checked as scim2-models checks ``emails.value``
    (pydantic's ``EmailStr``: email-validator's syntax rules, no DNS look-up), so that the
    SCIM client never refuses what the door accepted; kept as written. Empty: no email."""
    if value and not plainly_an_email(value):
        validate_email(value)  # raises PydanticCustomError: "value is not a valid email ..."
    return value


Email = Annotated[str, StringConstraints(max_length=256), AfterValidator(_check_email)] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class UserRecord(_Strict):
    id: Id
    username: Name
    email: Email = None
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


class MalformedJSON(ValueError):
    """A body or line that is not JSON; the message says why, without a "malformed" prefix."""


def _no_constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def load_json(raw: bytes | str) -> Any:
    """Decode a JSON document; ``MalformedJSON`` for anything that is not UTF-8 JSON.

    Refused, each with its reason: bytes that are not UTF-8 (UTF-16 and UTF-32 included;
    a leading UTF-8 byte order mark is ignored, as RFC 8259 allows), syntax errors, NaN and
    Infinity, numbers of more digits than Python converts, and nesting deeper than the parser
    goes (about 1,000 levels; an event is 4 deep).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"the body is not UTF-8 (byte {error.start}: {error.reason})"
            raise MalformedJSON(reason) from None
    else:
        text = raw
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise MalformedJSON(str(error)) from None
    except RecursionError:
        raise MalformedJSON("JSON nested too deep (an event is 4 levels deep)") from None
    except MalformedJSON:
        raise
    except ValueError:  # int() of more digits than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        raise MalformedJSON(f"a number has more than {limit} digits") from None


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
        document = load_json(raw)
    except MalformedJSON as error:
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


def version(event: Event) -> str:
    """``"<µs since epoch, 17 digits> <id>"``: compares as (occurred_at, id)."""
    return f"{epoch_micros(event.occurred_at):017d} {event.id}"
