"""Plain data shared by the rules, the planner and the I/O around them. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

UserDeletePolicy = Literal["deactivate", "delete"]


@dataclass(frozen=True)
class DirectoryUser:
    id: str
    record: Mapping[str, Any] | None  # the last user.created/updated record; None if never seen
    suspended: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class UserFacts:
    """What the projection says of one user, seen from one application."""

    user: DirectoryUser
    directly_associated: bool
    covering_groups: frozenset[str]  # the user's groups associated with the app, not deleted


@dataclass(frozen=True)
class GroupFacts:
    """What the projection says of one group, seen from one application."""

    id: str
    name: str | None  # None until group.created is seen
    deleted: bool
    associated: bool
    members: frozenset[str]  # current members that are not deleted


@dataclass(frozen=True)
class MirrorUser:
    """What the application holds for a user we manage: its id and the attributes last
    written to (or read from) it, flat as in ``rules.USER_MAPPING``."""

    remote_id: str
    attributes: Mapping[str, Any]
    normalized: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    """attribute -> (what we sent, what the app holds instead): the app stores its own form of
    our value (a lower-cased email, say); sending it again would change nothing."""


@dataclass(frozen=True)
class MirrorGroup:
    """A group we manage: its id, name and members (directory user id -> remote user id;
    members that are not ours are keyed ``"?<remote id>"``)."""

    remote_id: str
    display_name: str
    members: Mapping[str, str] = field(default_factory=dict)
    normalized: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    """``displayName`` -> (the name we sent, the name the app holds instead)"""


@dataclass(frozen=True)
class AppSettings:
    """The settings of one application's integration that the rules and the planner read."""

    id: str
    profile: str = "zscaler"
    group_management: bool = True
    user_delete_policy: UserDeletePolicy = "deactivate"
    excluded_attributes: frozenset[str] = frozenset()
