"""Target profiles: what an application accepts, as data (authentik's "compatibility modes").

The client and the engine read these fields instead of branching on the vendor's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from scim2_models import ServiceProviderConfig


@dataclass(frozen=True)
class Profile:
    """How to talk to one kind of SCIM application."""

    name: str
    user_patch: bool
    """Send PATCH for users; otherwise PUT the whole resource."""
    group_patch: bool
    """Send PATCH for groups; otherwise PUT the whole group (members included)."""
    member_remove_form: Literal["filter", "value"]
    """``filter``: one ``remove`` per member with ``members[value eq "id"]`` (RFC 7644);
    ``value``: one ``remove`` with ``path: members`` and a value list (Entra style)."""
    members_per_patch: int
    """Maximum member changes (adds + removes) in one PATCH request."""
    filter_supported: bool
    requests_per_second: float
    burst: int
    user_delete: Literal["deactivate", "delete"] = "deactivate"
    """What a user deleted in the directory becomes in the application."""
    enterprise_department: bool = True
    """Send ``department`` in the enterprise User extension."""


ZSCALER = Profile(
    name="zscaler",
    user_patch=False,  # ZIA documents PUT for users; PATCH on Users is only confirmed for ZPA
    group_patch=True,
    member_remove_form="filter",
    members_per_patch=100,
    filter_supported=True,
    requests_per_second=5.0,
    burst=5,
    user_delete="deactivate",
    enterprise_department=True,
)

GENERIC = Profile(
    name="generic",
    user_patch=True,
    group_patch=True,
    member_remove_form="filter",
    members_per_patch=100,
    filter_supported=True,
    requests_per_second=25.0,
    burst=10,
    user_delete="deactivate",
    enterprise_department=True,
)

PROFILES: dict[str, Profile] = {"zscaler": ZSCALER, "generic": GENERIC}


def generic_from_config(spc: ServiceProviderConfig) -> Profile:
    """The generic profile, adjusted to what a ``/ServiceProviderConfig`` announces."""
    patch = bool(spc.patch and spc.patch.supported)
    filter_supported = bool(spc.filter and spc.filter.supported)
    return replace(GENERIC, user_patch=patch, group_patch=patch, filter_supported=filter_supported)


def profile_by_name(name: str, spc: ServiceProviderConfig | None = None) -> Profile:
    """The named profile; ``generic`` is adjusted to ``spc`` when given."""
    if name not in PROFILES:
        raise ValueError(f"unknown SCIM profile {name!r} (known: {', '.join(sorted(PROFILES))})")
    if name == "generic" and spc is not None:
        return generic_from_config(spc)
    return PROFILES[name]
