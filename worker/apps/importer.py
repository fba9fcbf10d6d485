"""Manual import (the article's "Importing Users"): users that exist in an application but not
in the directory are created in the directory.

The application's users are listed, suspended ones skipped, each marked ``New`` or ``Imported``
(a directory user with that username exists). Importing publishes ``user.created`` events, as
any producer does, bound to nothing (no group, no association). Their source is ``import``: the
v1 contract has no field for it, so it is the prefix of the event ids (``import-<job>-<n>``)
and it is said in the audit entries (``user_import`` per user, ``import_complete`` per job).
More than ``BACKGROUND_OVER`` users run in the background (Celery task ``prov.import``), with
progress in ``provisioner status``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.config import redis_client
from worker.contract.events import EventError, parse_event
from worker.queue.celery_app import RECONCILE_QUEUE, celery
from worker.queue.celery_app import app as celery_app
from worker.scim import ScimClient
from worker.store import audit, codec, keys, scripts
from worker.store.audit import AuditEntry
from worker.sync.rules import USER_MAPPING

BACKGROUND_OVER = 100
CHUNK = 50  # events per publish, and per progress step
KEEP_JOBS = 20
JOBS = keys.PREFIX + "imports"  # ZSET job id -> creation time (ms)


def job_key(job_id: str) -> str:
    return f"{keys.PREFIX}import:{job_id}"  # HASH: app, state, total, done, imported, ...


def items_key(job_id: str) -> str:
    return f"{keys.PREFIX}import:{job_id}:items"  # LIST of the events to publish (JSON)


@dataclass(frozen=True)
class Candidate:
    remote_id: str
    user_name: str
    attributes: dict[str, Any]  # flat SCIM attributes, as the client reads them
    status: str  # "New" or "Imported"
    directory_id: str | None  # the directory user with that username, when Imported


def directory_users_by_name(client: redis.Redis) -> dict[str, str]:
    """username -> id of every directory user not deleted (a scan of the projection)."""
    ids = [k.decode()[len(keys.user("")) :] for k in client.scan_iter(keys.user("*"), count=1000)]
    by_name: dict[str, str] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for user_id in chunk:
            pipe.hmget(keys.user(user_id), "rec", "del")
        for user_id, (record, deleted) in zip(chunk, pipe.execute(), strict=True):
            if record and not deleted:
                by_name[json.loads(record)["username"]] = user_id
    return by_name


def candidates(client: redis.Redis, scim: ScimClient) -> tuple[list[Candidate], int]:
    """The application's users that are not suspended, New first; and how many were skipped."""
    known = directory_users_by_name(client)
    found, suspended = [], 0
    for user in scim.list_users():
        if user.attributes.get("active") is False:
            suspended += 1
            continue
        name = user.attributes["userName"]
        directory_id = known.get(name)
        status = "Imported" if directory_id else "New"
        found.append(Candidate(user.id, name, user.attributes, status, directory_id))
    found.sort(key=lambda c: (c.status != "New", c.user_name.lower()))
    return found, suspended


def select(
    found: list[Candidate], wanted: Iterable[str] | None
) -> tuple[list[Candidate], list[str]]:
    """The New candidates named in ``wanted`` (remote ids or userNames; None: every New one),
    and notes about those that are not imported. An unknown name is an error (``KeyError``)."""
    if wanted is None:
        return [c for c in found if c.status == "New"], []
    index = {c.remote_id: c for c in found} | {c.user_name: c for c in found}
    wanted = list(dict.fromkeys(wanted))
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise KeyError(", ".join(unknown))
    chosen, notes = [], []
    picked = {index[w].remote_id: index[w] for w in wanted}  # a user named twice counts once
    for candidate in picked.values():
        if candidate.status == "New":
            chosen.append(candidate)
        else:
            notes.append(
                f"{candidate.user_name}: already in the directory ({candidate.directory_id})"
            )
    return chosen, notes


def user_record(candidate: Candidate, user_id: str) -> dict[str, Any]:
    """A v1 user record from the application's attributes (the mapping, read backwards)."""
    record: dict[str, Any] = {"id": user_id, "state": "active"}
    for attribute, prop in USER_MAPPING.items():
        value = candidate.attributes.get(attribute)
        if isinstance(value, str) and value:
            record[prop] = value
    return record


@dataclass(frozen=True)
class Job:
    id: str
    app: str
    total: int
    background: bool
    refused: list[str]  # users whose attributes the event contract refuses


def _now(client: redis.Redis) -> float:
    """The pool's clock (Redis's), which stamps the jobs and the events an import publishes:
    never a host's, which may be off."""
    return scripts.redis_now_ms(client) / 1000


def start(client: redis.Redis, app_id: str, chosen: list[Candidate]) -> Job:
    """Store a job; run it here (up to ``BACKGROUND_OVER`` users) or in the background."""
    job_id = uuid.uuid4().hex[:12]
    created = _now(client)
    now = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    documents, refused = [], []
    for n, candidate in enumerate(chosen):
        document = {
            "id": f"import-{job_id}-{n}",
            "type": "user.created",
            "occurred_at": now,
            "data": {"user": user_record(candidate, f"imp-{job_id}-{n}")},
        }
        try:
            parse_event(document)
        except EventError as error:
            refused.append(f"{candidate.user_name}: {error}")
            continue
        documents.append({"remote_id": candidate.remote_id, "event": document})
    background = len(documents) > BACKGROUND_OVER
    pipe = client.pipeline()
    pipe.hset(
        job_key(job_id),
        mapping={
            "app": app_id,
            "state": "queued",
            "total": len(documents),
            "done": 0,
            "imported": 0,
            "refused": len(refused),
            "background": int(background),
            "created": created,
        },
    )
    if documents:
        pipe.rpush(items_key(job_id), *(json.dumps(d) for d in documents))
    pipe.zadd(JOBS, {job_id: int(created * 1000)})
    pipe.execute()
    _forget_old_jobs(client)
    job = Job(job_id, app_id, len(documents), background, refused)
    if background:
        celery().send_task("prov.import", args=[job_id], queue=RECONCILE_QUEUE)
    else:
        run(client, job_id)
    return job


def run(client: redis.Redis, job_id: str) -> dict[str, str]:
    """Publish a job's events from where it stopped (a redelivered task resumes; event ids
    make a repeat a duplicate), with progress, per-user entries and a completion entry."""
    from worker.queue.publish import publish

    state = progress(client, job_id)
    if state.get("state") in ("done", None):
        return state
    app_id, total = state["app"], int(state["total"])
    client.hset(job_key(job_id), mapping={"state": "running", "started": _now(client)})
    done = int(state["done"])
    try:
        while done < total:
            items = [
                json.loads(i) for i in client.lrange(items_key(job_id), done, done + CHUNK - 1)
            ]
            result = publish(client, [parse_event(i["event"]) for i in items])
            accepted = set(result.accepted)
            pipe = client.pipeline()
            for item in items:
                if item["event"]["id"] in accepted:
                    audit.record(pipe, _user_entry(app_id, item))
            pipe.hset(job_key(job_id), "done", done + len(items))
            pipe.hincrby(job_key(job_id), "imported", len(accepted))
            pipe.execute()
            done += len(items)
    except Exception as error:
        client.hset(job_key(job_id), mapping={"state": "failed", "error": str(error)[:300]})
        _complete(client, job_id, "failure", f"import stopped after {done} of {total}: {error}")
        raise
    client.hset(job_key(job_id), mapping={"state": "done", "finished": _now(client)})
    state = progress(client, job_id)
    detail = f"source=import: {state['imported']} users created in the directory from {app_id}"
    if int(state.get("refused", 0)):
        detail += f"; {state['refused']} refused by the event contract"
    _complete(client, job_id, "success", detail)
    return state


def _user_entry(app_id: str, item: dict[str, Any]) -> AuditEntry:
    user = item["event"]["data"]["user"]
    detail = f"source=import: {user['username']} (app user {item['remote_id']}) created"
    return AuditEntry(
        "user_import",
        app_id,
        f"user:{user['id']}",
        "success",
        None,
        detail,
        item["remote_id"],
        causes=(item["event"]["id"],),
    )


def _complete(client: redis.Redis, job_id: str, outcome: str, detail: str) -> None:
    app_id = progress(client, job_id).get("app", "")
    audit.record(
        client, AuditEntry("import_complete", app_id, f"import:{job_id}", outcome, None, detail)
    )


def progress(client: redis.Redis, job_id: str) -> dict[str, str]:
    return {codec.text(k): codec.text(v) for k, v in client.hgetall(job_key(job_id)).items()}


def recent(client: redis.Redis, limit: int = 5) -> list[dict[str, Any]]:
    """The latest jobs, newest first (for ``status``)."""
    jobs = []
    for job_id in codec.members(client.zrevrange(JOBS, 0, limit - 1)):
        state = progress(client, job_id)
        if state:
            jobs.append({"id": job_id, **state})
    return jobs


def _forget_old_jobs(client: redis.Redis) -> None:
    old = codec.members(client.zrange(JOBS, 0, -KEEP_JOBS - 1))
    if old:
        client.delete(*(job_key(j) for j in old), *(items_key(j) for j in old))
        client.zrem(JOBS, *old)


def wait_applied(client: redis.Redis, job_id: str, timeout: float = 10.0) -> bool:
    """Wait until the directory projection holds the job's users (True) or ``timeout``."""
    items = [json.loads(i) for i in client.lrange(items_key(job_id), 0, -1)]
    user_keys = [keys.user(i["event"]["data"]["user"]["id"]) for i in items]
    deadline = time.monotonic() + timeout
    while True:
        pipe = client.pipeline(transaction=False)
        for user_key in user_keys:
            pipe.hexists(user_key, "rec")
        if all(pipe.execute()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@celery_app.task(name="prov.import")  # registered lazily: importing needs no configuration
def import_task(job_id: str) -> None:
    """The background half of a large import."""
    run(redis_client(), job_id)


__all__ = ["Candidate", "Job", "candidates", "recent", "run", "select", "start", "wait_applied"]
