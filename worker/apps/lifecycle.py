"""The integration's lifecycle: activate, update, reauth, deactivate, remove.

Every step is audited under the article's name (``idm_integration_activate|update|reauth|
delete``) with its outcome and reason, refusals included; a refused step changes nothing.
Changes trigger exactly the reconciles they call for (``update``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import redis

from worker.contract.model import UserDeletePolicy
from worker.queue import metrics
from worker.queue.workqueue import Workqueue
from worker.scim import (
    Invalid,
    NotFound,
    Profile,
    ScimClient,
    ScimError,
    Transient,
    Unauthorized,
    make_http_client,
    profile_by_name,
)
from worker.store import apps, audit, codec, keys, learned, projection
from worker.store.apps import AppConfig, AppError, Network
from worker.store.audit import AuditEntry
from worker.store.keys import Kind, ReconcileKey
from worker.store.mirror import Mirror
from worker.sync import bulk
from worker.sync.dryrun import DRY_RUN, is_dry_run
from worker.sync.listing import SeedReport, seed_at_activation

ACTIVATE, UPDATE = "idm_integration_activate", "idm_integration_update"
REAUTH, DELETE = "idm_integration_reauth", "idm_integration_delete"


class Refused(AppError):
    """The application or the integration's state refused the step (audited, nothing changed)."""


def audit_step(client: redis.Redis, name: str, app_id: str, outcome: str, detail: str) -> None:
    """One entry of the integration's audit trail (object ``app:<id>``)."""
    audit.record(client, AuditEntry(name, app_id, f"app:{app_id}", outcome, None, detail))


def _refuse(client: redis.Redis, name: str, app_id: str, reason: str) -> Refused:
    audit_step(client, name, app_id, "failure", reason)
    return Refused(reason)


def _load(client: redis.Redis, name: str, app_id: str) -> AppConfig:
    app = apps.load(client, app_id)
    if app is None:
        raise _refuse(client, name, app_id, f"no app {app_id!r} (see `provisioner apps list`)")
    return app


def syncing(client: redis.Redis, app_id: str) -> bool:
    """Active and not paused: the worker reconciles the app's keys."""
    return bool(client.sismember(keys.APPS_ACTIVE, app_id))


def mark(client: redis.Redis, reconcile_keys: Iterable[ReconcileKey]) -> int:
    """Mark keys dirty and wake the workers; returns how many were marked."""
    from worker.queue.celery_app import send_reconcile

    all_keys = sorted(set(reconcile_keys))
    queue = Workqueue(client)
    for start in range(0, len(all_keys), 1000):
        send_reconcile(queue.mark(all_keys[start : start + 1000]))
    return len(all_keys)


# -- verification ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checked:
    """What the check of an application read: its profile (``generic``: as its
    ``ServiceProviderConfig`` adjusts it), and what that announces of Bulk."""

    profile: Profile
    bulk_limits: tuple[int, int]  # maxOperations, maxPayloadSize; (0, 0): no Bulk


def verify(base_url: str, token_file: str, profile: str, network: Network | None = None,
           app_id: str = "") -> Checked:  # fmt: skip
    """``ServiceProviderConfig`` then an authenticated read, over the app's ``network``;
    ``AppError`` with a clear reason. The requests count as ``app_id``'s."""
    token = apps.read_token(token_file)
    try:
        with make_http_client(base_url, token, network=network) as http:
            scim = ScimClient(http, profile_by_name(profile), metrics.scim_recorder(app_id))
            config = scim.service_provider_config()
            scim.verify()
    except ScimError as error:
        raise AppError(refusal_reason(error, base_url)) from None
    checked = profile_by_name(profile, config if profile == "generic" else None)
    return Checked(checked, bulk.announced(config))


def refusal_reason(error: ScimError, base_url: str) -> str:
    """What an administrator needs to read when the check of an application fails."""
    host = urlsplit(base_url).netloc
    detail = error.detail
    if isinstance(error, Unauthorized):
        return f"{host} refused the token (HTTP {error.status}): check the token file"
    if isinstance(error, Transient) and error.status is None:
        if any(word in detail for word in ("SSL", "TLS", "CERTIFICATE", "certificate")):
            return (
                f"TLS error talking to {host}: {detail} (an app behind a private CA needs "
                "--ca-file; one that asks for a client certificate, --client-cert/--client-key)"
            )
        if "ProxyError" in detail:
            return f"the proxy refused the connection to {host}: {detail}"
        if detail.startswith("timeout"):
            return f"{host} did not answer in time: {detail}"
        return f"{host} is unreachable: {detail}"
    if isinstance(error, Transient):
        return f"{host} answered HTTP {error.status} ({detail}); try again later"
    if isinstance(error, (Invalid, NotFound)):
        status = f"HTTP {error.status}" if error.status else "a response"
        return (
            f"{base_url} is not a SCIM 2.0 service: {status} that is not SCIM to "
            f"/ServiceProviderConfig or /Users ({detail})"
        )
    return f"{host} refused the check: {error}"


# -- activate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activation:
    app: AppConfig
    marked: int
    listing: SeedReport | None = None  # what listing the app found (None: not listed)


def activate(
    client: redis.Redis,
    app_id: str,
    *,
    base_url: str | None = None,
    token_file: str | None = None,
    profile: str | None = None,
    group_management: bool | None = None,
    user_delete_policy: UserDeletePolicy | None = None,
    rate: float | None = None,
    burst: int | None = None,
    bulk: bool | None = None,
    bulk_wait_ms: int | None = None,
    listing: bool = True,
    **network: str | None,
) -> Activation:
    """Verify, list the app where that saves lookups (``listing.seed_at_activation``: the
    mirror is seeded with what it holds, within its rate limit, before the app is saved as
    active), save as active, then a full sync of everything the app covers. A known app keeps
    the settings not given; a new one needs ``base_url`` and ``token_file``. ``listing=False``
    leaves every object to be looked up one by one. ``network``: ``proxy``, ``ca_file``,
    ``client_cert``, ``client_key``, ``proxy_password_file`` as ``apps.network_change`` reads
    them."""
    from worker.sync.runner import full_sync

    app_id = apps.check_app_id(app_id)
    existing = apps.load(client, app_id)
    try:
        if existing is None and not (base_url and token_file):
            raise AppError(f"{app_id} is a new app: --base-url and --token-file are required")
        url = apps.check_base_url(base_url or existing.base_url)  # type: ignore[union-attr]
        path = apps.token_file_path(token_file or existing.token_file)  # type: ignore[union-attr]
        if existing and existing.active and path != existing.token_file:
            raise AppError(
                f"{app_id} is active: a new token is accepted only while the integration is "
                f"deactivated (`apps deactivate {app_id}`, `apps reauth {app_id} --token-file "
                f"F`, then `apps activate {app_id}`)"
            )
        profile_name = profile or (existing.profile if existing else "zscaler")
        reach = apps.network_change(existing.network if existing else Network(), **network)
        checked = verify(url, path, profile_name, reach, app_id)
    except AppError as error:
        raise _refuse(client, ACTIVATE, app_id, f"not activated: {error}") from None
    settings = {
        "base_url": url,
        "token_file": path,
        "profile": profile_name,
        "network": reach,
        "active": True,
        "paused": None,
        "bulk_limits": checked.bulk_limits,
    }
    optional = {
        "group_management": group_management,
        "user_delete_policy": user_delete_policy,
        "rate": rate,
        "burst": burst,
        "bulk": bulk,
        "bulk_wait_ms": bulk_wait_ms,
    }
    settings |= {k: v for k, v in optional.items() if v is not None}
    if existing is None:
        settings.setdefault("user_delete_policy", profile_by_name(profile_name).user_delete)
        app = AppConfig(id=app_id, **settings)  # type: ignore[arg-type]
    else:
        app = replace(existing, **settings)  # type: ignore[arg-type]
    # Before the app is active, so no reconcile of it looks up meanwhile (their keys are
    # skipped, then marked by the full sync); a reconcile of an app already active that got
    # there first is never overwritten.
    seeded = seed_at_activation(client, app, checked.profile) if listing else None
    # Keys left dirty from before would not be scheduled by the full sync's marks: drop them.
    Workqueue(client).drop_app(app_id)
    apps.save(client, app)
    count = full_sync(client, app_id)
    detail = f"verified {url} ({reach.describe()}); full sync of {count} objects"
    if seeded is not None:
        detail += f"; {seeded.describe()}"
    audit_step(client, ACTIVATE, app_id, "success", detail)
    return Activation(app, count, seeded)


# -- update ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Update:
    app: AppConfig
    changes: list[str]
    marked: int


def update(
    client: redis.Redis,
    app_id: str,
    *,
    base_url: str | None = None,
    profile: str | None = None,
    group_management: bool | None = None,
    user_delete_policy: UserDeletePolicy | None = None,
    dry_run: bool | None = None,
    rate: float | None = None,
    burst: int | None = None,
    bulk: bool | None = None,
    bulk_wait_ms: int | None = None,
    verify_every: float | None = None,
    verify_fix: bool | None = None,
    **network: str | None,
) -> Update:
    """Change settings; a new base URL or profile is verified first. Reconciles triggered:
    group management enabled -> the associated groups are looked up and taken over again;
    user delete policy -> delete: users deleted in the directory that the app still holds;
    dry run off -> a full sync (what was only planned is now sent); nothing otherwise.
    ``verify_every`` (seconds, 0: none) schedules ``verify`` in the pool, ``verify_fix`` has
    it repair; a change of schedule alone is no change of the application (nothing learned
    of it is forgotten). ``network`` (``proxy``, ``ca_file``, ``client_cert``, ``client_key``,
    ``proxy_password_file``, as ``apps.network_change`` reads them) is verified like a new base
    URL; a change of it alone forgets nothing either."""
    app = _load(client, UPDATE, app_id)
    new: dict[str, object] = {}
    try:
        if base_url is not None and apps.check_base_url(base_url) != app.base_url:
            new["base_url"] = apps.check_base_url(base_url)
        if profile is not None and profile != app.profile:
            profile_by_name(profile)
            new["profile"] = profile
        reach = apps.network_change(app.network, **network)
        checked = None
        if new or reach != app.network:
            url, profile_name = new.get("base_url", app.base_url), new.get("profile", app.profile)
            checked = verify(str(url), app.token_file, str(profile_name), reach, app_id)
    except (AppError, ValueError) as error:
        raise _refuse(client, UPDATE, app_id, f"not updated: {error}") from None
    for field, value in (
        ("group_management", group_management),
        ("user_delete_policy", user_delete_policy),
        ("rate", rate),
        ("burst", burst),
        ("bulk", bulk),
        ("bulk_wait_ms", bulk_wait_ms),
    ):
        if value is not None and getattr(app, field) != value:
            new[field] = value
    if dry_run is not None and dry_run != is_dry_run(app):
        new["extra"] = {**app.extra, DRY_RUN: "on" if dry_run else "off"}
    # neither the schedule nor the network is a change of the application
    others = _schedule(app, verify_every, verify_fix)
    if reach != app.network:
        others["network"] = reach
    if checked is not None and checked.bulk_limits != app.bulk_limits:
        others["bulk_limits"] = checked.bulk_limits  # read again: what the app announces now
    forgotten = None if others and not new else _forget_learned(client, app_id)
    new |= others
    if not new and not forgotten:
        audit_step(client, UPDATE, app_id, "success", "no change")
        return Update(app, [], 0)
    updated = apps.update(client, app_id, **new) if new else app
    reconcile_keys = _reconciles_for(client, app, updated)
    if forgotten and forgotten.unsupported_attributes:  # try them again on every user
        reconcile_keys |= {k for k in _app_keys(client, app_id) if k.kind == "user"}
    marked = mark(client, reconcile_keys) if syncing(client, app_id) else 0
    changes = [_describe(field, app, updated) for field in new]
    if forgotten:
        changes.append(f"forgot what was learned of the application ({_learned_text(forgotten)})")
    audit_step(client, UPDATE, app_id, "success", f"{'; '.join(changes)}; {marked} reconciles")
    return Update(updated, changes, marked)


def _forget_learned(client: redis.Redis, app_id: str) -> learned.Learned | None:
    """Forget what was learned of the app: forms, unsupported attributes, Bulk (a fixed or upgraded
    application is tried afresh); what was forgotten, or None if nothing was known."""
    knowledge = learned.load(client, app_id)
    if not knowledge:
        return None
    learned.reset(client, app_id)
    return knowledge


def _learned_text(knowledge: learned.Learned) -> str:
    parts = [f"{op}={form}" for op, form in sorted(knowledge.forms.items())]
    parts += [f"{attribute} unsupported" for attribute in sorted(knowledge.unsupported_attributes)]
    if knowledge.bulk_refused:
        parts.append("Bulk refused")
    parts += [f"{form} held in Bulk" for form in sorted(knowledge.bulk_held)]
    return ", ".join(parts)


def _app_keys(client: redis.Redis, app_id: str) -> set[ReconcileKey]:
    """Every key of the app's scope and every object it holds for us."""
    return set(projection.covered_keys(client, app_id)) | set(Mirror(client, app_id).known_keys())


def _schedule(app: AppConfig, every: float | None, fix: bool | None) -> dict[str, object]:
    """The verify schedule's changes (``every`` 0: no schedule)."""
    changes: dict[str, object] = {}
    if every is not None and (every or None) != app.verify_every:
        changes["verify_every"] = every or None
    if fix is not None and fix != app.verify_fix:
        changes["verify_fix"] = fix
    return changes


def _every_text(app: AppConfig) -> str:
    from worker.sync.verify_schedule import every_text

    return every_text(app.verify_every)


_DESCRIBED: dict[str, Callable[[AppConfig, AppConfig], str]] = {
    "verify_every": lambda old, new: f"verify every {_every_text(new)}",
    "verify_fix": lambda old, new: (
        f"scheduled verify {'repairs' if new.verify_fix else 'only reports'} drift"
    ),
    "extra": lambda old, new: f"dry run {'on' if is_dry_run(new) else 'off'}",
    "base_url": lambda old, new: f"base URL {new.base_url}",
    "network": lambda old, new: f"network: {new.network.describe()}",
    "bulk": lambda old, new: f"bulk {'on' if new.bulk else 'off'}",
    "bulk_limits": lambda old, new: f"Bulk announced: {bulk.describe(new.bulk_limits)}",
    "bulk_wait_ms": lambda old, new: f"bulk wait {old.bulk_wait_ms} -> {new.bulk_wait_ms} ms",
}
"""How a change of a setting is told, where ``<setting> <old> -> <new>`` would not do."""


def _describe(field: str, old: AppConfig, new: AppConfig) -> str:
    if field in _DESCRIBED:
        return _DESCRIBED[field](old, new)
    return f"{field.replace('_', ' ')} {getattr(old, field)} -> {getattr(new, field)}"


def _reconciles_for(client: redis.Redis, old: AppConfig, new: AppConfig) -> set[ReconcileKey]:
    """The keys a change of settings needs reconciled (see ``update``)."""
    marked: set[ReconcileKey] = set()
    mirror = Mirror(client, new.id)
    if new.group_management and not old.group_management:
        marked |= take_over_groups(client, new.id)
    if new.user_delete_policy == "delete" and old.user_delete_policy != "delete":
        held = mirror.known_ids("user")
        marked |= {ReconcileKey(new.id, "user", u) for u in _deleted(client, "user", held)}
    if is_dry_run(old) and not is_dry_run(new):  # what was only planned must now be sent
        marked |= set(projection.covered_keys(client, new.id)) | set(mirror.known_keys())
    return marked


def take_over_groups(client: redis.Redis, app_id: str) -> set[ReconcileKey]:
    """Forget the groups of the mirror (the app may have changed them while we did not look)
    except those deleted in the directory (still ours to delete); returns the group keys to
    reconcile: the associated groups, looked up and taken over by name, and those."""
    mirror = Mirror(client, app_id)
    held = mirror.known_ids("group")
    deleted = _deleted(client, "group", held)
    for group_id in held:
        if group_id not in deleted:
            mirror.forget_group(group_id)
    client.delete(keys.mirror_absent(app_id, "group"))
    associated = set(codec.texts(client.smembers(keys.app_groups(app_id))))
    return {ReconcileKey(app_id, "group", g) for g in associated | deleted}


def _deleted(client: redis.Redis, kind: Kind, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for object_id in ids:
        pipe.hexists(keys.user(object_id) if kind == "user" else keys.group(object_id), "del")
    return {i for i, gone in zip(ids, pipe.execute(), strict=True) if gone}


# -- reauth ------------------------------------------------------------------------------------
def reauth(client: redis.Redis, app_id: str, token_file: str) -> AppConfig:
    """A new token, only while deactivated (the article's rule); verified before it is kept.
    Clears a pause for bad credentials; ``activate`` resumes syncing."""
    app = _load(client, REAUTH, app_id)
    if app.active:
        raise _refuse(
            client,
            REAUTH,
            app_id,
            f"{app_id} is active: a new token is accepted only while the integration is "
            f"deactivated; run `provisioner apps deactivate {app_id}` first",
        )
    path = apps.token_file_path(token_file)
    try:
        verify(app.base_url, path, app.profile, app.network, app_id)
    except AppError as error:
        raise _refuse(client, REAUTH, app_id, f"token not changed: {error}") from None
    app = apps.update(client, app_id, token_file=path, paused=None)
    audit_step(client, REAUTH, app_id, "success", "new token verified; activate to resume syncing")
    return app


# -- deactivate and remove ---------------------------------------------------------------------
@dataclass(frozen=True)
class Deactivation:
    dropped: int
    still_in_flight: int  # reconciles that had not stopped when we stopped waiting


def deactivate(client: redis.Redis, app_id: str, *, drain_seconds: float = 30.0) -> Deactivation:
    """Stop syncing at once: reconciles in flight stop before their next call (the runner's
    ``still_ours`` checks the active flag) and we wait for them; queued work is dropped (a
    full sync re-derives it on reactivation). Nothing is removed from the application."""
    app = _load(client, DELETE, app_id)
    if not app.active:
        raise _refuse(client, DELETE, app_id, f"{app_id} is not active")
    apps.update(client, app_id, active=False)
    dropped = Workqueue(client).drop_app(app_id)
    audit.forget_causes(client, app_id)
    left = drain(client, app_id, drain_seconds)
    detail = f"deactivated; {dropped} queued reconciles dropped; nothing removed from the app"
    if left:
        detail += f"; {left} reconciles still finishing their last call"
    audit_step(client, DELETE, app_id, "success", detail)
    return Deactivation(dropped, left)


def drain(client: redis.Redis, app_id: str, seconds: float) -> int:
    """Wait until no reconcile of the app holds a lease; returns how many still do."""
    queue = Workqueue(client)
    deadline = time.monotonic() + seconds
    while True:
        held = queue.in_flight(app_id)
        if not held or time.monotonic() >= deadline:
            return len(held)
        time.sleep(0.05)


def remove(client: redis.Redis, app_id: str) -> None:
    """Forget a deactivated app: its configuration, mirror, queued and parked work."""
    app = _load(client, DELETE, app_id)
    if app.active:
        raise _refuse(
            client,
            DELETE,
            app_id,
            f"{app_id} is active: deactivate it first (`provisioner apps deactivate {app_id}`)",
        )
    Workqueue(client).forget_app(app_id)  # queued, parked, failures counted
    audit.forget_causes(client, app_id)
    apps.remove(client, app_id)
    audit_step(client, DELETE, app_id, "success", "removed: configuration and mirror forgotten")


__all__ = [
    "Activation",
    "Deactivation",
    "Refused",
    "Update",
    "activate",
    "audit_step",
    "deactivate",
    "drain",
    "mark",
    "reauth",
    "refusal_reason",
    "remove",
    "syncing",
    "take_over_groups",
    "update",
    "verify",
]
