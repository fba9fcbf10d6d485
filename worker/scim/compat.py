"""Request forms and their fallbacks: what to send when an application does not implement the
form its profile starts with (authentik's "compatibility modes", learned instead of guessed).

Each operation has a chain of forms, tried in order. A form answered ``Unsupported`` (501,
405, or 400 ``invalidPath``/``noTarget``/``invalidSyntax``) moves the app to the next form for
good (``worker.store.learned``); the last form failing parks the object. Pure functions: the profile
and what was learned go in, the forms to use come out.

| operation | forms, in order |
|---|---|
| ``user_update`` | PATCH one operation per attribute, then PUT the whole user |
| ``group_rename`` | PATCH ``replace displayName``, then PUT the whole group |
| ``member_add`` | PATCH ``add members``, then PUT the whole group |
| ``member_remove`` | PATCH ``remove members[value eq "id"]`` (``filter``), then PATCH ``remove members`` with a value list (``value``), then PUT the whole group |

Every PATCH we send names its path, so the "path-less PATCH" form of some clients never
arises here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .profiles import Profile

CHAINS: dict[str, tuple[str, ...]] = {
    "user_update": ("patch", "put"),
    "group_rename": ("patch", "put"),
    "member_add": ("patch", "put"),
    "member_remove": ("filter", "value", "put"),
}


def initial_forms(profile: Profile) -> dict[str, str]:
    """The forms the profile starts with."""
    group = profile.group_patch
    return {
        "user_update": "patch" if profile.user_patch else "put",
        "group_rename": profile.group_rename if group else "put",
        "member_add": "patch" if group else "put",
        "member_remove": profile.member_remove_form if group else "put",
    }


def forms(profile: Profile, learned: Mapping[str, str]) -> dict[str, str]:
    """The form of each operation: the profile's, unless a later one was learned."""
    current = initial_forms(profile)
    for operation, form in learned.items():
        chain = CHAINS.get(operation)
        if chain and form in chain and chain.index(form) > chain.index(current[operation]):
            current[operation] = form
    return current


def next_form(profile: Profile, learned: Mapping[str, str], operation: str) -> str | None:
    """The form to try after the current one failed, or None when none is left."""
    chain = CHAINS[operation]
    position = chain.index(forms(profile, learned)[operation]) + 1
    return chain[position] if position < len(chain) else None


def effective(profile: Profile, learned: Mapping[str, str]) -> Profile:
    """The profile as the planner and the client should read it for this app."""
    chosen = forms(profile, learned)
    group_patch = chosen["member_add"] == "patch" and chosen["member_remove"] != "put"
    remove = chosen["member_remove"]
    return replace(
        profile,
        user_patch=chosen["user_update"] == "patch",
        group_patch=group_patch,
        member_remove_form=remove if remove != "put" else profile.member_remove_form,  # type: ignore[arg-type]
        group_rename=chosen["group_rename"],  # type: ignore[arg-type]
    )


def describe(operation: str, form: str) -> str:
    """A form in words, for audit entries and ``apps show``."""
    return {
        ("user_update", "patch"): "PATCH /Users (one operation per attribute)",
        ("user_update", "put"): "PUT /Users (the whole user)",
        ("group_rename", "patch"): "PATCH replace displayName",
        ("group_rename", "put"): "PUT /Groups (the whole group)",
        ("member_add", "patch"): "PATCH add members",
        ("member_add", "put"): "PUT /Groups (the whole group)",
        ("member_remove", "filter"): 'PATCH remove members[value eq "id"]',
        ("member_remove", "value"): "PATCH remove members with a value list",
        ("member_remove", "put"): "PUT /Groups (the whole group)",
    }.get((operation, form), f"{operation}={form}")


def tried(chosen: Mapping[str, str]) -> str:
    """The forms tried to reach each operation's ``chosen`` form, in words."""
    return "; ".join(
        f"{operation}: " + ", ".join(describe(operation, f) for f in chain[: chain.index(form) + 1])
        for operation, form in sorted(chosen.items())
        if (chain := CHAINS.get(operation)) and form in chain
    )


def operation_of(call: Any) -> str | None:
    """The operation whose form a planned call (``worker.sync.plan``) was sent in, if it has forms."""
    kind = type(call).__name__
    if kind in ("UpdateUser", "SetActive"):
        return "user_update"
    if kind == "RenameGroup":
        return "group_rename"
    if kind == "PatchMembers":
        return "member_remove" if call.remove else "member_add"
    return None
