"""Planning: the fewest SCIM calls that take the application from the mirror to the intent.

Pure functions. A plan is a list of calls; the executor runs them in order, records each
outcome in the mirror and plans again after a lookup (whose answer changes the plan).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim.profiles import Profile
from worker.sync.rules import (
    Delete,
    DeleteGroup,
    Deprovision,
    GroupIntent,
    Leave,
    Provision,
    SyncGroup,
    UserIntent,
)


# -- user calls ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LookupUser:
    user_name: str


@dataclass(frozen=True)
class CreateUser:
    attributes: dict[str, Any]


@dataclass(frozen=True)
class UpdateUser:
    remote_id: str
    changes: dict[str, Any]  # only what differs; None clears an attribute
    full: dict[str, Any]  # the whole resource, for applications that only take PUT


@dataclass(frozen=True)
class SetActive:
    remote_id: str
    active: bool
    full: dict[str, Any]


@dataclass(frozen=True)
class DeleteUser:
    remote_id: str


# -- group calls --------------------------------------------------------------------------
@dataclass(frozen=True)
class LookupGroup:
    display_name: str


@dataclass(frozen=True)
class CreateGroup:
    display_name: str
    members: dict[str, str]  # directory id -> remote id (at most one PATCH's worth)


@dataclass(frozen=True)
class RenameGroup:
    remote_id: str
    display_name: str


@dataclass(frozen=True)
class PatchMembers:
    remote_id: str
    add: dict[str, str]
    remove: dict[str, str]


@dataclass(frozen=True)
class ReplaceGroup:
    remote_id: str
    display_name: str
    members: dict[str, str]


@dataclass(frozen=True)
class RemoveGroup:
    remote_id: str


Call = (
    LookupUser
    | CreateUser
    | UpdateUser
    | SetActive
    | DeleteUser
    | LookupGroup
    | CreateGroup
    | RenameGroup
    | PatchMembers
    | ReplaceGroup
    | RemoveGroup
)


def attribute_changes(
    desired: Mapping[str, Any],
    held: Mapping[str, Any],
    normalized: Mapping[str, tuple[Any, Any]] | None = None,
) -> dict[str, Any]:
    """Attributes whose desired value differs from what the application holds.

    An attribute never sent and now empty is not a change; an excluded attribute (absent
    from ``desired``) is neither sent nor cleared; a value the app is known to store in its
    own form (``normalized``: attribute -> (sent, held)) is not sent again.
    """
    normalized = normalized or {}
    return {
        attribute: value
        for attribute, value in desired.items()
        if held.get(attribute) != value
        and not (value is None and attribute not in held)
        and normalized.get(attribute) != (value, held.get(attribute))
    }


def holds_name(name: str, mirror: MirrorGroup) -> bool:
    """Whether the group is called ``name`` in the app, in the app's own form of it."""
    return name == mirror.display_name or mirror.normalized.get("displayName") == (
        name,
        mirror.display_name,
    )


def full_resource(desired: Mapping[str, Any], sent: Mapping[str, Any]) -> dict[str, Any]:
    """The whole resource for a PUT: what we hold, overlaid with what we want."""
    return {k: v for k, v in {**sent, **desired}.items() if v is not None}


def plan_user(
    intent: UserIntent, mirror: MirrorUser | None, profile: Profile, *, looked_up: bool = False
) -> list[Call]:
    match intent:
        case Leave():
            return []
        case Provision(attributes=desired):
            if mirror is None:
                if profile.filter_supported and not looked_up:
                    return [LookupUser(desired["userName"])]
                return [CreateUser({k: v for k, v in desired.items() if v is not None})]
            changes = attribute_changes(desired, mirror.attributes, mirror.normalized)
            if not changes:
                return []
            full = full_resource(desired, mirror.attributes)
            if set(changes) == {"active"}:
                return [SetActive(mirror.remote_id, changes["active"], full)]
            return [UpdateUser(mirror.remote_id, changes, full)]
        case Deprovision():
            if mirror is None or mirror.attributes.get("active") is False:
                return []
            full = full_resource({"active": False}, mirror.attributes)
            return [SetActive(mirror.remote_id, False, full)]
        case Delete():
            return [] if mirror is None else [DeleteUser(mirror.remote_id)]
    raise TypeError(f"unknown intent {intent!r}")


def plan_group(
    intent: GroupIntent, mirror: MirrorGroup | None, profile: Profile, *, looked_up: bool = False
) -> list[Call]:
    match intent:
        case Leave():
            return []
        case DeleteGroup():
            return [] if mirror is None else [RemoveGroup(mirror.remote_id)]
        case SyncGroup(name=name, members=desired):
            if mirror is None:
                if not desired:
                    return []
                if profile.filter_supported and not looked_up:
                    return [LookupGroup(name)]
                first = dict(sorted(desired.items())[: profile.members_per_patch])
                return [CreateGroup(name, first)]
            return _sync_existing(name, desired, mirror, profile)
    raise TypeError(f"unknown intent {intent!r}")


def _sync_existing(
    name: str, desired: dict[str, str], mirror: MirrorGroup, profile: Profile
) -> list[Call]:
    add = {u: rid for u, rid in desired.items() if mirror.members.get(u) != rid}
    remove = {u: rid for u, rid in mirror.members.items() if desired.get(u) != rid}
    # an app that cannot rename a group keeps the name it holds; the members still sync
    name = name if profile.renames_groups else mirror.display_name
    renamed = not holds_name(name, mirror)
    calls: list[Call] = []
    if not profile.group_patch:
        if add or remove or renamed:
            calls.append(ReplaceGroup(mirror.remote_id, name, dict(desired)))
        return calls
    if renamed:
        calls.append(RenameGroup(mirror.remote_id, name))
    calls.extend(membership_patches(mirror.remote_id, add, remove, profile.members_per_patch))
    return calls


def membership_patches(
    remote_id: str, add: dict[str, str], remove: dict[str, str], per_patch: int
) -> list[PatchMembers]:
    """Chunk a membership diff into PATCH requests of at most ``per_patch`` member changes."""
    changes = [("remove", u, rid) for u, rid in sorted(remove.items())]
    changes += [("add", u, rid) for u, rid in sorted(add.items())]
    patches = []
    for start in range(0, len(changes), per_patch):
        chunk = changes[start : start + per_patch]
        patches.append(
            PatchMembers(
                remote_id,
                add={u: rid for op, u, rid in chunk if op == "add"},
                remove={u: rid for op, u, rid in chunk if op == "remove"},
            )
        )
    return patches
