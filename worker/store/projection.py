"""Reading the directory projection that ``lua/ingest.lua`` writes.

Each reader is one round trip (``lua/user_facts.lua``, ``lua/group_facts.lua``), whatever the
size of the group.
"""

from __future__ import annotations

import json

import redis

from worker.contract.model import DirectoryUser, GroupFacts, UserFacts
from worker.store import codec, keys, scripts
from worker.store.keys import ReconcileKey


def directory_user(fields: dict[bytes, bytes], user_id: str) -> DirectoryUser:
    record = fields.get(b"rec")
    return DirectoryUser(
        id=user_id,
        record=json.loads(record) if record else None,
        suspended=fields.get(b"st") == b"suspended",
        deleted=b"del" in fields,
    )


def user_facts(client: redis.Redis, app_id: str, user_id: str) -> UserFacts:
    raw, direct, *covering = scripts.run(client, "user_facts", app_id, user_id)
    return UserFacts(
        directory_user(_hash(raw), user_id), bool(direct), frozenset(g.decode() for g in covering)
    )


def group_facts(client: redis.Redis, app_id: str, group_id: str) -> GroupFacts:
    raw, associated, *members = scripts.run(client, "group_facts", app_id, group_id)
    fields = _hash(raw)
    return GroupFacts(
        id=group_id,
        name=codec.optional_text(fields.get(b"name")),
        deleted=b"del" in fields,
        associated=bool(associated),
        members=frozenset(m.decode() for m in members),
    )


def _hash(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def covered_keys(client: redis.Redis, app_id: str) -> list[ReconcileKey]:
    """Every reconcile key of an app's current scope: associated groups, their members and
    the directly associated users (a full sync marks these dirty)."""
    groups = sorted(codec.texts(client.smembers(keys.app_groups(app_id))))
    users = set(codec.texts(client.smembers(keys.app_users(app_id))))
    if groups:
        pipe = client.pipeline(transaction=False)
        for group_id in groups:
            pipe.smembers(keys.group_members(group_id))
        for members in pipe.execute():
            users.update(codec.texts(members))
    return [ReconcileKey(app_id, "group", g) for g in groups] + [
        ReconcileKey(app_id, "user", u) for u in sorted(users)
    ]
