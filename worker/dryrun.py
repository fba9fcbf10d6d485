"""Planning without writing: a SCIM client that sends reads but only describes writes, and a
mirror that keeps its changes in memory. Used by an app in dry run (``apps update --dry-run
on``: the worker plans and audits its calls with outcome ``dry_run``) and by ``explain``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker import audit
from worker.apps import AppConfig
from worker.audit import AuditEntry
from worker.keys import Kind
from worker.mirror import Mirror
from worker.model import MirrorGroup, MirrorUser
from worker.reconcile import Reconciler
from worker.scim import RemoteGroup, RemoteUser, ScimClient, escape_filter_value
from worker.scim.profiles import Profile

DRY_RUN = "dry_run"  # key of AppConfig.extra: "on" while the app is in dry run


def is_dry_run(app: AppConfig) -> bool:
    return app.extra.get(DRY_RUN) == "on"


@dataclass(frozen=True)
class PlannedCall:
    method: str
    path: str
    summary: str
    sent: bool  # reads are sent; writes never

    def __str__(self) -> str:
        state = "sent (read)" if self.sent else "not sent"
        return f"{self.method} {self.path}  {self.summary}  [{state}]".rstrip()


class DryRunScim:
    """The ``ScimClient`` methods the reconciler calls: reads go to the application (or, with
    no client, find nothing), writes are only recorded in ``calls``."""

    def __init__(self, scim: ScimClient | None, profile: Profile):
        self.scim = scim
        self.profile = profile
        self.calls: list[PlannedCall] = []

    @property
    def last(self) -> PlannedCall | None:
        return self.calls[-1] if self.calls else None

    def _read(
        self, method: str, path: str, fetch: Callable[[], Any], found: Callable[[Any], str]
    ) -> Any:
        if self.scim is None:
            self.calls.append(PlannedCall(method, path, "offline: assumed to find nothing", False))
            return None
        result = fetch()
        self.calls.append(PlannedCall(method, path, found(result), True))
        return result

    def _write(self, method: str, path: str, summary: str) -> None:
        self.calls.append(PlannedCall(method, path, summary, False))

    # reads
    def find_user(self, user_name: str) -> RemoteUser | None:
        return self._read(
            "GET",
            f"/Users?filter=userName eq {escape_filter_value(user_name)}",
            lambda: self.scim.find_user(user_name),  # type: ignore[union-attr]
            lambda u: f"-> {u.id}" if u else "-> none",
        )

    def find_group(self, display_name: str) -> RemoteGroup | None:
        return self._read(
            "GET",
            f"/Groups?filter=displayName eq {escape_filter_value(display_name)}",
            lambda: self.scim.find_group(display_name),  # type: ignore[union-attr]
            lambda g: f"-> {g.id} ({len(g.member_ids)} members)" if g else "-> none",
        )

    # writes
    def create_user(self, attrs: Mapping[str, Any]) -> RemoteUser:
        self._write("POST", "/Users", _attrs(attrs))
        return RemoteUser(f"(new {attrs.get('userName')})", dict(attrs))

    def update_user(
        self, remote_id: str, changes: Mapping[str, Any], full: Mapping[str, Any]
    ) -> None:
        method = "PATCH" if self.profile.user_patch else "PUT"
        self._write(method, f"/Users/{remote_id}", "changes " + _attrs(changes))

    def set_active(self, remote_id: str, active: bool, full: Mapping[str, Any]) -> None:
        method = "PATCH" if self.profile.user_patch else "PUT"
        self._write(method, f"/Users/{remote_id}", f"active={active}")

    def delete_user(self, remote_id: str) -> None:
        self._write("DELETE", f"/Users/{remote_id}", "")

    def create_group(self, display_name: str, member_ids: Iterable[str]) -> RemoteGroup:
        members = frozenset(member_ids)
        self._write("POST", "/Groups", f"displayName={display_name!r}, {len(members)} members")
        return RemoteGroup(f"(new {display_name})", display_name, members)

    def rename_group(
        self, remote_id: str, display_name: str, member_ids: Iterable[str] | None = None
    ) -> None:
        self._write(
            "PATCH" if self.profile.group_patch else "PUT",
            f"/Groups/{remote_id}",
            f"displayName={display_name!r}",
        )

    def patch_members(self, remote_id: str, add: Iterable[str], remove: Iterable[str]) -> None:
        add, remove = list(add), list(remove)
        self._write("PATCH", f"/Groups/{remote_id}", f"members +{len(add)} -{len(remove)}")

    def replace_group(self, remote_id: str, display_name: str, member_ids: Iterable[str]) -> None:
        members = list(member_ids)
        self._write("PUT", f"/Groups/{remote_id}", f"{display_name!r} with {len(members)} members")

    def delete_group(self, remote_id: str) -> None:
        self._write("DELETE", f"/Groups/{remote_id}", "")


def _attrs(attrs: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in attrs.items()) + "}"


class ReadOnlyRedis:
    """A Redis client that reads and refuses to write (the overlay mirror's base)."""

    READS = frozenset({"hget", "hmget", "hgetall", "hkeys", "hlen", "hexists", "sismember"})

    def __init__(self, client: redis.Redis):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name not in self.READS:
            raise RuntimeError(f"a dry run does not write to Redis ({name})")
        return getattr(self._client, name)


class OverlayMirror(Mirror):
    """The app's mirror as stored, with the changes of this run kept in memory only."""

    def __init__(self, client: redis.Redis, app_id: str):
        super().__init__(ReadOnlyRedis(client), app_id)  # type: ignore[arg-type]
        self._users: dict[str, MirrorUser | None] = {}
        self._groups: dict[str, MirrorGroup | None] = {}
        self._absent: set[tuple[str, str]] = set()

    def looked_up(self, kind: Kind, object_id: str) -> bool:
        return (kind, object_id) in self._absent or super().looked_up(kind, object_id)

    def remember_absent(self, kind: Kind, object_id: str) -> None:
        self._absent.add((kind, object_id))

    def user(self, user_id: str) -> MirrorUser | None:
        return self._users[user_id] if user_id in self._users else super().user(user_id)

    def save_user(self, user_id: str, entry: MirrorUser) -> None:
        self._users[user_id] = entry

    def forget_user(self, user_id: str) -> None:
        self._users[user_id] = None

    def remote_user_ids(self, user_ids: Iterable[str]) -> dict[str, str | None]:
        ids = super().remote_user_ids(user_ids)
        for user_id in ids:
            if user_id in self._users:
                entry = self._users[user_id]
                ids[user_id] = entry.remote_id if entry else None
        return ids

    def directory_ids_by_remote_id(self) -> dict[str, str]:
        by_remote = {
            r: u for r, u in super().directory_ids_by_remote_id().items() if u not in self._users
        }
        by_remote.update({e.remote_id: u for u, e in self._users.items() if e is not None})
        return by_remote

    def group(self, group_id: str) -> MirrorGroup | None:
        return self._groups[group_id] if group_id in self._groups else super().group(group_id)

    def save_group(self, group_id: str, entry: MirrorGroup) -> None:
        self._groups[group_id] = entry

    def forget_group(self, group_id: str) -> None:
        self._groups[group_id] = None

    def groups_missing_member(self, group_ids: Iterable[str], user_id: str) -> list[str]:
        return [
            g
            for g in sorted(group_ids)
            if (entry := self.group(g)) is None or user_id not in entry.members
        ]


def reconciler(
    client: redis.Redis, app: AppConfig, scim: ScimClient, profile: Profile, **options: Any
) -> Reconciler:
    """The worker's reconciler for ``app``: the real one, or a dry run that sends reads only,
    leaves the mirror as it is and audits each planned call with outcome ``dry_run``."""
    if not is_dry_run(app):
        return Reconciler(client, app, scim, profile, **options)
    planner = DryRunScim(scim, profile)
    options.pop("guard", None)  # nothing is deactivated or deleted: nothing to hold back

    def record(entry: AuditEntry) -> None:
        if entry.outcome == "success":
            detail = f"dry run: {planner.last}" if planner.last else "dry run"
            entry = dataclasses.replace(entry, outcome="dry_run", detail=detail, remote_id=None)
        audit.record(client, entry)

    return Reconciler(
        client,
        app,
        planner,  # type: ignore[arg-type]
        profile,
        mirror=OverlayMirror(client, app.id),
        record=record,
        **options,
    )
