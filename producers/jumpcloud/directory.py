"""The directory as snapshot lines: a pure generator, and the API reads that feed it.

Snapshot format (JSON Lines, header first): ``{"kind": "snapshot", "taken_at", "source"}``,
then ``{"kind": "user", "user": <v1 record>}``, ``{"kind": "group", "group": {"id", "name"},
"members": [user ids]}`` and ``{"kind": "app", "app_id", "groups", "users"}``. An ``app`` line
speaks for that app only, so one is written for every ``--app`` and for nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from producers.jumpcloud.api import Client, JumpCloudError, NotFound
from producers.jumpcloud.mapping import group_record, object_id, user_record

Group = tuple[Mapping[str, Any], Iterable[str]]  # a user group and its members' ids
App = tuple[str, Iterable[str], Iterable[str]]  # app id, its groups' ids, its users' ids


def snapshot_lines(
    source: str, taken_at: str, users: Iterable[Mapping[str, Any]], groups: Iterable[Group],
    apps: Iterable[App],
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The header, then one line per user, group (with its members) and app, in that order."""
    yield {"kind": "snapshot", "taken_at": taken_at, "source": source}
    for raw in users:
        yield {"kind": "user", "user": user_record(raw)}
    for raw, members in groups:
        yield {"kind": "group", "group": group_record(raw), "members": _unique(members)}
    for app_id, app_groups, app_users in apps:
        yield {"kind": "app", "app_id": app_id, "groups": _unique(app_groups),
               "users": _unique(app_users)}  # fmt: skip


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def read_groups(client: Client) -> Iterator[Group]:
    """Every user group with its direct members; a group deleted meanwhile is left out."""
    for group in client.groups():
        try:
            members = list(client.group_members(object_id(group)))
        except NotFound:
            continue  # deleted since it was listed: a snapshot without it says so
        yield group, members


def read_apps(client: Client, apps: Mapping[str, str]) -> Iterator[App]:
    """For each app id, the groups and users bound to its JumpCloud application."""
    for app_id, application in apps.items():
        try:
            groups = list(client.app_targets(application, "user_group"))
            users = list(client.app_targets(application, "user"))
        except NotFound:
            raise JumpCloudError(
                f"JumpCloud has no application {application} (--app {app_id}={application})"
            ) from None
        yield app_id, groups, users


def read_snapshot(
    client: Client, source: str, taken_at: str, apps: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """The whole directory through the API, read as the lines are consumed."""
    return snapshot_lines(source, taken_at, client.users(), read_groups(client),
                          read_apps(client, apps))  # fmt: skip
