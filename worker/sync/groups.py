"""Reconciling a group: its name and its members, as the app answered each write.

A group whose members are being provisioned right now waits for them (``Deferred``), so that
one PATCH carries them all; a change the app refuses may be one it already holds, and the
group is read back once before planning again.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from worker.contract.model import GroupFacts, MirrorGroup
from worker.queue.workqueue import Workqueue
from worker.scim import Conflict, Invalid, NotFound, NotSent, Unsupported
from worker.scim.bulk import BULK_ID_PREFIX
from worker.store import projection
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror
from worker.sync import answers, rules
from worker.sync.doubt import DoubtResolver
from worker.sync.executor import GONE, Executor, Outcome
from worker.sync.plan import (
    Call,
    CreateGroup,
    LookupGroup,
    PatchMembers,
    RemoveGroup,
    RenameGroup,
    ReplaceGroup,
    plan_group,
)
from worker.sync.session import ROUNDS, AppSession, why

MEMBER_WAIT = 600.0  # seconds a group may wait for members being provisioned (rate-limited)
MEMBER_RECHECK = 2.0  # and how often it looks again
MEMBER_SLICE = 64  # members looked at per round trip while checking

Step = tuple[MirrorGroup | None, bool]  # the mirror entry after a call, and whether to plan again


class Deferred(Exception):
    """Nothing to send yet; run the key again after ``delay`` seconds."""

    def __init__(self, delay: float):
        super().__init__(f"deferred for {delay}s")
        self.delay = delay


class GroupReconciler:
    """Reconciles the groups of one application."""

    def __init__(
        self,
        client: redis.Redis,
        session: AppSession,
        executor: Executor,
        doubt: DoubtResolver,
        mirror: Mirror,
        *,
        wait_for_members: bool = True,
    ):
        """Without ``wait_for_members``, the plan is the one as of now (``explain``)."""
        self.redis = client
        self.queue = Workqueue(client)
        self.session = session
        self.executor = executor
        self.doubt = doubt
        self.mirror = mirror
        self.wait_for_members = wait_for_members

    def reconcile(self, key: ReconcileKey, outcome: Outcome) -> None:
        if not self.session.settings.group_management:
            outcome.trace.append(f"group {key.id}: group management disabled, no group call")
            return
        facts = projection.group_facts(self.redis, key.app, key.id)
        entry, looked_up, in_doubt = self.mirror.load_group(key.id)
        if in_doubt:
            entry, looked_up = self.doubt.reread(key, entry, facts.name or None, outcome)
        remote_ids = self.mirror.remote_user_ids(facts.members)
        missing = [u for u, rid in remote_ids.items() if rid is None]
        on_their_way = self.session.scim.bulk_ids(missing) if missing else {}
        if missing and len(on_their_way) == len(missing):
            # every member missing is being created in the Bulk request now filling: the
            # group goes in it too, naming them by bulkId (RFC 7644 §3.7.2)
            remote_ids |= on_their_way
            missing = []
            outcome.trace.append(f"group {key.id}: members created in the same Bulk request")
        if (
            self.wait_for_members
            and facts.associated
            and not facts.deleted
            and self._members_on_their_way(key, missing, outcome)
        ):
            # The plan once they exist may start with a lookup, which needs no member: sent
            # now, it leaves one call fewer for after the wait.
            expected = {user_id: rid or "(on its way)" for user_id, rid in remote_ids.items()}
            soon = rules.group_intent(facts, entry, expected, self.session.settings)
            first = plan_group(soon, entry, self.session.profile, looked_up=looked_up)[:1]
            if first and isinstance(first[0], LookupGroup):
                self.call(key, first[0], entry, outcome)
            raise Deferred(MEMBER_RECHECK)
        self._converge(key, facts, entry, remote_ids, looked_up, outcome)

    def _converge(
        self,
        key: ReconcileKey,
        facts: GroupFacts,
        entry: MirrorGroup | None,
        remote_ids: dict[str, str | None],
        looked_up: bool,
        outcome: Outcome,
    ) -> None:
        """Plan and run until nothing is left to send."""
        intent = rules.group_intent(facts, entry, remote_ids, self.session.settings)
        outcome.trace.append(f"group {key.id}: {type(intent).__name__} ({why(intent)})")
        read_back = False
        for _ in range(ROUNDS):
            calls = plan_group(intent, entry, self.session.profile, looked_up=looked_up)
            if not calls:
                break
            for call in calls:
                try:
                    entry, replan = self.call(key, call, entry, outcome)
                    if any(rid and rid.startswith(BULK_ID_PREFIX) for rid in remote_ids.values()):
                        # named by bulkId in the call: now known by the ids the app gave them
                        remote_ids = {u: rid and self.session.scim.resolved(rid)
                                      for u, rid in remote_ids.items()}  # fmt: skip
                        intent = rules.group_intent(facts, entry, remote_ids, self.session.settings)
                        replan = True
                except Unsupported as error:
                    self.session.fall_back(call, error, key, outcome)
                    replan = True
                except Invalid as error:
                    # A refused change may be one the app already holds (a member it dropped
                    # with its deleted user): read the group back once, then plan again.
                    if read_back or not _may_read_back(error, entry, call):
                        raise
                    read_back = replan = True
                    outcome.trace.append(f"  {error}: reading the group back")
                    entry, _ = self.doubt.reread(key, entry, None, outcome)
                    intent = rules.group_intent(facts, entry, remote_ids, self.session.settings)
                looked_up = looked_up or isinstance(call, LookupGroup)
                if replan:
                    break

    def call(
        self, key: ReconcileKey, call: Call, entry: MirrorGroup | None, outcome: Outcome
    ) -> Step:
        """Run one call; returns the new mirror entry and whether to plan again."""
        match call:
            case LookupGroup(display_name=name):
                return self.doubt.lookup(key, name, outcome), True  # type: ignore[return-value]
            case CreateGroup():
                return self._create(key, call, outcome)
            case RenameGroup():
                assert entry is not None
                return self._rename(key, call, entry, outcome)
            case PatchMembers():
                assert entry is not None
                return self._patch_members(key, call, entry, outcome)
            case ReplaceGroup():
                return self._replace(key, call, entry, outcome)
            case RemoveGroup(remote_id=rid):
                with contextlib.suppress(NotFound):
                    self.executor.send(
                        outcome,
                        "group_delete_provision",
                        key,
                        lambda: self.session.scim.delete_group(rid),
                        status=204,
                    )
                self.mirror.forget_group(key.id)
                outcome.trace.append(f"  deleted {rid}")
                return None, False
        raise TypeError(f"not a group call: {call!r}")

    def _create(self, key: ReconcileKey, call: CreateGroup, outcome: Outcome) -> Step:
        name, members = call.display_name, call.members
        try:
            remote: Any = self.executor.send(
                outcome,
                "group_create_provision",
                key,
                lambda: self.session.scim.create_group(name, members.values()),
                status=201,
                creating=name,
            )
        except Conflict:
            adopted = self.doubt.after_conflict(key, name, outcome)
            if adopted is None:
                raise
            return adopted, True  # type: ignore[return-value]
        except NotSent:
            if not any(rid.startswith(BULK_ID_PREFIX) for rid in members.values()):
                raise
            # the members' Bulk request left without it, or their creates failed: wait for
            # them as for any member on its way
            raise Deferred(MEMBER_RECHECK) from None
        members = {user: self.session.scim.resolved(rid) for user, rid in members.items()}
        entry = self._held(remote.id, name, members, remote, None)
        self.mirror.save_group(key.id, entry)
        outcome.trace.append(f"  created {remote.id} with {len(members)} members")
        dropped = sum(1 for user in members if user not in entry.members)
        if dropped:
            outcome.trace.append(f"  the app kept {len(entry.members)}: completing")
            self.executor.note(
                key, f"the application ignored {dropped} members sent on create: sending them again"
            )
        return entry, bool(dropped)

    def _rename(
        self, key: ReconcileKey, call: RenameGroup, entry: MirrorGroup, outcome: Outcome
    ) -> Step:
        rid, name, old_name, held = call.remote_id, call.display_name, entry.display_name, entry
        answer = self.executor.on_remote(
            outcome,
            "group_update_provision",
            key,
            lambda: self.session.scim.rename_group(rid, name, held.members.values()),
        )
        if answer is GONE:
            return None, True
        entry = self._held(rid, name, dict(entry.members), answer, entry)
        self.mirror.save_group(key.id, entry)
        outcome.trace.append(f"  renamed to {name!r}")
        if entry.display_name == old_name != name:
            raise Unsupported(None, f"the application kept the name {old_name!r}")
        return entry, False

    def _patch_members(
        self, key: ReconcileKey, call: PatchMembers, entry: MirrorGroup, outcome: Outcome
    ) -> Step:
        rid, add, remove = call.remote_id, call.add, call.remove
        detail = f"+{len(add)} -{len(remove)} members"
        answer = self.executor.on_remote(
            outcome,
            "group_update_provision",
            key,
            lambda: self.session.scim.patch_members(rid, add.values(), remove.values()),
            detail=detail,
        )
        if answer is GONE:
            return None, True
        members = {u: r for u, r in entry.members.items() if u not in remove}
        members.update(add)
        known = {**entry.members, **add}
        entry = self._held(rid, entry.display_name, members, answer, entry, known)
        self.mirror.save_group(key.id, entry)
        outcome.trace.append(f"  members {detail}")
        ignored = answers.ignored_members(add, remove, entry.members)
        if ignored:  # answered 200 and did not do it: this form does not work here
            raise Unsupported(None, f"the application answered without {ignored}")
        return entry, False

    def _replace(
        self, key: ReconcileKey, call: ReplaceGroup, entry: MirrorGroup | None, outcome: Outcome
    ) -> Step:
        rid, name, members = call.remote_id, call.display_name, call.members
        answer = self.executor.on_remote(
            outcome,
            "group_update_provision",
            key,
            lambda: self.session.scim.replace_group(rid, name, members.values()),
        )
        if answer is GONE:
            return None, True
        entry = self._held(rid, name, dict(members), answer, entry)
        self.mirror.save_group(key.id, entry)
        outcome.trace.append(f"  replaced with {len(members)} members")
        missing = sum(1 for user in members if user not in entry.members)
        if missing:
            raise Invalid(
                None,
                f"the application does not keep the members it is sent ({missing} "
                "of them were left out of its answer to a PUT of the whole group)",
            )
        return entry, False

    def _held(
        self,
        remote_id: str,
        name: str,
        members: dict[str, str],
        answer: Any,
        before: MirrorGroup | None,
        known: dict[str, str] | None = None,
    ) -> MirrorGroup:
        """The mirror entry of a group after a write: the members and name the app answered
        with, where the profile says the app tells its members (else what was sent). An
        answer without ``members`` holds none (RFC 7643 §2.5: empty is unassigned)."""
        ids = None
        if answer is not None and self.session.profile.group_members_readable:
            ids = answer.member_ids
        held = answers.group_members(members, ids, known or {})
        answer_name = getattr(answer, "display_name", None) or None
        return answers.group_entry(remote_id, name, held, answer_name, before)

    def _members_on_their_way(
        self, key: ReconcileKey, missing: list[str], outcome: Outcome
    ) -> bool:
        """Whether to wait for members that are being provisioned right now: each one's
        creation marks the group again, and one PATCH then carries them all instead of one
        PATCH now and another per late member. Never waits longer than ``MEMBER_WAIT``.

        Looks at the missing members a slice at a time and stops at the first one still
        queued, so a large group waiting for many members costs one round trip a check."""
        waited_ms = self.queue.waited_ms(key) if missing else None  # on Redis's clock
        waited = waited_ms / 1000 if waited_ms is not None else 0.0
        if missing and waited < MEMBER_WAIT:
            for start in range(0, len(missing), MEMBER_SLICE):
                users = missing[start : start + MEMBER_SLICE]
                if self.queue.any_queued(ReconcileKey(key.app, "user", u) for u in users):
                    if waited_ms is None:
                        self.queue.wait_from_now(key)
                    outcome.trace.append(f"group {key.id}: waiting for members on their way")
                    return True
        if waited_ms is not None or not missing:
            outcome.stopped_waiting = True  # forgotten when the key is released (runner.py)
        return False


def _may_read_back(error: Invalid, entry: MirrorGroup | None, call: Call) -> bool:
    """Whether a refused change is worth reading the group back for: the app said no (not
    our own verdict) about a group it holds, to a call other than its creation."""
    return error.status is not None and entry is not None and not isinstance(call, CreateGroup)
