"""The snapshot format, v1: the lines of a full-state directory snapshot (``docs/snapshot.md``,
its JSON Schema ``docs/snapshot.schema.json``). Strict pydantic models, as strict as the event
contract (unknown fields, wrong types and timestamps without a zone are refused), and a parser
that names the line and the field of every problem.

A snapshot is JSON Lines: the header first, then users, groups and apps in any order::

    {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z", "source": "jumpcloud:org-123"}
    {"kind": "user", "user": {"id": "u-7", "username": "ann", "state": "active"}}
    {"kind": "group", "group": {"id": "g-42", "name": "Sales"}, "members": ["u-7"]}
    {"kind": "app", "app_id": "zscaler", "groups": ["g-42"], "users": []}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from worker.contract.events import GroupRecord, Id, Name, Timestamp, UserRecord

KINDS = ("snapshot", "user", "group", "app")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Header(_Strict):
    """The first line, and the only header: when the directory was read and from where."""

    kind: Literal["snapshot"]
    # Strict mode refuses strings for datetimes in Python input; parsed in lax mode, as events.
    taken_at: Annotated[
        Timestamp,
        Field(
            strict=False,
            description="When the directory was read (RFC 3339 with a zone): the `occurred_at` "
            "of every derived event.",
        ),
    ]
    source: Annotated[
        Name,
        Field(
            description="Where the snapshot comes from (`jumpcloud:org-123`): part of every "
            "derived event's id."
        ),
    ]


class UserLine(_Strict):
    """One user: the whole record, as in `user.created`."""

    kind: Literal["user"]
    user: UserRecord


# Every id once in a list (``parse_line`` refuses a repeated one).
_IdList = Annotated[list[Id], Field(json_schema_extra={"uniqueItems": True})]


class GroupLine(_Strict):
    """One group and all of its members."""

    kind: Literal["group"]
    group: GroupRecord
    members: Annotated[
        _IdList, Field(description="All the group's members (user ids); [] for none.")
    ]


class AppLine(_Strict):
    """An application's associations, all of them: the groups and the users associated
    directly. An app without a line keeps its associations."""

    kind: Literal["app"]
    app_id: Annotated[Id, Field(description="The application, as events name it (`app_id`).")]
    groups: Annotated[_IdList, Field(description="All the groups associated with the app.")]
    users: Annotated[_IdList, Field(description="All the users associated with the app directly.")]


Line = Annotated[Header | UserLine | GroupLine | AppLine, Field(discriminator="kind")]
Body = UserLine | GroupLine | AppLine
LINE = TypeAdapter(Line)


def pointer(loc: tuple[Any, ...]) -> str:
    """A JSON pointer from a pydantic location (``("user", "id")`` -> ``/user/id``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """``(pointer, reason)`` of each problem of a line refused by ``LINE``."""
    found = []
    for item in error.errors(include_url=False):
        loc, reason = tuple(item["loc"]), item["msg"]
        kind = item["type"]
        if kind == "union_tag_invalid":
            loc, reason = ("kind",), "unknown line kind; expected one of " + ", ".join(KINDS)
        elif kind == "union_tag_not_found":
            loc, reason = ("kind",), "missing field"
        elif kind == "json_invalid":
            reason = f"malformed JSON: {reason}"
        elif kind in ("dict_type", "model_type"):
            reason = "one JSON object per line"
        else:
            loc = loc[1:]  # the first step is the discriminator's value, not a field
            if kind == "extra_forbidden":
                reason = "unknown field"
        found.append((pointer(loc), reason))
    return found


def repeated(values: list[str]) -> list[int]:
    """Indexes of the values already seen earlier in the list."""
    seen: set[str] = set()
    again = []
    for index, value in enumerate(values):
        if value in seen:
            again.append(index)
        seen.add(value)
    return again


def parse_line(raw: str | bytes | dict[str, Any]) -> tuple[Header | Body | None, list[str]]:
    """One line, validated: the model, or None and the problems (``"/pointer: reason"``)."""
    try:
        line = LINE.validate_python(raw) if isinstance(raw, dict) else LINE.validate_json(raw)
    except ValidationError as error:
        return None, [f"{p or '/'}: {reason}" for p, reason in problems(error)]
    lists = {
        GroupLine: ("members",),
        AppLine: ("groups", "users"),
    }.get(type(line), ())
    found = [
        f"/{name}/{i}: duplicate of an earlier item"
        for name in lists
        for i in repeated(getattr(line, name))
    ]
    return (None, found) if found else (line, [])


def place_problem(number: int, line: Header | Body | None, first: bool) -> str | None:
    """Why a valid line is out of place: the header is the first line, and the only one."""
    if first and line is not None and not isinstance(line, Header):
        return (
            f'line {number}: /kind: the first line must be the header {{"kind": "snapshot", '
            '"taken_at": ..., "source": ...}'
        )
    if not first and isinstance(line, Header):
        return f"line {number}: /kind: a second header (the header is the first line only)"
    return None


def is_blank(raw: str | bytes | dict[str, Any]) -> bool:
    return not isinstance(raw, dict) and not raw.strip()


def taken_at_text(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as derived events carry it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
