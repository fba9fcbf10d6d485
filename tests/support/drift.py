"""Changes made behind the product's back: straight into the storage of the SCIM test double
(``ScimServer.storage``), as an administrator editing the application by hand would. Nothing
of it goes over HTTP, so the request log shows only what the product sends."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

USER, GROUP = SimpleNamespace(name="User"), SimpleNamespace(name="Group")
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def _model(scim: Any, endpoint: str) -> Any:
    """The resource class the application itself stores (built from its schemas)."""
    return scim.app.provider.model_for_endpoint(endpoint)


def _find(scim: Any, type_name: str, name: str) -> Any:
    for resource in scim.storage.resources:
        if resource.meta.resource_type != type_name:
            continue
        if (resource.user_name if type_name == "User" else resource.display_name) == name:
            return resource.model_copy(deep=True)
    raise KeyError(f"no {type_name} {name!r} in the application")


def user_id(scim: Any, user_name: str) -> str:
    return _find(scim, "User", user_name).id


def group_id(scim: Any, name: str) -> str:
    return _find(scim, "Group", name).id


def edit_user(scim: Any, name: str, department: str | None = None, **fields: Any) -> None:
    """Set attributes of the user called ``name`` (model field names: ``display_name``,
    ``active``, ``user_name``, ``emails`` as dicts, ...)."""
    user = _find(scim, "User", name)
    for field, value in fields.items():
        setattr(user, field, value)
    if department is not None:
        extension = scim.app.provider.model_for(ENTERPRISE)
        user[extension] = extension(department=department)
    user = type(user).model_validate(user.model_dump())  # dicts become the app's models
    scim.storage.update(USER, user)


def add_user(scim: Any, user_name: str, **fields: Any) -> str:
    """A user the product never made; returns its id."""
    model = _model(scim, "/Users")
    return scim.storage.create(USER, model(user_name=user_name, active=True, **fields)).id


def add_users(scim: Any, names: list[str]) -> None:
    for name in names:
        add_user(scim, name)


def add_group(scim: Any, name: str, member_ids: list[str]) -> str:
    """A group the product never made; returns its id."""
    members = [{"value": m} for m in member_ids] or None
    group = _model(scim, "/Groups")(display_name=name, members=members)
    return scim.storage.create(GROUP, group).id


def delete_user(scim: Any, user_name: str) -> list[str]:
    """Delete a user and, as applications do, its memberships; returns the names of the
    groups it left (scim2-server itself would leave them pointing at nobody)."""
    gone = user_id(scim, user_name)
    scim.storage.delete(USER, gone)
    left = []
    for group in [r for r in scim.storage.resources if r.meta.resource_type == "Group"]:
        held = [m.value for m in group.members or []]
        if gone in held:
            set_members(scim, group.display_name, [m for m in held if m != gone])
            left.append(group.display_name)
    return left


def rename_group(scim: Any, name: str, new_name: str) -> None:
    group = _find(scim, "Group", name)
    group.display_name = new_name
    scim.storage.update(GROUP, group)


def set_members(scim: Any, name: str, member_ids: list[str]) -> None:
    group = _find(scim, "Group", name)
    model = _model(scim, "/Groups")
    group = model.model_validate(
        {**group.model_dump(), "members": [{"value": m} for m in member_ids] or None}
    )
    scim.storage.update(GROUP, group)


def members(scim: Any, name: str) -> list[str]:
    return [m.value for m in _find(scim, "Group", name).members or []]


def delete_group(scim: Any, name: str) -> None:
    scim.storage.delete(GROUP, group_id(scim, name))
