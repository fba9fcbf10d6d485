"""Attribute mappings of an app (the article's "Export Attribute Mapping"): the required and
optional user attributes, and which optional ones an administrator excluded.

An excluded attribute is no longer sent and is not cleared in the application (the planner
leaves attributes absent from the desired state alone); including one again sends it to the
users the app holds, and only it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from worker.apps import lifecycle
from worker.store import apps
from worker.store.apps import AppConfig, AppError
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror
from worker.sync.rules import OPTIONAL_ATTRIBUTES, REQUIRED_ATTRIBUTES

# SCIM attribute, directory property, the article's "JumpCloud UI Field Name", in its order.
TABLE: tuple[tuple[str, str, str], ...] = (
    ("userName", "username", "Username"),
    ("name.givenName", "firstname", "First Name"),
    ("name.familyName", "lastname", "Last Name"),
    ("displayName", "displayname", "Display Name"),
    ("active", "state", "Status"),
    ("emails", "email", "Company Email"),
    ("externalId", "employee_id", "Employee ID"),
    ("department", "department", "Department"),
)
ALIASES = {
    "emails:value": "emails",
    "emails.value": "emails",
    'emails[type eq "work"].value': "emails",
}


@dataclass(frozen=True)
class Mapping:
    attribute: str  # SCIM attribute, as the article's table names it
    property: str  # directory property
    label: str
    required: bool
    included: bool


def table(app: AppConfig) -> list[Mapping]:
    excluded = set(app.excluded_attributes)
    return [
        Mapping(attr, prop, label, attr in REQUIRED_ATTRIBUTES, attr not in excluded)
        for attr, prop, label in TABLE
    ]


def canonical(name: str) -> str:
    """The attribute named ``name`` (case-insensitive, a few aliases); ``AppError`` otherwise."""
    names = {attr.lower(): attr for attr, _, _ in TABLE} | ALIASES
    attribute = names.get(name.strip().lower()) or names.get(name.strip())
    if attribute is None:
        known = ", ".join(attr for attr, _, _ in TABLE)
        raise AppError(f"unknown attribute {name!r}; the mapped attributes are: {known}")
    return attribute


def excluded_after(
    current: Iterable[str], exclude: Iterable[str], include: Iterable[str], restore: bool
) -> tuple[str, ...]:
    """The excluded set after a change: defaults restored first, then excludes and includes."""
    exclude = {canonical(a) for a in exclude}
    include = {canonical(a) for a in include}
    required = sorted(exclude & REQUIRED_ATTRIBUTES)
    if required:
        raise AppError(
            f"{', '.join(required)} {'is' if len(required) == 1 else 'are'} required and cannot "
            f"be excluded; the optional attributes are: {', '.join(OPTIONAL_ATTRIBUTES)}"
        )
    both = sorted(exclude & include)
    if both:
        raise AppError(f"{', '.join(both)} cannot be both excluded and included")
    result = (set() if restore else set(current)) | exclude
    result -= include
    return tuple(a for a in OPTIONAL_ATTRIBUTES if a in result)


@dataclass(frozen=True)
class Change:
    app: AppConfig
    excluded: list[str]  # newly excluded
    included: list[str]  # newly included again
    marked: int  # users re-synced


def change(
    client: redis.Redis,
    app_id: str,
    *,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    restore: bool = False,
) -> Change:
    """Apply a change of mappings (audited as ``idm_integration_update``); users the app holds
    are re-synced when an attribute is included again (an exclusion sends nothing)."""
    app = apps.load(client, app_id)
    if app is None:
        raise AppError(f"no app {app_id!r} (see `provisioner apps list`)")
    try:
        new = excluded_after(app.excluded_attributes, exclude, include, restore)
    except AppError as error:
        lifecycle.audit_step(client, lifecycle.UPDATE, app_id, "failure", f"mappings: {error}")
        raise
    before = set(app.excluded_attributes)
    excluded = [a for a in new if a not in before]
    included = [a for a in OPTIONAL_ATTRIBUTES if a in before and a not in new]
    if not excluded and not included:
        return Change(app, [], [], 0)
    app = apps.update(client, app_id, excluded_attributes=new)
    marked = 0
    if included and lifecycle.syncing(client, app_id):
        users = Mirror(client, app_id).known_ids("user")
        marked = lifecycle.mark(client, [ReconcileKey(app_id, "user", u) for u in users])
    parts = [f"excluded {', '.join(excluded)}"] if excluded else []
    parts += [f"included {', '.join(included)}"] if included else []
    detail = f"mappings: {'; '.join(parts)}; {marked} users re-synced"
    lifecycle.audit_step(client, lifecycle.UPDATE, app_id, "success", detail)
    return Change(app, excluded, included, marked)
