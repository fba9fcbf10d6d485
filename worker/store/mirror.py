"""The mirror: per application, what we last wrote to (or read from) it (STYLE: authentik's
mapping table). It lets the planner send nothing that changes nothing and skip lookups once
an object's remote id is known."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from worker.contract.model import MirrorGroup, MirrorUser
from worker.store import codec, keys
from worker.store.fence import Command, Fence
from worker.store.keys import Kind, ReconcileKey

KINDS: tuple[Kind, ...] = ("group", "user")


class Mirror:
    def __init__(self, client: redis.Redis, app_id: str, fence: Fence | None = None):
        """With ``fence``, every write is accepted only while the run's lease of its key holds
        (``fence.py``: else ``LeaseLost``, and the object is left in doubt)."""
        self.redis = client
        self.app_id = app_id
        self.fence = fence
        self.users_key = keys.mirror(app_id, "user")
        self.groups_key = keys.mirror(app_id, "group")
        self._riders: list[Command] = []

    # commands that ride along with the next write of the mirror, atomically with it (the
    # audit entry of the call whose outcome that write records: one round trip for both)
    def then(self, command: Command) -> None:
        """Queue ``command`` to run with the next write of the mirror (or ``flush``)."""
        self._riders.append(command)

    def flush(self) -> None:
        """Send the queued riders now, if any."""
        if self._riders:
            self._write()

    def _write(self, *commands: Command) -> None:
        """The riders, then ``commands``, atomically: one fenced script, or one transaction."""
        commands = (*self._riders, *commands)
        self._riders = []
        if self.fence is not None:
            self.fence.write(self.redis, commands)
            return
        pipe = self.redis.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()

    # lookups that found nothing: kept until the object is created, so that a run cut short
    # (throttled, crashed) between the lookup and the create does not look up again
    def looked_up(self, kind: Kind, object_id: str) -> bool:
        return bool(self.redis.sismember(keys.mirror_absent(self.app_id, kind), object_id))

    # writes in doubt: marked before a write is sent, cleared when its outcome is recorded;
    # one left marked (a crash, a timeout) means the app may hold something the mirror
    # does not, so the next run re-reads the object before it plans
    def begin_write(self, kind: Kind, object_id: str) -> None:
        self.redis.sadd(keys.mirror_doubt(self.app_id, kind), object_id)

    def creating(self, kind: Kind, object_id: str, name: str) -> None:
        """A create of the object is about to be sent, named ``name`` (``userName`` or
        ``displayName``): if it is interrupted, the re-read looks that name up too."""
        self.redis.hset(keys.mirror_creating(self.app_id, kind), object_id, name)

    def created_as(self, kind: Kind, object_id: str) -> str | None:
        """The name of the object's last create whose outcome is not recorded, if any."""
        return codec.optional_text(self.redis.hget(keys.mirror_creating(self.app_id, kind),
                                                   object_id))  # fmt: skip

    def load(self, kind: Kind, object_id: str) -> tuple[bytes | None, bool, bool]:
        """The raw entry, whether a lookup found nothing, and whether a write is in doubt (or
        the entry is to be re-read: ``reread_later``)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.users_key if kind == "user" else self.groups_key, object_id)
        pipe.sismember(keys.mirror_absent(self.app_id, kind), object_id)
        pipe.sismember(keys.mirror_doubt(self.app_id, kind), object_id)
        pipe.sismember(keys.mirror_reread(self.app_id, kind), object_id)
        raw, absent, doubt, reread = pipe.execute()
        return raw, bool(absent), bool(doubt or reread)

    def reread_later(self, kind: Kind, object_ids: Iterable[str]) -> None:
        """The app may not hold these objects as recorded: the next run of each reads it back
        first, even if a write of it in flight now is recorded meanwhile."""
        if object_ids := list(object_ids):
            self.redis.sadd(keys.mirror_reread(self.app_id, kind), *object_ids)

    def reread_done(self, kind: Kind, object_id: str) -> None:
        self._write(("SREM", keys.mirror_reread(self.app_id, kind), object_id))

    def load_user(self, user_id: str) -> tuple[MirrorUser | None, bool, bool]:
        raw, absent, doubt = self.load("user", user_id)
        return _user(raw), absent, doubt

    def load_group(self, group_id: str) -> tuple[MirrorGroup | None, bool, bool]:
        raw, absent, doubt = self.load("group", group_id)
        return _group(raw), absent, doubt

    def clear_doubt(self, kind: Kind, object_id: str) -> None:
        """Forget an earlier lookup too: after an interrupted create, look up again."""
        self._write(
            ("SREM", keys.mirror_doubt(self.app_id, kind), object_id),
            ("SREM", keys.mirror_absent(self.app_id, kind), object_id),
        )

    def remember_absent(self, kind: Kind, object_id: str) -> None:
        """A lookup found nothing: no write of ours is in doubt any more either."""
        self._write(
            ("SADD", keys.mirror_absent(self.app_id, kind), object_id),
            ("SREM", keys.mirror_doubt(self.app_id, kind), object_id),
        )

    def _save(self, kind: Kind, object_id: str, document: dict[str, Any]) -> None:
        """Record an object's entry: no lookup nor write of it in doubt any more."""
        self._write(
            ("HSET", self.users_key if kind == "user" else self.groups_key, object_id,
             json.dumps(document)),
            ("SREM", keys.mirror_absent(self.app_id, kind), object_id),
            ("SREM", keys.mirror_doubt(self.app_id, kind), object_id),
            ("HDEL", keys.mirror_creating(self.app_id, kind), object_id),
        )  # fmt: skip

    def _forget(self, kind: Kind, object_id: str) -> None:
        self._write(
            ("HDEL", self.users_key if kind == "user" else self.groups_key, object_id),
            ("SREM", keys.mirror_doubt(self.app_id, kind), object_id),
            ("HDEL", keys.mirror_creating(self.app_id, kind), object_id),
        )

    # users
    def user(self, user_id: str) -> MirrorUser | None:
        return _user(self.redis.hget(self.users_key, user_id))

    def save_user(self, user_id: str, entry: MirrorUser) -> None:
        document: dict[str, Any] = {"id": entry.remote_id, "attributes": dict(entry.attributes)}
        if entry.normalized:
            document["normalized"] = {k: list(v) for k, v in entry.normalized.items()}
        self._save("user", user_id, document)

    def end_write(self, kind: Kind, object_id: str) -> None:
        """A write the application refused outright (a 4xx, a 429): nothing changed there, so
        nothing is in doubt and the next run need not read the object back."""
        self._write(("SREM", keys.mirror_doubt(self.app_id, kind), object_id))

    def forget_user(self, user_id: str) -> None:
        self._forget("user", user_id)

    def remote_user_ids(self, user_ids: Iterable[str]) -> dict[str, str | None]:
        """Remote id of each user (None where we hold none), in one round trip."""
        user_ids = list(user_ids)
        if not user_ids:
            return {}
        raws = self.redis.hmget(self.users_key, user_ids)
        return {
            u: (json.loads(raw)["id"] if raw is not None else None)
            for u, raw in zip(user_ids, raws, strict=True)
        }

    def directory_ids_by_remote_id(self) -> dict[str, str]:
        return {
            json.loads(raw)["id"]: codec.text(user_id)
            for user_id, raw in self.redis.hgetall(self.users_key).items()
        }

    # groups
    def group(self, group_id: str) -> MirrorGroup | None:
        return _group(self.redis.hget(self.groups_key, group_id))

    def save_group(self, group_id: str, entry: MirrorGroup) -> None:
        document: dict[str, Any] = {
            "id": entry.remote_id,
            "name": entry.display_name,
            "members": dict(entry.members),
        }
        if entry.normalized:
            document["normalized"] = {k: list(v) for k, v in entry.normalized.items()}
        self._save("group", group_id, document)

    def groups_missing_member(self, group_ids: Iterable[str], user_id: str) -> list[str]:
        """Those of ``group_ids`` whose mirror does not hold ``user_id`` (or that we do not
        hold yet), in one round trip."""
        group_ids = sorted(group_ids)
        raws = self.redis.hmget(self.groups_key, group_ids) if group_ids else []
        return [
            g
            for g, raw in zip(group_ids, raws, strict=True)
            if raw is None or user_id not in json.loads(raw)["members"]
        ]

    def forget_group(self, group_id: str) -> None:
        self._forget("group", group_id)

    def forget_groups(self) -> None:
        """Forget every group: the next sync looks them up and takes them over again."""
        self.redis.delete(
            self.groups_key,
            keys.mirror_absent(self.app_id, "group"),
            keys.mirror_doubt(self.app_id, "group"),
            keys.mirror_creating(self.app_id, "group"),
        )

    def known_ids(self, kind: Kind) -> list[str]:
        """Directory ids of every object of ``kind`` the app holds for us, sorted."""
        return sorted(
            codec.texts(self.redis.hkeys(self.users_key if kind == "user" else self.groups_key))
        )

    def known_keys(self) -> list[ReconcileKey]:
        """Reconcile keys of every object the app holds for us (groups first)."""
        return [ReconcileKey(self.app_id, kind, i) for kind in KINDS for i in self.known_ids(kind)]

    def counts(self) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.users_key)
        pipe.hlen(self.groups_key)
        users, groups = pipe.execute()
        return users, groups

    def drop(self) -> None:
        self.redis.delete(self.users_key, self.groups_key, *_absent_keys(self.app_id))

    # whole-app reads and seeding, for the listing of an application (listing.py, verify.py)
    def snapshot(self, kind: Kind) -> tuple[dict[str, Any], set[str], set[str]]:
        """Every entry of a kind (``MirrorUser`` or ``MirrorGroup`` by directory id), the ids
        whose lookup found nothing and those with a write in doubt, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.users_key if kind == "user" else self.groups_key)
        pipe.smembers(keys.mirror_absent(self.app_id, kind))
        pipe.smembers(keys.mirror_doubt(self.app_id, kind))
        raw, absent, doubt = pipe.execute()
        parse = _user if kind == "user" else _group
        entries = {k.decode(): parse(v) for k, v in raw.items()}
        return entries, {a.decode() for a in absent}, {d.decode() for d in doubt}

    def seed(
        self, kind: Kind, entries: dict[str, Any], absent: Iterable[str], chunk: int = 500
    ) -> tuple[int, int]:
        """Record what a listing of the app found, as a lookup would have (an entry adopted or
        taken over, or "none"), but only for objects the mirror knows nothing of: an entry or
        a write in doubt is never overwritten (lua/mirror_seed.lua, atomic per chunk).
        Returns (entries recorded, absences recorded)."""
        from worker.store import scripts

        documents = [(i, json.dumps(_document(e))) for i, e in entries.items()]
        absent = list(absent)
        target = (
            self.users_key if kind == "user" else self.groups_key,
            keys.mirror_absent(self.app_id, kind),
            keys.mirror_doubt(self.app_id, kind),
        )
        saved = marked = 0
        for start in range(0, max(len(documents), len(absent)), chunk):
            part = documents[start : start + chunk]
            flat = [value for pair in part for value in pair]
            got = scripts.run(self.redis, "mirror_seed", *target, len(part), *flat,
                              *absent[start : start + chunk])  # fmt: skip
            saved, marked = saved + int(got[0]), marked + int(got[1])
        return saved, marked


def _absent_keys(app_id: str) -> tuple[str, ...]:
    kinds: tuple[Kind, ...] = ("user", "group")
    kept = (keys.mirror_absent, keys.mirror_doubt, keys.mirror_creating, keys.mirror_reread)
    return tuple(f(app_id, kind) for f in kept for kind in kinds)


def _user(raw: bytes | str | None) -> MirrorUser | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return MirrorUser(data["id"], data["attributes"], _pairs(data.get("normalized")))


def _group(raw: bytes | str | None) -> MirrorGroup | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return MirrorGroup(data["id"], data["name"], data["members"], _pairs(data.get("normalized")))


def _pairs(stored: dict[str, list[Any]] | None) -> dict[str, tuple[Any, Any]]:
    return {k: (v[0], v[1]) for k, v in (stored or {}).items()}


def _document(entry: MirrorUser | MirrorGroup) -> dict[str, Any]:
    """The stored form of an entry (as ``save_user`` and ``save_group`` write it)."""
    if isinstance(entry, MirrorUser):
        document: dict[str, Any] = {"id": entry.remote_id, "attributes": dict(entry.attributes)}
    else:
        document = {"id": entry.remote_id, "name": entry.display_name,
                    "members": dict(entry.members)}  # fmt: skip
    if entry.normalized:
        document["normalized"] = {k: list(v) for k, v in entry.normalized.items()}
    return document
