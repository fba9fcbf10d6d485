"""The group-management rules of the integration article, as pure functions.

Given what the directory says now (facts) and what the application holds (mirror), they say
what the application should hold. They never look at history: the same facts give the same
answer whatever order the events arrived in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.contract.model import AppSettings, GroupFacts, MirrorGroup, MirrorUser, UserFacts

# SCIM attribute (flat, as the article's table names it) -> directory property.
USER_MAPPING: dict[str, str] = {
    "userName": "username",
    "name.givenName": "firstname",
    "name.familyName": "lastname",
    "displayName": "displayname",
    "emails": "email",
    "externalId": "employee_id",
    "department": "department",
}
REQUIRED_ATTRIBUTES = frozenset({"userName", "active"})
OPTIONAL_ATTRIBUTES = tuple(a for a in USER_MAPPING if a not in REQUIRED_ATTRIBUTES)


def is_covered(facts: UserFacts) -> bool:
    """Covered: not deleted, and associated directly or through an associated, live group."""
    return not facts.user.deleted and (facts.directly_associated or bool(facts.covering_groups))


def user_attributes(
    record: Mapping[str, Any], suspended: bool, excluded: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The flat SCIM attributes of a directory user; a missing optional value is ``None``."""
    attributes: dict[str, Any] = {
        attribute: record.get(prop) or None
        for attribute, prop in USER_MAPPING.items()
        if attribute not in excluded or attribute in REQUIRED_ATTRIBUTES
    }
    attributes["active"] = not suspended
    return attributes


@dataclass(frozen=True)
class Provision:
    """Present in the application with these attributes."""

    attributes: dict[str, Any]


@dataclass(frozen=True)
class Deprovision:
    """Deactivated (``active: false``), everything else left as it is."""

    reason: str


@dataclass(frozen=True)
class Delete:
    """Deleted in the application (falls back to deactivation where the app refuses)."""

    reason: str


@dataclass(frozen=True)
class Leave:
    """Nothing to do."""

    reason: str


UserIntent = Provision | Deprovision | Delete | Leave


def user_intent(facts: UserFacts, mirror: MirrorUser | None, app: AppSettings) -> UserIntent:
    user = facts.user
    if user.deleted:
        if mirror is None:
            return Leave("deleted in the directory, never provisioned")
        if app.user_delete_policy == "delete":
            return Delete("deleted in the directory")
        return Deprovision("deleted in the directory")
    if is_covered(facts):
        if user.record is None:
            return Leave("covered, but the directory has not sent the user's record yet")
        return Provision(user_attributes(user.record, user.suspended, app.excluded_attributes))
    if mirror is None:
        return Leave("not covered: users are implicitly denied")
    return Deprovision("no longer covered by a direct association or an associated group")


@dataclass(frozen=True)
class SyncGroup:
    """Managed: this name and exactly these members (directory id -> remote id)."""

    name: str
    members: dict[str, str]


@dataclass(frozen=True)
class DeleteGroup:
    reason: str


GroupIntent = SyncGroup | DeleteGroup | Leave


def group_intent(
    facts: GroupFacts,
    mirror: MirrorGroup | None,
    member_remote_ids: Mapping[str, str | None],
    app: AppSettings,
) -> GroupIntent:
    """``member_remote_ids`` maps each current member to its id in the app (None: not there)."""
    if not app.group_management:
        return Leave("group management is disabled: groups are left as they are")
    if facts.deleted:
        if mirror is None:
            return Leave("deleted in the directory, never created in the application")
        # We created or took over this group: the directory says it no longer exists.
        return DeleteGroup("deleted in the directory")
    if not facts.associated:
        return Leave("not associated with the application: left as it is")
    if facts.name is None:
        return Leave("associated, but the directory has not sent the group's name yet")
    members = {
        user_id: remote_id
        for user_id in facts.members
        if (remote_id := member_remote_ids.get(user_id)) is not None
    }
    if mirror is None and not members:
        return Leave("empty groups are not created")
    return SyncGroup(facts.name, members)
