"""Reconciling a user: read the projection and the mirror, ask the rules and the planner, run
the calls, record each outcome in the mirror.

Trust, but verify: every write's answer is read (``answers.py`` compares it with what was
sent): an attribute the app never stores is learned as unsupported, a value it stores in its
own form is not sent again, a (de)activation it answered without taking moves the app to
another form of the request, else parks the user.
"""

from __future__ import annotations

from typing import Any

import redis

from worker.contract.model import MirrorUser
from worker.scim import Conflict, Invalid, Unsupported
from worker.store import projection
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror
from worker.sync import answers, rules
from worker.sync.doubt import DoubtResolver
from worker.sync.executor import GONE, Executor, Outcome
from worker.sync.plan import (
    Call,
    CreateUser,
    DeleteUser,
    LookupUser,
    SetActive,
    UpdateUser,
    plan_user,
)
from worker.sync.session import ROUNDS, AppSession, why

Step = tuple[MirrorUser | None, bool]  # the mirror entry after a call, and whether to plan again


class UserReconciler:
    """Reconciles the users of one application."""

    def __init__(
        self,
        client: redis.Redis,
        session: AppSession,
        executor: Executor,
        doubt: DoubtResolver,
        mirror: Mirror,
    ):
        self.redis = client
        self.session = session
        self.executor = executor
        self.doubt = doubt
        self.mirror = mirror

    def reconcile(self, key: ReconcileKey, outcome: Outcome) -> None:
        facts = projection.user_facts(self.redis, key.app, key.id)
        entry, looked_up, in_doubt = self.mirror.load_user(key.id)
        if in_doubt:
            user_name = (facts.user.record or {}).get(rules.USER_MAPPING["userName"])
            entry, looked_up = self.doubt.reread(key, entry, user_name or None, outcome)
        intent = rules.user_intent(facts, entry, self.session.settings)
        outcome.trace.append(f"user {key.id}: {type(intent).__name__} ({why(intent)})")
        try:
            for _ in range(ROUNDS):
                # again each round: an attribute learned unsupported is no longer wanted
                intent = rules.user_intent(facts, entry, self.session.settings)
                calls = plan_user(intent, entry, self.session.profile, looked_up=looked_up)
                if not calls:
                    break
                for call in calls:
                    entry, replan = self._run(key, call, entry, outcome)
                    looked_up = looked_up or isinstance(call, LookupUser)
                    if replan:
                        break
        finally:
            # Once the user exists in the app, its groups can take it as a member; checked
            # even after an error (or a crash before this point on an earlier run).
            if entry is not None and self.session.settings.group_management:
                groups = facts.covering_groups
                if groups:
                    missing = self.mirror.groups_missing_member(groups, key.id)
                    outcome.follow_up += [ReconcileKey(key.app, "group", g) for g in missing]

    def _run(
        self, key: ReconcileKey, call: Call, entry: MirrorUser | None, outcome: Outcome
    ) -> Step:
        """One call, and what its refusal teaches: another form of the request, or the
        enterprise extension left out."""
        try:
            return self.call(key, call, entry, outcome)
        except Unsupported as error:
            self.session.fall_back(call, error, key, outcome)
        except Invalid as error:
            if not self.session.refused_extension(call, error, key, outcome):
                raise
        return entry, True

    def call(
        self, key: ReconcileKey, call: Call, entry: MirrorUser | None, outcome: Outcome
    ) -> Step:
        """Run one call; returns the new mirror entry and whether to plan again."""
        match call:
            case LookupUser(user_name=user_name):
                return self.doubt.lookup(key, user_name, outcome), True  # type: ignore[return-value]
            case CreateUser():
                return self._create(key, call, outcome)
            case UpdateUser():
                assert entry is not None
                return self._update(key, call, entry, outcome)
            case SetActive():
                assert entry is not None
                return self._set_active(key, call, entry, outcome)
            case DeleteUser():
                assert entry is not None
                return self._delete(key, call, entry, outcome)
        raise TypeError(f"not a user call: {call!r}")

    def _create(self, key: ReconcileKey, call: CreateUser, outcome: Outcome) -> Step:
        attributes = call.attributes
        try:
            remote: Any = self.executor.send(
                outcome,
                "user_create_provision",
                key,
                lambda: self.session.scim.create_user(attributes, key.id),
                status=201,
                creating=attributes["userName"],
            )
        except Conflict:
            adopted = self.doubt.after_conflict(key, attributes["userName"], outcome)
            if adopted is None:
                raise
            return adopted, True  # type: ignore[return-value]
        # what was not sent was left for the app to fill in: not ours to clear
        sent = dict.fromkeys(rules.OPTIONAL_ATTRIBUTES) | attributes
        entry = self._held(key, remote.id, sent, remote, None, outcome)
        self.mirror.save_user(key.id, entry)
        outcome.trace.append(f"  created {remote.id}")
        return entry, entry.attributes.get("active") != attributes.get("active")

    def _update(
        self, key: ReconcileKey, call: UpdateUser, entry: MirrorUser, outcome: Outcome
    ) -> Step:
        rid, changes, full = call.remote_id, call.changes, call.full
        name = "user_deprovision" if changes.get("active") is False else "user_update_provision"
        answer = self.executor.on_remote(
            outcome, name, key, lambda: self.session.scim.update_user(rid, changes, full)
        )
        if answer is GONE:
            return None, True
        return self._record(key, rid, changes, answer, entry, outcome, f"updated {sorted(changes)}")

    def _set_active(
        self, key: ReconcileKey, call: SetActive, entry: MirrorUser, outcome: Outcome
    ) -> Step:
        rid, active, full = call.remote_id, call.active, call.full
        name = "user_update_provision" if active else "user_deprovision"
        answer = self.executor.on_remote(
            outcome, name, key, lambda: self.session.scim.set_active(rid, active, full)
        )
        if answer is GONE:
            return None, True
        patch = self.session.profile.user_patch
        sent = {"active": active} if patch else {**full, "active": active}
        return self._record(key, rid, sent, answer, entry, outcome, f"active={active}")

    def _record(
        self,
        key: ReconcileKey,
        rid: str,
        sent: dict[str, Any],
        answer: Any,
        entry: MirrorUser,
        outcome: Outcome,
        trace: str,
    ) -> Step:
        """Record an update the app took: what it holds (``_held``) saved to the mirror, the
        trace line, and the check that it kept ``active`` as sent."""
        entry = self._held(key, rid, sent, answer, entry, outcome)
        self.mirror.save_user(key.id, entry)
        outcome.trace.append(f"  {trace}")
        self._check_active(sent, entry)
        return entry, False

    def _delete(
        self, key: ReconcileKey, call: DeleteUser, entry: MirrorUser, outcome: Outcome
    ) -> Step:
        rid = call.remote_id
        try:
            gone = self.executor.on_remote(
                outcome,
                "user_delete_provision",
                key,
                lambda: self.session.scim.delete_user(rid),
                status=204,
            )
        except Conflict:
            # Zscaler refuses to delete admin-linked users: deactivate instead.
            outcome.trace.append("  409 on delete: deactivating instead")
            if entry.attributes.get("active") is not False:
                full = {**entry.attributes, "active": False}
                self.executor.send(
                    outcome,
                    "user_deprovision",
                    key,
                    lambda: self.session.scim.set_active(rid, False, full),
                )
                entry = MirrorUser(rid, full)
                self.mirror.save_user(key.id, entry)
            return entry, False
        if gone is not GONE:
            self.mirror.forget_user(key.id)
        outcome.trace.append(f"  deleted {rid}")
        return None, False

    def _held(
        self,
        key: ReconcileKey,
        remote_id: str,
        sent: dict[str, Any],
        answer: Any,
        before: MirrorUser | None,
        outcome: Outcome,
    ) -> MirrorUser:
        """The mirror entry of a user after a write: what the app answered it holds."""
        held = getattr(answer, "attributes", None)
        result = answers.user_answer(remote_id, sent, held, before)
        for attribute in result.unsupported:
            self.session.learn_unsupported(attribute, key, outcome)
        for attribute, (value, stored) in result.normalized.items():
            outcome.trace.append(f"  the app stores {attribute}={stored!r} for {value!r}")
        return result.entry

    def _check_active(self, sent: dict[str, Any], entry: MirrorUser) -> None:
        """A (de)activation the app answered without taking: another form, else park."""
        if "active" not in sent or entry.attributes.get("active") == sent["active"]:
            return
        detail = f"the application kept active={entry.attributes.get('active')}"
        if self.session.profile.user_patch:
            raise Unsupported(None, detail)
        raise Invalid(None, f"{detail} after a PUT of the whole user with active={sent['active']}")
