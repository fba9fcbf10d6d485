"""JSON Schemas of the two contracts, generated from their pydantic models.

- ``docs/events.schema.json``: what producers send (``worker.contract.events``), one event or
  an array of events, the event types a discriminated union on ``type``;
- ``docs/snapshot.schema.json``: one line of a snapshot (``worker.contract.snapshot``), the
  line kinds a discriminated union on ``kind``.

``python -m worker.contract.schema --write`` (``make schema``) writes both; ``--check`` exits 1
naming each file that differs from what the models generate now.

The schemas describe the shape (fields, types, lengths, patterns, closed objects). Two rules
are checked by the models only and stated in the descriptions: an email address must be one
SCIM applications accept, and a timestamp must carry a zone (``format: date-time`` says so,
but validators check formats only when asked). The models of ``events.py`` carry no
descriptions of their own, so they are given here; generation fails for a model or a field
without one, so that a new field cannot go undescribed.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from worker.contract import events, snapshot

ROOT = Path(__file__).resolve().parents[2]
EVENTS_SCHEMA = ROOT / "docs" / "events.schema.json"
SNAPSHOT_SCHEMA = ROOT / "docs" / "snapshot.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ID = (
    "1 to 128 characters, without whitespace, control characters, `*`, `?`, `[`, `]`, `{`, "
    '`}`, `"` or `\\`'
)
_TEXT = "At most 256 characters; null, or left out: none"

# Per model: (its description, {field: description}). Fields of every event model are in
# EVENT_FIELDS; a model's own docstring or a field's own description wins over these.
MODELS: dict[str, tuple[str, dict[str, str]]] = {
    "UserUpsert": (
        "`user.created` or `user.updated` (the same effect): the user's whole record, which "
        "replaces the one held (a field left out is cleared), and its state.",
        {},
    ),
    "UserStateChange": (
        "`user.suspended` or `user.activated`: the user's state only; the record is kept.",
        {},
    ),
    "UserDeleted": (
        "`user.deleted`: terminal; later events about the user are ignored, whatever their "
        "version.",
        {},
    ),
    "GroupCreated": ("`group.created`: a group and its name.", {}),
    "GroupRenamed": ("`group.renamed`: a group's new name.", {}),
    "GroupDeleted": (
        "`group.deleted`: terminal; later events about the group are ignored, whatever their "
        "version.",
        {},
    ),
    "MembershipChange": (
        "`group.member_added` or `group.member_removed`: one user's membership of one group.",
        {},
    ),
    "AppGroupChange": (
        "`app.group_associated` or `app.group_disassociated`: a group associated with an "
        "application (its members are provisioned) or no longer.",
        {},
    ),
    "AppUserChange": (
        "`app.user_associated` or `app.user_disassociated`: a user associated with an "
        "application directly, or no longer.",
        {},
    ),
    "UserData": ("The `data` of `user.created` and `user.updated`.", {"user": "The record."}),
    "UserRef": (
        "The `data` of `user.suspended`, `user.activated` and `user.deleted`.",
        {"user_id": f"The user's id: {_ID}."},
    ),
    "GroupData": ("The `data` of `group.created`.", {"group": "The group."}),
    "GroupRef": ("The `data` of `group.deleted`.", {"group_id": f"The group's id: {_ID}."}),
    "GroupRename": (
        "The `data` of `group.renamed`.",
        {"group_id": f"The group's id: {_ID}.", "name": "The new name, 1 to 128 characters."},
    ),
    "Membership": (
        "The `data` of `group.member_added` and `group.member_removed`.",
        {"group_id": f"The group's id: {_ID}.", "user_id": f"The user's id: {_ID}."},
    ),
    "AppGroup": (
        "The `data` of `app.group_associated` and `app.group_disassociated`.",
        {
            "app_id": f"The application's id in the provisioner (`provisioner apps`): {_ID}.",
            "group_id": f"The group's id: {_ID}.",
        },
    ),
    "AppUser": (
        "The `data` of `app.user_associated` and `app.user_disassociated`.",
        {
            "app_id": f"The application's id in the provisioner (`provisioner apps`): {_ID}.",
            "user_id": f"The user's id: {_ID}.",
        },
    ),
    "UserRecord": (
        "A user's whole record. Optional fields that are null, empty or left out are not sent "
        "to the applications.",
        {
            "id": f"The user's id in the directory: {_ID}.",
            "username": "The login name (SCIM `userName`), 1 to 256 characters.",
            "email": "The work email (SCIM `emails`): an address SCIM applications accept "
            "(email-validator's syntax, no DNS look-up), at most 256 characters, kept as "
            'written; "", null, or left out: none.',
            "firstname": f"SCIM `name.givenName`. {_TEXT}.",
            "lastname": f"SCIM `name.familyName`. {_TEXT}.",
            "displayname": f"SCIM `displayName`. {_TEXT}.",
            "employee_id": f"SCIM `externalId`. {_TEXT}.",
            "department": f"SCIM enterprise extension `department`. {_TEXT}.",
            "state": "`active`, or `suspended` (deactivated in the applications).",
        },
    ),
    "GroupRecord": (
        "A group.",
        {"id": f"The group's id in the directory: {_ID}.", "name": "1 to 128 characters."},
    ),
}
EVENT_FIELDS = {
    "id": f"The event's id, unique to the event (a second event with the same id is a duplicate "
    f"and dropped): {_ID}. With `occurred_at`, it orders events (last writer wins).",
    "occurred_at": "When the change happened in the directory: an RFC 3339 timestamp with a "
    "zone (`Z` or an offset), kept in UTC to the microsecond; events are ordered by it, then "
    "by id.",
    "type": "The event type; it decides the shape of `data`.",
    "data": "What changed, by event type.",
}
SNAPSHOT_FIELDS = {
    "kind": "The kind of line: `snapshot` (the header), `user`, `group` or `app`.",
    "user": "The user's whole record, as in `user.created`.",
    "group": "The group, as in `group.created`.",
}


def event_models() -> list[type[BaseModel]]:
    """The models of the event types, in the order of ``events.Event``."""
    union = typing.get_args(events.Event)[0]
    return list(typing.get_args(union))


def _describe(defs: dict[str, Any], fields: dict[str, dict[str, str]]) -> None:
    """Add the descriptions of ``MODELS`` and ``fields`` (per model) where pydantic has none;
    raise ``ValueError`` naming whatever is left without one."""
    missing = []
    for name, definition in defs.items():
        description, own_fields = MODELS.get(name, ("", {}))
        if description:
            definition.setdefault("description", description)
        for field, prop in definition.get("properties", {}).items():
            text = own_fields.get(field) or fields.get(name, {}).get(field)
            if text:
                prop.setdefault("description", text)
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
        if not definition.get("description"):
            missing.append(name)
    if missing:
        raise ValueError(f"no description for {', '.join(missing)}: add one to the model")


def _plain(value: Any) -> Any:
    """The schema with reStructuredText's ``double backticks`` made Markdown's."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return value.replace("``", "`")
    return value


def events_schema() -> dict[str, Any]:
    """The JSON Schema of a request body (or a replay file's array): an event or events."""
    union = events.EVENT.json_schema()
    defs = union.pop("$defs")
    _describe(defs, {model.__name__: EVENT_FIELDS for model in event_models()})
    defs["Event"] = {
        "title": "Event",
        "description": "One event: its `type` says which of these it is (a discriminated "
        "union: the shape of `data` follows from `type`).",
        **union,
    }
    return _plain({
        "$schema": DIALECT,
        "title": "Directory events, contract v1",
        "description": "What producers send: one event, or an array of events (refused whole "
        "if any is invalid). The webhook `POST /v1/events` takes up to 1,000 events and 1 MiB "
        "a request; `provisioner replay` also reads JSON Lines, one event a line. Field "
        "semantics, ordering and errors: docs/events.md.",
        "oneOf": [
            {"$ref": "#/$defs/Event"},
            {"type": "array", "title": "Events", "items": {"$ref": "#/$defs/Event"}},
        ],
        "$defs": defs,
    })  # fmt: skip


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema of one line of a snapshot."""
    union = snapshot.LINE.json_schema()
    defs = union.pop("$defs")
    line_models = ("Header", "UserLine", "GroupLine", "AppLine")
    _describe(defs, {name: SNAPSHOT_FIELDS for name in line_models})
    return _plain({
        "$schema": DIALECT,
        "title": "Directory snapshot line, format v1",
        "description": "One line of a full-state snapshot (JSON Lines, UTF-8): the first line "
        "is the header, the only one; users, groups and apps follow in any order, each id on "
        "one line only. The lines' `kind` says which of these a line is (a discriminated "
        "union). The format and its rules: docs/snapshot.md.",
        **union,
        "$defs": defs,
    })  # fmt: skip


def rendered() -> dict[Path, str]:
    """Each schema file and the text the models generate for it now."""
    schemas = {EVENTS_SCHEMA: events_schema(), SNAPSHOT_SCHEMA: snapshot_schema()}
    return {path: json.dumps(s, indent=2, ensure_ascii=False) + "\n" for path, s in schemas.items()}


def stale() -> list[Path]:
    """The schema files that differ from what the models generate (missing ones included)."""
    found = []
    for path, text in rendered().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            found.append(path)
    return found


def _shown(path: Path) -> str:
    """The path from the repository's root when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.contract.schema --write | --check``."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.contract.schema",
        description="Write or check the JSON Schemas of the event contract and the snapshot "
        "format (docs/*.schema.json).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the schema files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a schema file is stale")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in rendered().items():
            path.write_text(text, encoding="utf-8")
            print(f"wrote {_shown(path)}")
        return 0
    outdated = stale()
    for path in outdated:
        print(f"{_shown(path)} is stale: run make schema", file=sys.stderr)
    return 1 if outdated else 0


if __name__ == "__main__":
    sys.exit(main())
