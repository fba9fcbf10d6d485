"""What the pool is doing: backlog, dirty keys, in-flight reconciles, per app."""

from __future__ import annotations

from typing import Any

import redis

from worker.apps.importer import recent as recent_imports
from worker.queue import workqueue
from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE
from worker.queue.sweeper import alive_workers
from worker.scim.profiles import PROFILES
from worker.store import apps, keys, learned
from worker.store.mirror import Mirror
from worker.sync import bulk, guard, ratelimit
from worker.sync.dryrun import is_dry_run


def idle(client: redis.Redis) -> bool:
    """Nothing published left to apply and no reconcile dirty, in flight or waiting: what
    ``snapshot`` says as "idle", read cheaply (counts, in one atomic read) for polling."""
    pipe = client.pipeline(transaction=True)
    pipe.zcard(keys.PENDING_BATCHES)
    queue = workqueue.read_stats(pipe)
    pending, *counts = pipe.execute()
    return pending == 0 and queue(counts).idle


def snapshot(client: redis.Redis) -> dict[str, Any]:
    # One atomic read (MULTI): read in separate steps, a batch could be ingested between the
    # read of the dirty set and that of the backlog, and "idle" would be seen mid-pipeline.
    pipe = client.pipeline(transaction=True)
    pipe.zcard(keys.PENDING_BATCHES)
    pipe.hlen(keys.PARKED_BATCHES)
    pipe.hgetall(keys.COUNTERS)
    pipe.llen(INGEST_QUEUE)
    pipe.llen(RECONCILE_QUEUE)
    read_queue = workqueue.read_state(pipe)
    pending, parked_batches, counters, ingest_messages, reconcile_messages, *rest = pipe.execute()
    queue_state = read_queue(rest)
    stats = queue_state.stats
    workers = alive_workers(client)
    per_app: dict[str, dict[str, Any]] = {}
    for app in apps.list_apps(client):
        mine = queue_state.of_app(app.id)
        users, groups = Mirror(client, app.id).counts()
        knowledge = learned.load(client, app.id)
        per_app[app.id] = {
            "state": "paused" if app.paused else ("active" if app.active else "inactive"),
            "paused": app.paused,
            "dirty": len(mine.dirty),
            "in_flight": len(mine.in_flight),
            "parked": {str(k): reason for k, reason in mine.parked.items()},
            "users": users,
            "groups": groups,
            "held": guard.held(client, app.id),
            "breaker": ratelimit.breaker_state(client, app.id),
            "pace": _pace(client, app),
            "dry_run": is_dry_run(app),
            "network": app.network.shown(),  # the proxy without its password
            "learned": knowledge.as_json(),
            "bulk": _bulk(client, app, knowledge),
        }
    queue = {
        "pending_batches": pending,
        "parked_batches": parked_batches,
        "dirty": stats.dirty,
        "in_flight": stats.in_flight,
        "delayed": stats.delayed,
        "parked": stats.parked,
        "messages": {"ingest": ingest_messages, "reconcile": reconcile_messages},
    }
    return {
        "idle": pending == 0 and stats.idle,
        "queue": queue,
        "events": {k.decode(): int(v) for k, v in counters.items()},
        "workers": workers,
        "apps": per_app,
        "imports": recent_imports(client),
    }


def _bulk(client: redis.Redis, app: apps.AppConfig, knowledge: learned.Learned) -> dict[str, Any]:
    """Whether the app's writes go in SCIM Bulk requests, and how many so far: ``on`` (where
    its ServiceProviderConfig announces Bulk), ``off`` (``--no-bulk``), ``unsupported`` (its
    profile), ``refused`` (the app refused one)."""
    profile = PROFILES.get(app.profile)
    if not app.bulk:
        state = "off"
    elif profile is None or not profile.bulk:
        state = "unsupported"
    else:
        state = "refused" if knowledge.bulk_refused else "on"
    announced = bulk.describe(app.bulk_limits)
    return {"state": state, "announced": announced, "refused": knowledge.bulk_refused,
            **bulk.stats(client, app.id)}  # fmt: skip


def _pace(client: redis.Redis, app: apps.AppConfig) -> dict[str, Any] | None:
    """The pace the pool keeps for the app, as learned from its 429s (ratelimit.pace)."""
    profile = PROFILES.get(app.profile)
    rate = app.rate or (profile.requests_per_second if profile else None)
    burst = app.burst or (profile.burst if profile else 1)
    return ratelimit.pace(client, app.id, rate, burst) if rate else None


def render(state: dict[str, Any]) -> str:
    q, ev = state["queue"], state["events"]
    lines = [
        f"{'idle' if state['idle'] else 'busy'}; workers: {', '.join(state['workers']) or 'none'}",
        f"events: {ev.get('published', 0)} published, {ev.get('applied', 0)} applied, "
        f"{ev.get('stale', 0)} stale, {ev.get('ignored', 0)} ignored after a deletion",
        f"backlog: {q['pending_batches']} batches; reconciles: {q['dirty']} dirty, "
        f"{q['in_flight']} in flight, {q['delayed']} waiting to retry, {q['parked']} parked",
    ]
    for app_id, app in state["apps"].items():
        lines.append(
            f"app {app_id}: {app['state']}, {app['users']} users and {app['groups']} groups "
            f"held, {app['dirty']} dirty, {app['in_flight']} in flight, {len(app['parked'])} parked"
        )
        if app["paused"]:
            lines.append(f"  paused: {app['paused']}")
        if app.get("dry_run"):
            lines.append("  dry run: calls are planned and audited, not sent")
        knowledge = app.get("learned") or {}
        for attribute in knowledge.get("unsupported_attributes", []):
            lines.append(
                f"  warning: the application does not store {attribute}; it is not sent "
                f"(`provisioner apps update {app_id}` tries it again)"
            )
        for operation, form in knowledge.get("forms", {}).items():
            lines.append(f"  learned: {operation} is sent as {form} (`apps show {app_id}`)")
        for key, reason in app["parked"].items():
            lines.append(f"  parked {key}: {reason}")
        sent = app.get("bulk") or {}
        if sent.get("requests") or sent.get("refused"):
            lines.append(
                f"  bulk: {sent['state']}, {sent['requests']} Bulk requests carried "
                f"{sent['operations']} operations ({sent['failed']} failed)"
                + (f"; refused: {sent['refused']}" if sent["refused"] else "")
            )
        pace = app.get("pace")
        if pace and pace["refused"]:
            lines.append(
                f"  pace: {pace['requests_per_second']:g} requests/s ({pace['share']:.0%} of "
                f"{pace['ceiling']:g}), learned from {pace['refused']} refusals (429)"
            )
        if app["breaker"] != "closed":
            lines.append(f"  circuit breaker {app['breaker']}: the app failed repeatedly")
        if app["held"]:
            lines.append(
                f"  {len(app['held'])} deactivations/deletions held by the deletion guard: "
                f"`provisioner approve {app_id}` or `provisioner reject {app_id}`"
            )
    for job in state.get("imports", []):
        lines.append(
            f"import {job['id']} from {job['app']}: {job['state']}, {job['done']}/{job['total']} "
            f"published, {job['imported']} created in the directory"
        )
    return "\n".join(lines)
