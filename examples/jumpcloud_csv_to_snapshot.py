"""Turn a JumpCloud CSV export of users into a directory snapshot for `provisioner snapshot`.

    python examples/jumpcloud_csv_to_snapshot.py JumpCloudUsers.CSV \\
        [--group-members JumpCloudUserGroupMembers.CSV] [--app APP=GROUP_NAME]... \\
        [--source jumpcloud:csv] [--taken-at 2026-11-29T06:00:00Z] > snapshot.jsonl
    provisioner snapshot snapshot.jsonl --dry-run

The export is the one JumpCloud's PowerShell module writes: ``Get-JCBackup -Users``
(``JumpCloudUsers_<date>.CSV``), or ``Get-JCUser | Export-Csv`` with the properties you
choose (https://github.com/TheJumpCloud/support/wiki/Get-JCBackup). Its columns are the
system user's API attribute names; these are read, the others ignored:

| column | becomes | note |
|---|---|---|
| ``_id`` | ``id`` | required: the user's JumpCloud id (``id`` is accepted too) |
| ``username`` | ``username`` | required |
| ``email``, ``firstname``, ``lastname``, ``displayname``, ``department`` | the same | optional |
| ``employeeIdentifier`` | ``employee_id`` | optional |
| ``state``, ``suspended``, ``activated`` | ``state`` | ``suspended`` if suspended or ``STAGED`` |

``--group-members`` reads ``Get-JCBackup -UserGroups``'s ``JumpCloudUserGroupMembers_<date>.CSV``
(columns ``GroupName``, ``Username``, ``UserID``). That file names groups, not their ids, so
a group's id is derived from its name (``jcg-`` and a hash): a renamed group is a new group.
``--app APP=GROUP_NAME`` (repeatable) writes APP's line: the groups associated with it.

A snapshot is the whole directory: whatever it lacks is deleted when it is published (the
deletion guard holds large deletions). Without ``--group-members`` it has no groups, so the
groups the pool holds would be deleted: give both files, or use ``provisioner jumpcloud sync``,
which reads everything through the API. Do not mix the two for one directory: the API gives
groups their JumpCloud ids. Nothing is written unless the whole file converts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.jumpcloud.directory import snapshot_lines  # noqa: E402
from producers.jumpcloud.mapping import MappingError  # noqa: E402

REQUIRED = ("username",)
MEMBER_COLUMNS = ("GroupName", "UserID")


class ExportError(ValueError):
    pass


def group_id(name: str) -> str:
    return "jcg-" + hashlib.sha256(name.encode()).hexdigest()[:20]


def users(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a users export, checked for the required columns first."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED if c not in columns]
        if not columns & {"_id", "id"}:
            missing.insert(0, "_id")
        if missing:
            raise ExportError(f"{path}: missing column(s) {', '.join(missing)}")
        yield from reader


def memberships(path: Path | None) -> dict[str, list[str]]:
    """Group name -> member user ids, from a group members export."""
    groups: dict[str, list[str]] = {}
    if path is None:
        return groups
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MEMBER_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ExportError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            members = groups.setdefault(row["GroupName"].strip(), [])
            if row["UserID"].strip():
                members.append(row["UserID"].strip())
    return groups


def write_snapshot(args: argparse.Namespace, out: object) -> int:
    groups = memberships(args.group_members)
    apps = []
    for app_id, name in args.app:
        if name not in groups:
            raise ExportError(f"--app {app_id}={name}: no group {name!r} in --group-members")
        apps.append((app_id, [group_id(name)], []))
    lines = snapshot_lines(
        args.source, args.taken_at, users(args.users),
        [({"id": group_id(name), "name": name}, members) for name, members in groups.items()],
        apps,
    )  # fmt: skip
    count = 0
    try:
        for line in lines:
            out.write(json.dumps(line) + "\n")  # type: ignore[attr-defined]
            count += 1
    except MappingError as error:
        raise ExportError(f"{args.users}: {error}") from None
    return count


def parse_app(text: str) -> tuple[str, str]:
    app_id, sep, name = text.partition("=")
    if not sep or not app_id or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected APP=GROUP_NAME")
    return app_id, name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("users", type=Path, help="the users export (JumpCloudUsers_<date>.CSV)")
    p.add_argument("--group-members", type=Path, metavar="FILE",
                   help="the group members export (JumpCloudUserGroupMembers_<date>.CSV)")  # fmt: skip
    p.add_argument("--app", type=parse_app, action="append", default=[], metavar="APP=GROUP",
                   help="a group associated with APP (repeatable)")  # fmt: skip
    p.add_argument("--source", default="jumpcloud:csv", help="the header's source")
    p.add_argument("--taken-at", default=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   help="when the export was made, RFC 3339 (default: now)")  # fmt: skip
    args = p.parse_args(argv)
    # Converted whole into a temporary file first: a partial snapshot would delete the rest.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        try:
            lines = write_snapshot(args, spool)
        except (ExportError, OSError) as error:
            print(f"error: {error}; nothing written", file=sys.stderr)
            return 1
        spool.seek(0)
        shutil.copyfileobj(spool, sys.stdout)
    print(f"{lines} snapshot lines written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
