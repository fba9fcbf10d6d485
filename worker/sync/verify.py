"""Drift detection and repair: ``provisioner verify APP [--fix]`` (issue 10).

The application is read whole, a page at a time (a call per ``page_size`` objects), within
its rate limit and below live changes (``listing.Pacer(low_priority=True)``: a page waits
while a reconcile of the app is in flight or due within a second), then compared with the
INTENT (the rules applied to the projection), not with the mirror: the mirror only says which
account is which. The comparison is pure (``attribute_drift``, ``user_drift``,
``group_drift``); the driver (``run``) reads, compares and, with ``fix``, hands every drifted
object to the normal path: its mirror entry is marked in doubt (the next run reads it back
before planning) and its key is marked dirty, each with an audit entry ``drift: ...``
(outcome ``drift``). A user
deleted by hand is forgotten at once instead (read back, it would answer 404 and be
forgotten), and the groups that held it are read back and reconciled too: they wait for it
to be created again, then add it.

Never drift: attributes the app is known not to store (``learned``), excluded attributes,
members of a group whose app does not return them, users of the app that are not ours (not in
the mirror and not covered), and objects whose reconcile ran, or was queued, while the app was
being read (their state was moving; counted as ``busy``). Like a lookup, the listing also
seeds the mirror (``listing``): a covered object it knows nothing of is adopted or recorded as
absent.

A Redis lock per app lets one verify of it run at a time, from the CLI or the pool (the
schedule: ``verify_schedule.py``); the last result is kept in the app's hash for ``apps list``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim import ScimError
from worker.scim.client import RemoteGroup, RemoteUser
from worker.store import apps, audit, keys, learned, scripts
from worker.store.apps import AppConfig, AppError
from worker.store.audit import AuditEntry
from worker.store.mirror import Mirror
from worker.sync import listing, rules
from worker.sync.listing import Listed, SeedReport
from worker.sync.rules import Delete, DeleteGroup, Deprovision, Provision, SyncGroup

USER_ACTIVE = "user_active"  # active in the app, should not be
USER_MISSING = "user_missing"  # should be in the app, is not (and never was, for us)
USER_ATTRIBUTES = "user_attributes"  # in the app with other values than the intent's
GROUP_MISSING = "group_missing"  # a managed group with members that the app lacks
GROUP_RENAMED = "group_renamed"  # named otherwise in the app
GROUP_MEMBERS_MISSING = "group_members_missing"
GROUP_MEMBERS_EXTRA = "group_members_extra"
GROUP_NOT_DELETED = "group_not_deleted"  # deleted in the directory, still in the app
DELETED_BY_HAND = "deleted_by_hand"  # the mirror holds it, the app no longer does
KINDS = (
    USER_ACTIVE,
    USER_MISSING,
    USER_ATTRIBUTES,
    GROUP_MISSING,
    GROUP_RENAMED,
    GROUP_MEMBERS_MISSING,
    GROUP_MEMBERS_EXTRA,
    GROUP_NOT_DELETED,
    DELETED_BY_HAND,
)
# the article's name of the call a repair of each kind makes (audit entries of --fix)
AUDIT_NAMES = {
    USER_ACTIVE: "user_deprovision",
    USER_MISSING: "user_create_provision",
    USER_ATTRIBUTES: "user_update_provision",
    GROUP_MISSING: "group_create_provision",
    GROUP_RENAMED: "group_update_provision",
    GROUP_MEMBERS_MISSING: "group_update_provision",
    GROUP_MEMBERS_EXTRA: "group_update_provision",
    GROUP_NOT_DELETED: "group_delete_provision",
}
CASELESS = frozenset({"userName", "emails"})  # compared but for case (apps store their own)
SHOWN = 5  # ids named in a member drift's detail

LOCK_MS = 120_000  # a verify's lock, renewed while it runs
RESULT_FIELD = "verify"  # the last verify's result, in the app's hash (keys.app)


# -- the comparison (pure) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Drift:
    kind: str
    object: str  # "user:<id>" or "group:<id>"
    detail: str
    remote_id: str | None = None
    held: bool = False  # the mirror has an entry for it (a repair reads it back first)

    @property
    def audit_name(self) -> str:
        if self.kind == DELETED_BY_HAND:
            return f"{self.object.split(':', 1)[0]}_create_provision"
        return AUDIT_NAMES[self.kind]


def same_value(
    attribute: str,
    desired: Any,
    held: Any,
    normalized: Mapping[str, tuple[Any, Any]] | None = None,
) -> bool:
    """Whether the app's value is the intent's: equal; for ``userName`` and emails, equal but
    for case; or the app's own form of that value, as recorded in the mirror (``normalized``:
    attribute -> (value sent, value the app holds instead))."""
    if desired == held:
        return True
    caseless = attribute in CASELESS and isinstance(desired, str) and isinstance(held, str)
    if caseless and desired.casefold() == held.casefold():
        return True
    pair = (normalized or {}).get(attribute)
    return pair is not None and tuple(pair) == (desired, held)


def attribute_drift(
    desired: Mapping[str, Any],
    held: Mapping[str, Any],
    ignored: Iterable[str] = (),
    normalized: Mapping[str, tuple[Any, Any]] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """attribute -> (the intent's value, the app's) for each attribute that differs. A value
    the directory lacks (None) that the app holds is drift too: a reconcile that reads the app
    back clears it. ``ignored`` attributes (not stored by the app, excluded) never are."""
    skip = frozenset(ignored)
    return {
        attribute: (value, held.get(attribute))
        for attribute, value in desired.items()
        if attribute not in skip
        and not same_value(attribute, value, held.get(attribute), normalized)
    }


def user_drift(
    user_id: str,
    intent: rules.UserIntent,
    entry: MirrorUser | None,
    remote: RemoteUser | None,
    ignored: Iterable[str] = (),
) -> Drift | None:
    """How the app's copy of a user (``remote``: found by the mirror's id, else by name)
    differs from the intent, if it does."""
    obj, held = f"user:{user_id}", entry is not None
    gone = None
    if entry is not None:
        gone = Drift(DELETED_BY_HAND, obj, f"{entry.remote_id} is no longer in the application",
                     entry.remote_id, held)  # fmt: skip
    match intent:
        case Provision(attributes=desired):
            if remote is None:
                name = desired.get("userName")
                return gone or Drift(USER_MISSING, obj, f"{name!r} is not in the application")
            normalized = getattr(entry, "normalized", None)
            diff = attribute_drift(desired, remote.attributes, ignored, normalized)
            if not diff:
                return None
            if set(diff) == {"active"} and desired["active"] is False:
                return Drift(USER_ACTIVE, obj, "active in the application, suspended in the "
                             "directory", remote.id, held)  # fmt: skip
            return Drift(USER_ATTRIBUTES, obj, describe(diff), remote.id, held)
        case Deprovision(reason=why) | Delete(reason=why):
            if remote is None:
                return gone if isinstance(intent, Deprovision) else None
            if remote.attributes.get("active") is not False:
                return Drift(USER_ACTIVE, obj, f"active in the application: {why}", remote.id, held)
    return None


def group_drift(
    group_id: str,
    intent: rules.GroupIntent,
    entry: MirrorGroup | None,
    remote: RemoteGroup | None,
    *,
    members_readable: bool = True,
    renames: bool = True,
) -> list[Drift]:
    """How the app's copy of a group differs from the intent (name, members)."""
    obj, held = f"group:{group_id}", entry is not None
    match intent:
        case SyncGroup(name=name, members=desired):
            if remote is None:
                if entry is not None:
                    return [Drift(DELETED_BY_HAND, obj, f"{entry.remote_id} is no longer in the "
                                  "application", entry.remote_id, held)]  # fmt: skip
                if not desired:
                    return []
                detail = f"{name!r} ({len(desired)} members) is not in the application"
                return [Drift(GROUP_MISSING, obj, detail)]
            found = []
            normalized = getattr(entry, "normalized", None)
            if renames and not same_value("displayName", name, remote.display_name, normalized):
                detail = f"named {remote.display_name!r} in the application, {name!r} here"
                found.append(Drift(GROUP_RENAMED, obj, detail, remote.id, held))
            if members_readable:
                by_remote = {rid: user_id for user_id, rid in desired.items()}
                if entry is not None:
                    by_remote = {rid: u for u, rid in entry.members.items()} | by_remote
                have, want = set(remote.member_ids), set(desired.values())
                for kind, ids, what in (
                    (GROUP_MEMBERS_MISSING, want - have, "missing"),
                    (GROUP_MEMBERS_EXTRA, have - want, "not ours to keep"),
                ):
                    if ids:
                        named = sorted(by_remote.get(r, r) for r in ids)
                        detail = f"{len(ids)} members {what}: {_some(named)}"
                        found.append(Drift(kind, obj, detail, remote.id, held))
            return found
        case DeleteGroup(reason=why):
            if remote is not None and entry is not None:
                return [Drift(GROUP_NOT_DELETED, obj, f"still in the application: {why}",
                              remote.id, held)]  # fmt: skip
    return []


def describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``attribute: 'intent' here, 'app' in the application; ...``."""
    return "; ".join(f"{a}: {want!r} here, {got!r} in the application"
                     for a, (want, got) in sorted(diff.items()))  # fmt: skip


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


# -- the driver --------------------------------------------------------------------------------
@dataclass
class Report:
    app: str
    trigger: str  # "cli" or "schedule"
    started: float
    seconds: float = 0.0
    calls: int = 0
    waited: float = 0.0  # seconds the reading waited for the app's live changes
    users_in_app: int = 0
    groups_in_app: int | None = None  # None: group management off, groups not read
    drift: list[Drift] = field(default_factory=list)
    busy: int = 0  # objects not judged: their reconcile ran or was queued meanwhile
    fix: bool = False
    marked: int = 0  # keys marked for repair
    seeded: SeedReport = field(default_factory=SeedReport)
    error: str | None = None

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.drift:
            counts[d.kind] = counts.get(d.kind, 0) + 1
        return {k: counts[k] for k in KINDS if k in counts}

    def as_json(self, limit: int | None = None) -> dict[str, Any]:
        items = [asdict(d) | {"audit_name": d.audit_name} for d in self.drift[:limit]]
        return {
            "app": self.app,
            "trigger": self.trigger,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "calls": self.calls,
            "waited_for_live_changes": round(self.waited, 3),
            "users_in_app": self.users_in_app,
            "groups_in_app": self.groups_in_app,
            "drift": len(self.drift),
            "by_kind": self.counts(),
            "busy": self.busy,
            "fix": self.fix,
            "marked": self.marked,
            "seeded": {"users": asdict(self.seeded.users), "groups": asdict(self.seeded.groups)},
            "error": self.error,
            "items": items,
        }


def run(
    client: redis.Redis,
    app_id: str,
    *,
    fix: bool = False,
    trigger: str = "cli",
    low_priority: bool = True,
) -> Report:
    """Verify an app (one run at a time per app: ``AppError`` if one is running); the result
    is kept for ``apps list`` (``last_result``)."""
    app = apps.load(client, app_id)
    if app is None:
        raise AppError(f"no app {app_id!r} (see `provisioner apps list`)")
    lock = Lock(client, app_id)
    if not lock.acquire():
        raise AppError(f"a verify of {app_id} is already running")
    try:
        report = _verify(client, app, fix, trigger, lock.renew, low_priority)
    finally:
        lock.release()
    client.hset(keys.app(app_id), RESULT_FIELD, json.dumps(report.as_json(limit=20)))
    return report


def _verify(
    client: redis.Redis,
    app: AppConfig,
    fix: bool,
    trigger: str,
    keepalive: Any,
    low_priority: bool,
) -> Report:
    report = Report(app.id, trigger, scripts.redis_now_ms(client) / 1000, fix=fix)
    t0 = time.monotonic()
    try:
        scim, transport, profile = listing.paced_client(
            client, app, low_priority=low_priority, keepalive=keepalive
        )
    except (AppError, ScimError) as error:
        report.error = f"cannot read the application: {error}"
        return report
    try:
        users = listing.read(scim.list_users, transport, profile.page_size)
        groups = None
        if app.group_management:
            groups = listing.read(scim.list_groups, transport, profile.page_size)
    except ScimError as error:
        report.error = f"the application answered: {error}"
        return report
    finally:
        report.calls = transport.requests
        report.waited = transport.pace.yielded if isinstance(transport.pace, listing.Pacer) else 0
        report.seconds = time.monotonic() - t0
        scim.http.close()
    report.users_in_app = len(users.items)
    report.groups_in_app = None if groups is None else len(groups.items)
    ignored = set(learned.load(client, app.id).unsupported_attributes) | set(
        app.excluded_attributes
    )
    if not profile.enterprise_department:
        ignored.add("department")  # never sent
    report.drift, report.busy = compare_app(
        client,
        app,
        users,
        groups,
        report.seeded,
        ignored=ignored,
        members_readable=getattr(profile, "group_members_readable", True),
        renames=getattr(profile, "renames_groups", True),
        since=report.started,
    )
    if fix and report.drift:
        report.marked = repair(client, app, report.drift)
    report.seconds = time.monotonic() - t0
    return report


def compare_app(
    client: redis.Redis,
    app: AppConfig,
    users: Listed[RemoteUser],
    groups: Listed[RemoteGroup] | None,
    seeded: SeedReport,
    *,
    ignored: Iterable[str] = (),
    members_readable: bool = True,
    renames: bool = True,
    since: float = 0.0,
) -> tuple[list[Drift], int]:
    """Seed the mirror from the listing, then compare the app with the intent of every object
    in scope or in the mirror; returns the drift and how many objects were busy."""
    mirror = Mirror(client, app.id)
    settings = app.settings()
    scope_users, scope_groups = listing.scope(client, app.id)
    busy = busy_objects(client, app.id, since)

    entries, absent, doubt = mirror.snapshot("user")
    user_ids = sorted(set(scope_users) | entries.keys())
    user_facts = listing.users_facts(client, app.id, user_ids)
    known = entries.keys() | absent | doubt
    wanted = listing.wanted_users(user_facts, lambda u: u not in known and f"user:{u}" not in busy)
    seeded.users.wanted = len(wanted)
    listing.seed_users_from(mirror, wanted, users, seeded.users)
    entries = mirror.snapshot("user")[0]

    drift: list[Drift] = []
    skipped = 0
    by_id = {u.id: u for u in users.items}
    names = listing.user_index(users.items)
    for user_id in user_ids:
        if f"user:{user_id}" in busy:
            skipped += 1
            continue
        entry = entries.get(user_id)
        intent = rules.user_intent(user_facts[user_id], entry, settings)
        remote = by_id.get(entry.remote_id) if entry is not None else None
        if entry is None and isinstance(intent, Provision):
            remote = names.find(str(intent.attributes.get("userName") or ""))
        found = user_drift(user_id, intent, entry, remote, ignored)
        if found is not None:
            drift.append(found)

    if groups is None:
        return drift, skipped
    group_entries, absent, doubt = mirror.snapshot("group")
    group_ids = sorted(set(scope_groups) | group_entries.keys())
    group_facts = listing.groups_facts(client, app.id, group_ids)
    known = group_entries.keys() | absent | doubt
    wanted = listing.wanted_groups(
        group_facts, lambda g: g not in known and f"group:{g}" not in busy
    )
    seeded.groups.wanted = len(wanted)
    listing.seed_groups_from(mirror, wanted, groups, seeded.groups)
    group_entries = mirror.snapshot("group")[0]
    by_group_id = {g.id: g for g in groups.items}
    group_names = listing.group_index(groups.items)
    for group_id in group_ids:
        if f"group:{group_id}" in busy:
            skipped += 1
            continue
        facts, group_entry = group_facts[group_id], group_entries.get(group_id)
        remote_ids = {u: (e.remote_id if (e := entries.get(u)) else None) for u in facts.members}
        group_intent = rules.group_intent(facts, group_entry, remote_ids, settings)
        remote_group = by_group_id.get(group_entry.remote_id) if group_entry is not None else None
        if group_entry is None and isinstance(group_intent, SyncGroup):
            remote_group = group_names.find(group_intent.name)
        drift += group_drift(group_id, group_intent, group_entry, remote_group,
                             members_readable=members_readable, renames=renames)  # fmt: skip
    return drift, skipped


def busy_objects(client: redis.Redis, app_id: str, since: float) -> set[str]:
    """``kind:id`` of the app's objects whose reconcile is dirty, in flight or waiting now, or
    that were written (audited) since ``since``: what the app holds of them was moving."""
    from worker.queue.workqueue import Workqueue

    busy = {key.object for key in Workqueue(client).busy(app_id)}
    for entry in audit.read(client, app=app_id, since=since, limit=1_000_000):
        if entry["object"].startswith(("user:", "group:")):
            busy.add(entry["object"])
    return busy


def repair(client: redis.Redis, app: AppConfig, drift: list[Drift]) -> int:
    """Hand each drifted object to the normal path: its mirror entry in doubt (read back before
    the next plan; a user deleted by hand forgotten, and its groups marked), an audit entry
    ``drift: ...``, its key marked dirty and sent. Returns the keys marked (none while the app
    is not syncing: its full sync on activation repairs)."""
    from worker.queue.celery_app import send_reconcile
    from worker.queue.workqueue import Workqueue

    mirror = Mirror(client, app.id)
    pipe = client.pipeline()
    for d in drift:
        detail = f"drift: {d.kind}: {d.detail}"
        audit.record(pipe, AuditEntry(d.audit_name, app.id, d.object, "drift", None, detail,
                                      d.remote_id))  # fmt: skip
    pipe.execute()
    objects = {d.object for d in drift}
    gone = {d.object.partition(":")[2] for d in drift if d.kind == DELETED_BY_HAND
            and d.object.startswith("user:")}  # fmt: skip
    holding = _groups_holding(mirror, gone)
    for user_id in gone:
        # Read back, it would answer 404 and be forgotten; forgotten now, so that the groups
        # that held it, read back too, wait for it to be created again and then add it.
        mirror.forget_user(user_id)
    objects |= {f"group:{g}" for g in holding}
    doubted = {d.object for d in drift if d.held and d.object.partition(":")[2] not in gone}
    for obj in sorted(doubted | {f"group:{g}" for g in holding}):
        kind, _, object_id = obj.partition(":")
        mirror.begin_write(kind, object_id)  # type: ignore[arg-type]
    if not client.sismember(keys.APPS_ACTIVE, app.id):
        return 0
    reconcile_keys = [f"{app.id} {o.replace(':', ' ', 1)}" for o in sorted(objects)]
    queue = Workqueue(client)
    for start in range(0, len(reconcile_keys), 1000):
        send_reconcile(queue.mark(reconcile_keys[start : start + 1000]))
    return len(reconcile_keys)


def _groups_holding(mirror: Mirror, user_ids: set[str]) -> set[str]:
    """The groups of the mirror that list any of ``user_ids`` as a member."""
    if not user_ids:
        return set()
    groups = mirror.snapshot("group")[0]
    return {g for g, entry in groups.items() if user_ids & set(entry.members)}


# -- one at a time, and the last result -----------------------------------------------------------
def lock_key(app_id: str) -> str:
    return f"{keys.app(app_id)}:verify:lock"


# compare-and-renew, compare-and-delete: only the holder's token touches the lock
_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class Lock:
    """One verify of an app at a time, across the CLI and the pool (renewed while it runs)."""

    def __init__(self, client: redis.Redis, app_id: str):
        self.redis = client
        self.key = lock_key(app_id)
        self.token = uuid.uuid4().hex
        self.renewed = 0.0

    def acquire(self) -> bool:
        self.renewed = time.monotonic()
        return bool(self.redis.set(self.key, self.token, nx=True, px=LOCK_MS))

    def renew(self) -> None:
        if time.monotonic() - self.renewed >= 5:
            self.redis.eval(_RENEW, 1, self.key, self.token, LOCK_MS)
            self.renewed = time.monotonic()

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.token)


def last_result(client: redis.Redis, app_id: str) -> dict[str, Any] | None:
    raw = client.hget(keys.app(app_id), RESULT_FIELD)
    return None if raw is None else json.loads(raw)


__all__ = [
    "KINDS",
    "Drift",
    "Report",
    "attribute_drift",
    "group_drift",
    "last_result",
    "repair",
    "run",
    "same_value",
    "user_drift",
]
