"""The mirror: per application, what we last wrote to (or read from) it (STYLE: authentik's
mapping table). It lets the planner send nothing that changes nothing and skip lookups once
an object's remote id is known."""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis

from worker import keys
from worker.model import MirrorGroup, MirrorUser


class Mirror:
    def __init__(self, client: redis.Redis, app_id: str):
        self.redis = client
        self.app_id = app_id
        self.users_key = keys.mirror(app_id, "user")
        self.groups_key = keys.mirror(app_id, "group")

    # users
    def user(self, user_id: str) -> MirrorUser | None:
        raw = self.redis.hget(self.users_key, user_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return MirrorUser(data["id"], data["attributes"])

    def save_user(self, user_id: str, entry: MirrorUser) -> None:
        document = {"id": entry.remote_id, "attributes": dict(entry.attributes)}
        self.redis.hset(self.users_key, user_id, json.dumps(document))

    def forget_user(self, user_id: str) -> None:
        self.redis.hdel(self.users_key, user_id)

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
            json.loads(raw)["id"]: user_id.decode()
            for user_id, raw in self.redis.hgetall(self.users_key).items()
        }

    # groups
    def group(self, group_id: str) -> MirrorGroup | None:
        raw = self.redis.hget(self.groups_key, group_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return MirrorGroup(data["id"], data["name"], data["members"])

    def save_group(self, group_id: str, entry: MirrorGroup) -> None:
        document = {
            "id": entry.remote_id,
            "name": entry.display_name,
            "members": dict(entry.members),
        }
        self.redis.hset(self.groups_key, group_id, json.dumps(document))

    def forget_group(self, group_id: str) -> None:
        self.redis.hdel(self.groups_key, group_id)

    def forget_groups(self) -> None:
        """Forget every group: the next sync looks them up and takes them over again."""
        self.redis.delete(self.groups_key)

    def known_keys(self) -> list[str]:
        """Reconcile keys of every object the app holds for us."""
        users = sorted(u.decode() for u in self.redis.hkeys(self.users_key))
        groups = sorted(g.decode() for g in self.redis.hkeys(self.groups_key))
        return [f"{self.app_id} group {g}" for g in groups] + [
            f"{self.app_id} user {u}" for u in users
        ]

    def counts(self) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.users_key)
        pipe.hlen(self.groups_key)
        users, groups = pipe.execute()
        return users, groups

    def drop(self) -> None:
        self.redis.delete(self.users_key, self.groups_key)
