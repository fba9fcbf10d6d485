"""Reading the directory projection that ``lua/ingest.lua`` writes (DESIGN §1).

Each reader costs two pipelined round trips, whatever the size of the group.
"""

from __future__ import annotations

import json

import redis

from worker import keys
from worker.model import DirectoryUser, GroupFacts, UserFacts


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def directory_user(fields: dict[bytes, bytes], user_id: str) -> DirectoryUser:
    record = fields.get(b"rec")
    return DirectoryUser(
        id=user_id,
        record=json.loads(record) if record else None,
        suspended=fields.get(b"st") == b"suspended",
        deleted=b"del" in fields,
    )


def user_facts(client: redis.Redis, app_id: str, user_id: str) -> UserFacts:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.user(user_id))
    pipe.sismember(keys.app_users(app_id), user_id)
    pipe.smembers(keys.user_groups(user_id))
    fields, direct, groups = pipe.execute()
    group_ids = sorted(g.decode() for g in groups)
    for group_id in group_ids:
        pipe.hexists(keys.group(group_id), "del")
        pipe.sismember(keys.group_apps(group_id), app_id)
    answers = pipe.execute() if group_ids else []
    covering = frozenset(
        group_id
        for i, group_id in enumerate(group_ids)
        if not answers[2 * i] and answers[2 * i + 1]
    )
    return UserFacts(directory_user(fields, user_id), bool(direct), covering)


def group_facts(client: redis.Redis, app_id: str, group_id: str) -> GroupFacts:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.group(group_id))
    pipe.sismember(keys.app_groups(app_id), group_id)
    pipe.smembers(keys.group_members(group_id))
    fields, associated, members = pipe.execute()
    member_ids = sorted(m.decode() for m in members)
    for user_id in member_ids:
        pipe.hexists(keys.user(user_id), "del")
    deleted = pipe.execute() if member_ids else []
    return GroupFacts(
        id=group_id,
        name=_text(fields.get(b"name")),
        deleted=b"del" in fields,
        associated=bool(associated),
        members=frozenset(u for u, gone in zip(member_ids, deleted, strict=True) if not gone),
    )


def covered_keys(client: redis.Redis, app_id: str) -> list[str]:
    """Every reconcile key of an app's current scope: associated groups, their members and
    the directly associated users (a full sync marks these dirty)."""
    groups = sorted(g.decode() for g in client.smembers(keys.app_groups(app_id)))
    users = {u.decode() for u in client.smembers(keys.app_users(app_id))}
    if groups:
        pipe = client.pipeline(transaction=False)
        for group_id in groups:
            pipe.smembers(keys.group_members(group_id))
        for members in pipe.execute():
            users.update(m.decode() for m in members)
    return [f"{app_id} group {g}" for g in groups] + [f"{app_id} user {u}" for u in sorted(users)]
