"""Planning without writing: a SCIM client that sends reads but only describes writes, and a
mirror that keeps its changes in memory. Used by an app in dry run (``apps update --dry-run
on``: the worker plans and audits its calls with outcome ``dry_run``, ``reconciler``) and by
``explain``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.scim import NotFound, RemoteGroup, RemoteUser, ScimClient, escape_filter_value
from worker.scim.profiles import Profile
from worker.store import audit, codec
from worker.store.apps import AppConfig
from worker.store.audit import AuditEntry
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror
from worker.sync.executor import marking
from worker.sync.reconcile import Reconciler

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
    no client, find nothing), writes are only recorded in ``calls``, one by one: a plan shows
    the calls of each object, whether or not they would travel in Bulk requests."""

    bulk = None  # no Bulk channel: nothing is sent

    def __init__(self, scim: ScimClient | None, profile: Profile):
        self.scim = scim
        self.profile = profile
        self.calls: list[PlannedCall] = []

    def reshaped(self, profile: Profile) -> DryRunScim:
        """Plan with the forms of ``profile`` (what the app has been learned to take)."""
        self.profile = profile
        if self.scim is not None:
            self.scim = self.scim.reshaped(profile)
        return self

    def bulk_ids(self, refs: Iterable[str]) -> dict[str, str]:
        return {}

    def resolved(self, remote_id: str) -> str:
        return remote_id

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

    def get_user(self, remote_id: str) -> RemoteUser:
        """Read back after an interrupted write (offline: assumed gone, ``NotFound``)."""
        return self._get("Users", remote_id, lambda: self.scim.get_user(remote_id))  # type: ignore[union-attr]

    def get_group(self, remote_id: str) -> RemoteGroup:
        return self._get("Groups", remote_id, lambda: self.scim.get_group(remote_id))  # type: ignore[union-attr]

    def _get(self, endpoint: str, remote_id: str, fetch: Callable[[], Any]) -> Any:
        found = self._read("GET", f"/{endpoint}/{remote_id}", fetch, lambda r: f"-> {r.id}")
        if found is None:
            raise NotFound(None, "offline: assumed to find nothing")
        return found

    # writes
    def create_user(self, attrs: Mapping[str, Any], ref: str | None = None) -> RemoteUser:
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
        by_patch = self.profile.group_patch and self.profile.group_rename == "patch"
        self._write(
            "PATCH" if by_patch else "PUT", f"/Groups/{remote_id}", f"displayName={display_name!r}"
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


class OverlayRedis:
    """A copy-on-write view of Redis for the mirror's commands: reads go through to Redis,
    writes stay in memory (and are read back). Any other command is refused."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._fields: dict[str, dict[str, bytes | None]] = {}  # hash key -> field -> value
        self._members: dict[str, dict[str, bool]] = {}  # set key -> member -> present
        self._cleared: set[str] = set()  # keys deleted as a whole

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a dry run keeps Redis as it is: {name} is not supported")

    # hashes
    def hget(self, key: str, field: str) -> bytes | None:
        return self.hmget(key, [field])[0]

    def hmget(self, key: str, fields: Iterable[str]) -> list[bytes | None]:
        fields = [_text(f) for f in fields]
        known = self._fields.get(key, {})
        missing = [f for f in fields if f not in known]
        base: dict[str, bytes | None] = {}
        if missing and key not in self._cleared:
            stored = codec.optional_blobs(self._client.hmget(key, missing))
            base = dict(zip(missing, stored, strict=True))
        return [known[f] if f in known else base.get(f) for f in fields]

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        base = {} if key in self._cleared else codec.hash_blobs(self._client.hgetall(key))
        merged: dict[str, bytes | None] = {_text(f): v for f, v in base.items()}
        merged.update(self._fields.get(key, {}))
        return {f.encode(): v for f, v in merged.items() if v is not None}

    def hkeys(self, key: str) -> list[bytes]:
        return list(self.hgetall(key))

    def hlen(self, key: str) -> int:
        return len(self.hgetall(key))

    def hexists(self, key: str, field: str) -> bool:
        return self.hget(key, field) is not None

    def hset(
        self, key: str, field: str | None = None, value: Any = None, mapping: dict | None = None
    ) -> int:
        changes = {**(mapping or {}), **({field: value} if field is not None else {})}
        known = self._fields.setdefault(key, {})
        for f, v in changes.items():
            known[_text(f)] = v if isinstance(v, bytes) else str(v).encode()
        return len(changes)

    def hdel(self, key: str, *fields: str) -> int:
        known = self._fields.setdefault(key, {})
        for f in fields:
            known[_text(f)] = None
        return len(fields)

    # sets
    def sismember(self, key: str, member: str) -> bool:
        known = self._members.get(key, {})
        if _text(member) in known:
            return known[_text(member)]
        return False if key in self._cleared else bool(self._client.sismember(key, member))

    def smembers(self, key: str) -> set[bytes]:
        base = set() if key in self._cleared else {_text(m) for m in self._client.smembers(key)}
        known = self._members.get(key, {})
        base |= {m for m, present in known.items() if present}
        return {m.encode() for m in base if known.get(m, True)}

    def sadd(self, key: str, *members: str) -> int:
        self._members.setdefault(key, {}).update({_text(m): True for m in members})
        return len(members)

    def srem(self, key: str, *members: str) -> int:
        self._members.setdefault(key, {}).update({_text(m): False for m in members})
        return len(members)

    def delete(self, *names: str) -> int:
        for key in names:
            self._cleared.add(key)
            self._fields.pop(key, None)
            self._members.pop(key, None)
        return len(names)

    def pipeline(self, transaction: bool = True) -> _OverlayPipeline:
        return _OverlayPipeline(self)

    def execute_command(self, name: str, *args: Any) -> Any:
        """A write of the mirror as its words (``("HSET", key, field, value)``, ``Mirror``)."""
        writes: dict[str, Callable[..., int]] = {
            "HSET": self.hset, "HDEL": self.hdel, "SADD": self.sadd, "SREM": self.srem,
            "DEL": self.delete,
        }  # fmt: skip
        if name.upper() not in writes:
            raise RuntimeError(f"a dry run keeps Redis as it is: {name} is not supported")
        return writes[name.upper()](*args)


class _OverlayPipeline:
    """Queues commands and runs them on the overlay, in order, at ``execute``."""

    def __init__(self, overlay: OverlayRedis):
        self._overlay = overlay
        self._queued: list[Callable[[], Any]] = []

    def __getattr__(self, name: str) -> Callable[..., _OverlayPipeline]:
        command = getattr(self._overlay, name)

        def queue(*args: Any, **kwargs: Any) -> _OverlayPipeline:
            self._queued.append(lambda: command(*args, **kwargs))
            return self

        return queue

    def execute(self) -> list[Any]:
        queued, self._queued = self._queued, []
        return [command() for command in queued]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OverlayMirror(Mirror):
    """The app's mirror as stored, with the changes of this run kept in memory only."""

    def __init__(self, client: redis.Redis, app_id: str):
        super().__init__(OverlayRedis(client), app_id)  # type: ignore[arg-type]


def reconciler(
    client: redis.Redis,
    app: AppConfig,
    scim: ScimClient,
    profile: Profile,
    checks: Callable[[str, ReconcileKey], None],
    **options: Any,
) -> Reconciler:
    """The worker's reconciler for ``app`` in dry run: it sends reads only, leaves the mirror
    as it is and audits each planned call with outcome ``dry_run``. ``checks(name, key)``
    runs before each call (the lease, a request slot: the gate's, but for the write in doubt,
    kept in memory)."""
    planner = DryRunScim(scim, profile)
    mirror = OverlayMirror(client, app.id)

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
        gate=marking(mirror, checks),
        mirror=mirror,
        record=record,
        **options,
    )
