"""Reading an application's answers: what it holds after a write, compared with what was sent.

Pure functions. Applications differ from the RFC in quiet ways: they drop attributes they do
not store, store their own form of a value (a lower-cased address), ignore members sent on a
create or answer a PATCH with 200 without doing it. The mirror must record what the app
holds, so that the next plan completes what is missing, and must remember why a value differs,
so that nothing is sent again and again for an answer that will never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.contract.model import MirrorGroup, MirrorUser

# Never learned as unsupported: an app that refuses them is refused (park), not worked around.
REQUIRED = frozenset({"userName", "active"})


@dataclass(frozen=True)
class UserAnswer:
    entry: MirrorUser
    unsupported: tuple[str, ...] = ()  # sent with a value, absent from the answer
    normalized: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # new this answer


def user_answer(
    remote_id: str,
    sent: Mapping[str, Any],
    held: Mapping[str, Any] | None,
    before: MirrorUser | None,
) -> UserAnswer:
    """The mirror entry after a user write, from what was ``sent`` and what the app answered
    (``held``: its attributes, or None when it answered without a body).

    Without a body, the entry is what we held before overlaid with what was sent. With one,
    the entry is the answer; a value it stores in its own form is remembered as normalized,
    and an optional attribute sent with a value and missing from the answer is unsupported.
    """
    normalized = dict(before.normalized) if before is not None else {}
    if held is None:
        merged = {**(before.attributes if before is not None else {}), **sent}
        for attribute in sent:
            normalized.pop(attribute, None)
        attributes = {k: v for k, v in merged.items() if v is not None}
        return UserAnswer(MirrorUser(remote_id, attributes, normalized))
    unsupported: list[str] = []
    fresh: dict[str, tuple[Any, Any]] = {}
    for attribute, value in sent.items():
        normalized.pop(attribute, None)
        stored = held.get(attribute)
        if stored == value or (value is None and stored is None):
            continue
        if stored is None and attribute not in REQUIRED:
            unsupported.append(attribute)
        elif attribute != "active":  # a refused (de)activation is never "normalized"
            fresh[attribute] = (value, stored)
    normalized.update(fresh)
    # what we knew before and this answer still shows as it was
    for attribute, (_, stored) in list(normalized.items()):
        if held.get(attribute) != stored:
            del normalized[attribute]
    return UserAnswer(MirrorUser(remote_id, dict(held), normalized), tuple(unsupported), fresh)


def group_members(
    sent: Mapping[str, str],
    answer_member_ids: frozenset[str] | None,
    known: Mapping[str, str],
) -> dict[str, str]:
    """The members of a group as the mirror keeps them (directory id -> remote id).

    ``sent``: the members the group should hold after the write; ``answer_member_ids``: the
    remote ids the app answered with (None when the answer says nothing of members);
    ``known``: directory id -> remote id of every member we could recognise. A remote id we
    cannot recognise is kept as ``"?<remote id>"``, as a taken-over group's are."""
    if answer_member_ids is None:
        return dict(sent)
    by_remote = {rid: user for user, rid in known.items()}
    by_remote.update({rid: user for user, rid in sent.items()})
    return {by_remote.get(rid, f"?{rid}"): rid for rid in sorted(answer_member_ids)}


def ignored_members(
    add: Mapping[str, str], remove: Mapping[str, str], held: Mapping[str, str]
) -> str:
    """What a membership PATCH answered 200 for but did not do, in words ('' if nothing)."""
    not_added = sorted(u for u in add if u not in held)
    not_removed = sorted(u for u in remove if u in held)
    parts = []
    if not_added:
        parts.append(f"adding {len(not_added)} members")
    if not_removed:
        parts.append(f"removing {len(not_removed)} members")
    return " and ".join(parts)


def group_entry(
    remote_id: str,
    sent_name: str,
    members: dict[str, str],
    answer_name: str | None,
    before: MirrorGroup | None,
) -> MirrorGroup:
    """A group's mirror entry after a write: the name the app holds (remembered as normalized
    when it differs from what was sent, unless it is the old name kept) and ``members``."""
    normalized = dict(before.normalized) if before is not None else {}
    if answer_name is None or answer_name == sent_name:
        normalized.pop("displayName", None)
        return MirrorGroup(remote_id, sent_name, members, normalized)
    old = before.display_name if before is not None else None
    if answer_name != old:
        normalized["displayName"] = (sent_name, answer_name)
    return MirrorGroup(remote_id, answer_name, members, normalized)
