"""Provisioning on demand, for one object of one app (Entra's "provision on demand"):

- ``explain``: coverage, desired state, mirror and the calls a reconcile would send, without
  side effects (reads of Redis and of the application only; nothing written anywhere);
- ``sync_now``: reconcile the object now, as a worker would (same lease, same audit), and
  return the trace.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis

from worker.contract.model import AppSettings
from worker.scim import ScimClient, ScimError
from worker.scim.profiles import Profile
from worker.store import audit, keys, learned, projection, scripts
from worker.store.apps import AppConfig
from worker.store.audit import AuditEntry
from worker.store.keys import Kind
from worker.store.mirror import Mirror
from worker.sync import rules
from worker.sync.dryrun import DryRunScim, OverlayMirror, is_dry_run
from worker.sync.plan import attribute_changes
from worker.sync.reconcile import Reconciler


@dataclass
class Explanation:
    app: dict[str, Any]
    kind: str
    id: str
    coverage: dict[str, Any]
    intent: str
    reason: str
    desired: dict[str, Any] | None
    mirror: dict[str, Any] | None
    changes: dict[str, Any] | None  # user attributes that differ from what the app holds
    calls: list[str] = field(default_factory=list)
    writes: int = 0
    trace: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(
    client: redis.Redis,
    app: AppConfig,
    kind: Kind,
    object_id: str,
    scim: ScimClient | None,
    profile: Profile,
) -> Explanation:
    """Plan one object's reconcile without sending a write or writing to Redis; ``scim=None``
    sends no request at all (lookups are assumed to find nothing)."""
    knowledge = learned.load(client, app.id)
    settings = app.settings()
    unsupported = frozenset(knowledge.unsupported_attributes)
    settings = replace(settings, excluded_attributes=settings.excluded_attributes | unsupported)
    mirror = Mirror(client, app.id)
    view = _user_view if kind == "user" else _group_view
    coverage, intent, desired, held, changes = view(client, app, mirror, object_id, settings)
    result = Explanation(
        _summary(app, profile, knowledge),
        kind,
        object_id,
        coverage,
        type(intent).__name__,
        getattr(intent, "reason", "") or "in scope",
        desired,
        held,
        changes,
    )
    _plan(client, app, keys.ReconcileKey(app.id, kind, object_id), scim, profile, knowledge, result)
    return result


View = tuple[
    dict[str, Any], Any, dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None
]
"""Coverage, intent, desired state, what the mirror holds, and (users) what differs."""


def _summary(app: AppConfig, profile: Profile, knowledge: learned.Learned) -> dict[str, Any]:
    return {
        "id": app.id,
        "state": "paused" if app.paused else ("active" if app.active else "inactive"),
        "profile": profile.name,
        "group_management": app.group_management,
        "user_delete_policy": app.user_delete_policy,
        "excluded_attributes": list(app.excluded_attributes),
        "learned": knowledge.as_json(),
        "dry_run": is_dry_run(app),
    }


def _user_view(
    client: redis.Redis, app: AppConfig, mirror: Mirror, user_id: str, settings: AppSettings
) -> View:
    facts = projection.user_facts(client, app.id, user_id)
    entry = mirror.user(user_id)
    intent = rules.user_intent(facts, entry, settings)
    coverage = {
        "covered": rules.is_covered(facts),
        "directly_associated": facts.directly_associated,
        "through_groups": sorted(facts.covering_groups),
        "record_known": facts.user.record is not None,
        "suspended": facts.user.suspended,
        "deleted": facts.user.deleted,
    }
    desired = getattr(intent, "attributes", None)
    held = changes = None
    if entry is not None:
        held = {"remote_id": entry.remote_id, "attributes": dict(entry.attributes)}
    if desired is not None and entry is not None:
        changes = attribute_changes(desired, entry.attributes, entry.normalized)
    return coverage, intent, desired, held, changes


def _group_view(
    client: redis.Redis, app: AppConfig, mirror: Mirror, group_id: str, settings: AppSettings
) -> View:
    facts = projection.group_facts(client, app.id, group_id)
    group = mirror.group(group_id)
    remote_ids = mirror.remote_user_ids(facts.members)
    intent = rules.group_intent(facts, group, remote_ids, settings)
    coverage = {
        "group_management": app.group_management,
        "associated": facts.associated,
        "deleted": facts.deleted,
        "name": facts.name,
        "members": len(facts.members),
        "members_in_app": sum(1 for r in remote_ids.values() if r is not None),
    }
    desired = (
        {"displayName": intent.name, "members": sorted(intent.members)}
        if isinstance(intent, rules.SyncGroup)
        else None
    )
    held = (
        {"remote_id": group.remote_id, "displayName": group.display_name,
         "members": sorted(group.members)}
        if group else None
    )  # fmt: skip
    return coverage, intent, desired, held, None


def _plan(
    client: redis.Redis,
    app: AppConfig,
    key: keys.ReconcileKey,
    scim: ScimClient | None,
    profile: Profile,
    knowledge: learned.Learned,
    result: Explanation,
) -> None:
    """The calls a reconcile of ``key`` would make, its trace, and what stopped it, into
    ``result``: reads sent (with ``scim``), writes only described, the mirror in memory."""
    planner = DryRunScim(scim, profile)
    entries: list[AuditEntry] = []
    reconciler = Reconciler(
        client,
        app,
        planner,  # type: ignore[arg-type]
        profile,
        mirror=OverlayMirror(client, app.id),
        record=entries.append,
        wait_for_members=False,
        knowledge=knowledge,
    )
    try:
        result.trace = reconciler.reconcile(key).trace
    except ScimError as error:
        result.error = f"the application answered: {error}"
    result.calls = [str(call) for call in planner.calls]
    result.writes = sum(1 for call in planner.calls if not call.sent)


def render(result: Explanation) -> str:
    app = result.app
    head = (
        f"app {app['id']}: {app['state']}, profile {app['profile']}, group management "
        f"{_on(app['group_management'])}, dry run {_on(app['dry_run'])}"
    )
    if app["excluded_attributes"]:
        head += f", excluded: {', '.join(app['excluded_attributes'])}"
    lines = [
        head,
        f"{result.kind} {result.id}",
        "coverage: " + ", ".join(f"{k}={_short(v)}" for k, v in result.coverage.items()),
        f"intent: {result.intent} ({result.reason})",
        f"desired: {_short(result.desired) if result.desired is not None else '-'}",
        f"mirror: {_short(result.mirror) if result.mirror is not None else 'nothing held'}",
    ]
    if result.changes is not None:
        lines.append(f"differs from the app: {_short(result.changes) if result.changes else 'no'}")
    if result.calls:
        lines.append("calls a reconcile would make:")
        lines += [f"  {call}" for call in result.calls]
    else:
        lines.append("calls a reconcile would make: none (the application already matches)")
    if result.error:
        lines.append(f"stopped: {result.error}")
    lines.append("nothing was written (explain has no side effects)")
    return "\n".join(lines)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _short(value: Any, limit: int = 400) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- sync --------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    key: str
    state: str
    calls: int
    trace: list[str]
    entries: list[dict[str, Any]]


RETRY_STATES = ("busy", "clean", "delayed", "throttled")


def sync_now(
    client: redis.Redis, app_id: str, kind: Kind, object_id: str, timeout: float = 30.0
) -> SyncResult:
    """Reconcile one key now in this process, under the workqueue's lease (a key a worker holds
    is waited for); a parked key or one waiting out a backoff runs at once."""
    from worker.queue.workqueue import Workqueue
    from worker.sync.runner import process_key

    key = keys.ReconcileKey(app_id, kind, object_id)
    queue = Workqueue(client)
    queue.unpark(key)
    started = scripts.redis_now_ms(client) / 1000  # the audit log's clock
    deadline = time.monotonic() + timeout
    while True:
        queue.run_now(key)  # no message: this process claims it
        result = process_key(client, key)
        if result.state not in RETRY_STATES or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    entries = audit.read(client, app=app_id, object_id=key.object, since=started)
    return SyncResult(str(key), result.state, result.outcome.calls, result.outcome.trace, entries)
