"""A small reference model of the group-management rules, independent of the product code.

Given the SET of v1 events (README, "Events") that reached the product, it predicts what one SCIM
application (group management on, users deactivated on deletion) holds once everything has
been processed, as constraints, because a few outcomes legitimately depend on history:

- Every register is last-writer-wins by version ``(occurred_at, id)``, so the
  model never looks at the order of the list it is given.
- Deletion wins over everything about that id: an event about a deleted id either arrived
  before the deletion (and its effect was undone by it) or after it (and was ignored).
- Users: never any record (no ``user.created``/``user.updated``) -> ``absent``;
  covered and not deleted -> ``present`` with exactly the mapped attributes and ``active``;
  otherwise (not covered, or deleted) -> ``absent-or-inactive`` (whether it was provisioned
  at some point depends on the order the events arrived in).
- Groups: deleted -> ``absent`` (deleted in the app if we ever created it); no name or never
  associated -> ``absent``; associated with at least one member that exists in the app ->
  ``present`` with that name and exactly that member set; associated without such member ->
  ``absent-or-empty``; disassociated -> ``unconstrained`` (left as it is in the app).

``check`` compares a prediction with the users and groups an application returns over SCIM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

# directory property -> flat SCIM attribute (the Zscaler profile)
MAPPING = {
    "username": "userName",
    "firstname": "name.givenName",
    "lastname": "name.familyName",
    "displayname": "displayName",
    "email": "emails",
    "employee_id": "externalId",
    "department": "department",
}

PRESENT = "present"  # exactly these attributes (``active`` included)
ABSENT = "absent"
ABSENT_OR_INACTIVE = "absent-or-inactive"
ABSENT_OR_EMPTY = "absent-or-empty"  # if present: the predicted name and no member
UNCONSTRAINED = "unconstrained"  # anything, as long as there is at most one


Version = tuple[int, str]


def version(event: Mapping[str, Any]) -> Version:
    """``(µs since the epoch, event id)``: the last-writer-wins order of the projection."""
    moment = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros, event["id"]


class Registers:
    """Last-writer-wins registers: ``set`` keeps the value of the highest version."""

    def __init__(self) -> None:
        self._cells: dict[Any, tuple[Version, Any]] = {}

    def set(self, key: Any, v: Version, value: Any) -> None:
        old = self._cells.get(key)
        if old is None or v > old[0]:
            self._cells[key] = (v, value)

    def get(self, key: Any, default: Any = None) -> Any:
        cell = self._cells.get(key)
        return default if cell is None else cell[1]

    def registers(self) -> list[Any]:
        return list(self._cells)


@dataclass
class Directory:
    """The directory as the event set says it is (deleted ids included, flagged)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # without ``state``
    suspended: dict[str, bool] = field(default_factory=dict)
    deleted_users: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)
    deleted_groups: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)  # group -> users (final True)
    group_associated: dict[tuple[str, str], bool] = field(default_factory=dict)  # (app, group)
    ever_group_associated: set[tuple[str, str]] = field(default_factory=set)
    user_associated: dict[tuple[str, str], bool] = field(default_factory=dict)  # (app, user)
    user_ids: set[str] = field(default_factory=set)
    group_ids: set[str] = field(default_factory=set)
    usernames: dict[str, set[str]] = field(default_factory=dict)  # every userName a user had
    group_names: dict[str, set[str]] = field(default_factory=dict)  # every name a group had

    def covering_groups(self, app: str, user_id: str) -> set[str]:
        return {
            g
            for g, users in self.members.items()
            if user_id in users
            and g not in self.deleted_groups
            and self.group_associated.get((app, g), False)
        }

    def covered(self, app: str, user_id: str) -> bool:
        if user_id in self.deleted_users:
            return False
        direct = self.user_associated.get((app, user_id), False)
        return direct or bool(self.covering_groups(app, user_id))

    def live_members(self, group_id: str) -> set[str]:
        """Current members that are not deleted."""
        return {u for u in self.members.get(group_id, set()) if u not in self.deleted_users}


def directory(events: Iterable[Mapping[str, Any]]) -> Directory:
    """Fold the event set into registers; the result does not depend on the order."""
    record, state, name = Registers(), Registers(), Registers()
    member, group_assoc, user_assoc = Registers(), Registers(), Registers()
    d = Directory()
    for event in events:
        v, t, data = version(event), event["type"], event["data"]
        if t in ("user.created", "user.updated"):
            user = dict(data["user"])
            uid = user["id"]
            state.set(uid, v, user.pop("state") == "suspended")
            record.set(uid, v, user)
            d.user_ids.add(uid)
            d.usernames.setdefault(uid, set()).add(user["username"])
        elif t in ("user.suspended", "user.activated"):
            state.set(data["user_id"], v, t == "user.suspended")
            d.user_ids.add(data["user_id"])
        elif t == "user.deleted":
            d.deleted_users.add(data["user_id"])
            d.user_ids.add(data["user_id"])
        elif t in ("group.created", "group.renamed"):
            gid = data["group"]["id"] if t == "group.created" else data["group_id"]
            new_name = data["group"]["name"] if t == "group.created" else data["name"]
            name.set(gid, v, new_name)
            d.group_ids.add(gid)
            d.group_names.setdefault(gid, set()).add(new_name)
        elif t == "group.deleted":
            d.deleted_groups.add(data["group_id"])
            d.group_ids.add(data["group_id"])
        elif t in ("group.member_added", "group.member_removed"):
            member.set((data["group_id"], data["user_id"]), v, t == "group.member_added")
            d.group_ids.add(data["group_id"])
            d.user_ids.add(data["user_id"])
        elif t in ("app.group_associated", "app.group_disassociated"):
            key = (data["app_id"], data["group_id"])
            group_assoc.set(key, v, t == "app.group_associated")
            if t == "app.group_associated":
                d.ever_group_associated.add(key)
            d.group_ids.add(data["group_id"])
        elif t in ("app.user_associated", "app.user_disassociated"):
            user_assoc.set((data["app_id"], data["user_id"]), v, t == "app.user_associated")
            d.user_ids.add(data["user_id"])
        else:
            raise ValueError(f"not a v1 event type: {t!r}")
    d.records = {uid: record.get(uid) for uid in record.registers()}
    d.suspended = {uid: state.get(uid) for uid in state.registers()}
    d.names = {gid: name.get(gid) for gid in name.registers()}
    for gid, uid in member.registers():
        if member.get((gid, uid)):
            d.members.setdefault(gid, set()).add(uid)
    d.group_associated = {key: group_assoc.get(key) for key in group_assoc.registers()}
    d.user_associated = {key: user_assoc.get(key) for key in user_assoc.registers()}
    return d


def scim_attributes(record: Mapping[str, Any], suspended: bool) -> dict[str, Any]:
    """The flat SCIM attributes of a directory record (a missing value is None)."""
    attributes = {attr: record.get(prop) or None for prop, attr in MAPPING.items()}
    attributes["active"] = not suspended
    return attributes


@dataclass(frozen=True)
class UserExpectation:
    kind: str  # PRESENT | ABSENT | ABSENT_OR_INACTIVE
    attributes: dict[str, Any] | None = None  # flat, for PRESENT


@dataclass(frozen=True)
class GroupExpectation:
    kind: str  # PRESENT | ABSENT | ABSENT_OR_EMPTY | UNCONSTRAINED
    name: str | None = None
    members: frozenset[str] = frozenset()  # directory user ids, for PRESENT


@dataclass
class Prediction:
    directory: Directory
    users: dict[str, UserExpectation]
    groups: dict[str, GroupExpectation]


def predict(events: Iterable[Mapping[str, Any]], app: str = "zs") -> Prediction:
    d = directory(events)
    users: dict[str, UserExpectation] = {}
    for uid in sorted(d.user_ids):
        record = d.records.get(uid)
        if record is None:
            users[uid] = UserExpectation(ABSENT)
        elif d.covered(app, uid):
            attributes = scim_attributes(record, d.suspended.get(uid, False))
            users[uid] = UserExpectation(PRESENT, attributes)
        else:
            users[uid] = UserExpectation(ABSENT_OR_INACTIVE)
    groups: dict[str, GroupExpectation] = {}
    for gid in sorted(d.group_ids):
        name = d.names.get(gid)
        if gid in d.deleted_groups or name is None or (app, gid) not in d.ever_group_associated:
            groups[gid] = GroupExpectation(ABSENT)
        elif not d.group_associated.get((app, gid), False):
            groups[gid] = GroupExpectation(UNCONSTRAINED)
        else:
            # Members of an associated group are covered by it: those with a record are there.
            members = frozenset(u for u in d.live_members(gid) if users[u].kind == PRESENT)
            kind = PRESENT if members else ABSENT_OR_EMPTY
            groups[gid] = GroupExpectation(kind, name, members)
    return Prediction(d, users, groups)


# -- reading the application ---------------------------------------------------------------
def flat_user(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A SCIM User resource (JSON), flat as in ``MAPPING`` (a missing value is None)."""
    name = resource.get("name") or {}
    emails = [e.get("value") for e in resource.get("emails") or []]
    extension = resource.get(ENTERPRISE) or {}
    return {
        "userName": resource.get("userName"),
        "name.givenName": name.get("givenName"),
        "name.familyName": name.get("familyName"),
        "displayName": resource.get("displayName"),
        "emails": emails[0] if len(emails) == 1 else (emails or None),
        "externalId": resource.get("externalId"),
        "department": extension.get("department"),
        "active": resource.get("active"),
    }


def _duplicates(values: Iterable[Any]) -> list[Any]:
    seen: set[Any] = set()
    repeated = []
    for value in values:
        if value in seen:
            repeated.append(value)
        seen.add(value)
    return repeated


def check(
    prediction: Prediction,
    scim_users: list[Mapping[str, Any]],
    scim_groups: list[Mapping[str, Any]],
) -> list[str]:
    """Every way the application's state breaks the prediction (empty: it satisfies it)."""
    d = prediction.directory
    problems: list[str] = []
    for user_name in _duplicates(u.get("userName") for u in scim_users):
        problems.append(f"duplicate userName {user_name!r} in the app")
    for display_name in _duplicates(g.get("displayName") for g in scim_groups):
        problems.append(f"duplicate group displayName {display_name!r} in the app")

    owner_of_name = {n: uid for uid, names in d.usernames.items() for n in names}
    remote_by_user: dict[str, list[Mapping[str, Any]]] = {}
    user_name_by_remote_id: dict[str, str] = {}
    for resource in scim_users:
        user_name_by_remote_id[resource.get("id", "")] = resource.get("userName", "")
        uid = owner_of_name.get(resource.get("userName", ""))
        if uid is None:
            problems.append(f"user {resource.get('userName')!r} in the app is nobody's")
            continue
        remote_by_user.setdefault(uid, []).append(resource)

    for uid, expected in prediction.users.items():
        found = remote_by_user.get(uid, [])
        if len(found) > 1:
            names = sorted(r.get("userName", "") for r in found)
            problems.append(f"user {uid}: {len(found)} users in the app ({names})")
        if expected.kind == ABSENT and found:
            problems.append(f"user {uid}: expected absent (no record ever), found {len(found)}")
        elif expected.kind == ABSENT_OR_INACTIVE:
            for resource in found:
                if resource.get("active") is not False:
                    problems.append(
                        f"user {uid}: expected absent or inactive, found "
                        f"{resource.get('userName')!r} active={resource.get('active')!r}"
                    )
        elif expected.kind == PRESENT:
            assert expected.attributes is not None
            if not found:
                problems.append(f"user {uid}: expected present {expected.attributes}, absent")
            for resource in found:
                actual = flat_user(resource)
                diff = {
                    a: (want, actual.get(a))
                    for a, want in expected.attributes.items()
                    if actual.get(a) != want
                }
                if diff:
                    problems.append(f"user {uid}: attributes differ (expected, actual): {diff}")

    owner_of_group_name = {n: gid for gid, names in d.group_names.items() for n in names}
    remote_by_group: dict[str, list[Mapping[str, Any]]] = {}
    for resource in scim_groups:
        gid = owner_of_group_name.get(resource.get("displayName", ""))
        if gid is None:
            problems.append(f"group {resource.get('displayName')!r} in the app is nobody's")
            continue
        remote_by_group.setdefault(gid, []).append(resource)

    def member_names(resource: Mapping[str, Any]) -> set[str]:
        return {
            user_name_by_remote_id.get(m.get("value", ""), f"<unknown id {m.get('value')}>")
            for m in resource.get("members") or []
        }

    for gid, expected in prediction.groups.items():
        found = remote_by_group.get(gid, [])
        if len(found) > 1:
            names = sorted(r.get("displayName", "") for r in found)
            problems.append(f"group {gid}: {len(found)} groups in the app ({names})")
        if expected.kind == ABSENT and found:
            names = sorted(r.get("displayName", "") for r in found)
            problems.append(f"group {gid}: expected absent, found {names}")
        elif expected.kind == ABSENT_OR_EMPTY:
            for resource in found:
                if resource.get("displayName") != expected.name or member_names(resource):
                    problems.append(
                        f"group {gid}: expected absent or {expected.name!r} empty, found "
                        f"{resource.get('displayName')!r} with {sorted(member_names(resource))}"
                    )
        elif expected.kind == PRESENT:
            want = {
                (prediction.users[u].attributes or {}).get("userName", "") for u in expected.members
            }
            if not found:
                problems.append(
                    f"group {gid}: expected {expected.name!r} with {sorted(want)}, absent"
                )
            for resource in found:
                got = member_names(resource)
                if resource.get("displayName") != expected.name or got != want:
                    problems.append(
                        f"group {gid}: expected {expected.name!r} with {sorted(want)}, found "
                        f"{resource.get('displayName')!r} with {sorted(got)}"
                    )
    return problems
