"""Reconcile one key: read the projection and the mirror, ask the rules and the planner, run
the calls, record each outcome in the mirror and the audit log (STYLE: controller-runtime's
``Reconcile(key)``).

Errors of the application propagate as ``worker.scim`` errors after they are audited; the
runner (``runner.py``) turns them into retries, parking or a pause.

Trust, but verify: every write's answer is read. The mirror records what the application
holds (``answers.py`` compares it with what was sent): an attribute it never stores is learned
as unsupported and not sent again, a value it stores in its own form is not sent again, a
membership it ignored is completed by the next call. A request form it does not implement
(``Unsupported``) moves the app to the next form (``worker.scim.compat``), learned for good.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim import Conflict, Invalid, NotFound, ScimClient, ScimError, Unsupported, compat
from worker.scim.client import named
from worker.scim.profiles import Profile
from worker.store import audit, keys, learned, projection, scripts
from worker.store.apps import AppConfig
from worker.store.audit import AuditEntry
from worker.store.keys import Kind, ReconcileKey
from worker.store.learned import Learned
from worker.store.mirror import Mirror
from worker.sync import answers, rules
from worker.sync.plan import (
    Call,
    CreateGroup,
    CreateUser,
    DeleteUser,
    LookupGroup,
    LookupUser,
    PatchMembers,
    RemoveGroup,
    RenameGroup,
    ReplaceGroup,
    SetActive,
    UpdateUser,
    plan_group,
    plan_user,
)

log = logging.getLogger("provisioner.reconcile")

MAX_ROUNDS = 6  # plan -> run rounds; a lookup or a vanished object costs one more round
FALLBACKS = sum(len(chain) - 1 for chain in compat.CHAINS.values())  # a round each at most
MEMBER_WAIT = 600.0  # seconds a group may wait for members being provisioned (rate-limited)
MEMBER_RECHECK = 2.0  # and how often it looks again
MEMBER_SLICE = 64  # members looked at per round trip while checking


class LeaseLost(RuntimeError):
    """Our lease on the key expired and another worker may hold it: stop writing."""


class Deferred(Exception):
    """Nothing to send yet; run the key again after ``delay`` seconds."""

    def __init__(self, delay: float):
        super().__init__(f"deferred for {delay}s")
        self.delay = delay


@dataclass
class Outcome:
    calls: int = 0
    trace: list[str] = field(default_factory=list)
    follow_up: list[str] = field(default_factory=list)  # keys to mark dirty afterwards
    stopped_waiting: bool = False  # a group no longer waits for members: forget since when


class Reconciler:
    """Reconciles keys of one application with one SCIM client."""

    def __init__(
        self,
        client: redis.Redis,
        app: AppConfig,
        scim: ScimClient,
        profile: Profile,
        *,
        still_ours: Callable[[], bool] = lambda: True,
        mirror: Mirror | None = None,
        record: Callable[[AuditEntry], None] | None = None,
        causes: tuple[str, ...] = (),
        throttle: Callable[[], None] = lambda: None,
        guard: Callable[[str, str], None] = lambda name, obj: None,
        gate: Callable[[str, str, tuple[Kind, str] | None], None] | None = None,
        wait_for_members: bool = True,
        knowledge: Learned | None = None,
    ):
        """``mirror`` and ``record`` default to the app's mirror and the audit log; a dry run
        passes an in-memory mirror and its own recorder. ``causes`` are the ids of the
        directory events that dirtied the key, carried into every audit entry.

        Before each call, ``still_ours`` (else ``LeaseLost``), ``guard`` and ``throttle`` run,
        then a write is marked in doubt; ``gate(name, obj, (kind, id) of a write or None)``,
        when given, does all of that itself (the worker's: in one round trip). With the default
        mirror and audit log, a call's audit entry is written in the same transaction as the
        mirror's record of its outcome.

        ``knowledge`` is what the pool learned about the app (``worker.store.learned``): the request
        forms that work, and the attributes it does not store (never sent)."""
        self.redis = client
        self.app = app
        knowledge = knowledge or Learned()
        self.settings = app.settings()
        self._skip_attributes(knowledge.unsupported_attributes)
        self.base_profile = profile
        self.forms = dict(knowledge.forms)
        self.profile = compat.effective(profile, self.forms)
        self.scim = scim.reshaped(self.profile)
        self.mirror = mirror or Mirror(client, app.id)
        self.still_ours = still_ours
        self.record = record or (lambda entry: audit.record(client, entry))
        self.causes = causes
        self.throttle = throttle
        self.guard = guard
        self.gate = gate
        # the audit entry of a call rides with the mirror write that follows it
        self._ride = mirror is None and record is None
        self.wait_for_members = wait_for_members  # explain shows the plan as of now

    def reconcile(self, key: ReconcileKey, outcome: Outcome | None = None) -> Outcome:
        """Reconcile one key; ``outcome`` collects calls, trace and follow-ups even when an
        error of the application cuts the run short."""
        outcome = outcome if outcome is not None else Outcome()
        try:
            if key.kind == "user":
                self._user(key.id, outcome)
            else:
                self._group(key.id, outcome)
        finally:
            self.mirror.flush()  # an audit entry with no mirror write after it
        return outcome

    # -- users ----------------------------------------------------------------------------
    def _user(self, user_id: str, outcome: Outcome) -> None:
        facts = projection.user_facts(self.redis, self.app.id, user_id)
        entry, looked_up, in_doubt = self.mirror.load_user(user_id)
        if in_doubt:
            user_name = (facts.user.record or {}).get(rules.USER_MAPPING["userName"])
            lookup = LookupUser(user_name) if user_name else None
            entry, looked_up = self._reread("user", user_id, entry, lookup, outcome)
        intent = rules.user_intent(facts, entry, self.settings)
        outcome.trace.append(f"user {user_id}: {type(intent).__name__} ({_why(intent)})")
        try:
            for _ in range(MAX_ROUNDS + FALLBACKS):
                # again each round: an attribute learned unsupported is no longer wanted
                intent = rules.user_intent(facts, entry, self.settings)
                calls = plan_user(intent, entry, self.profile, looked_up=looked_up)
                if not calls:
                    break
                for call in calls:
                    try:
                        entry, replan = self._user_call(user_id, call, entry, outcome)
                    except Unsupported as error:
                        self._fall_back(call, error, f"user:{user_id}", outcome)
                        replan = True
                    except Invalid as error:
                        if not self._refused_extension(call, error, f"user:{user_id}", outcome):
                            raise
                        replan = True
                    if isinstance(call, LookupUser):
                        looked_up = True
                    if replan:
                        break
        finally:
            # Once the user exists in the app, its groups can take it as a member; checked
            # even after an error (or a crash before this point on an earlier run).
            if entry is not None and self.settings.group_management and facts.covering_groups:
                outcome.follow_up += [
                    f"{self.app.id} group {g}"
                    for g in self.mirror.groups_missing_member(facts.covering_groups, user_id)
                ]

    def _user_call(
        self, user_id: str, call: Call, entry: MirrorUser | None, outcome: Outcome
    ) -> tuple[MirrorUser | None, bool]:
        """Run one call; returns the new mirror entry and whether to plan again."""
        obj = f"user:{user_id}"
        match call:
            case LookupUser(user_name=user_name):
                found = self._send(
                    outcome,
                    "user_lookup_provision",
                    obj,
                    lambda: self.scim.find_user(user_name),
                    write=False,
                )
                if found is None:
                    outcome.trace.append(f"  lookup userName eq {user_name!r}: none")
                    self.mirror.remember_absent("user", user_id)
                    return None, True
                outcome.trace.append(f"  lookup userName eq {user_name!r}: adopting {found.id}")
                return self._adopt_user(user_id, found), True
            case CreateUser(attributes=attributes):
                try:
                    remote = self._send(
                        outcome,
                        "user_create_provision",
                        obj,
                        lambda: self.scim.create_user(attributes),
                        status=201,
                    )
                except Conflict:
                    found = self._send(
                        outcome,
                        "user_lookup_provision",
                        obj,
                        lambda: self.scim.find_user(attributes["userName"]),
                        write=False,
                    )
                    found = found or self._find_in_pages("user", attributes["userName"], obj,
                                                         outcome)  # fmt: skip
                    if found is None:
                        raise
                    outcome.trace.append(f"  409 on create: adopting {found.id}")
                    return self._adopt_user(user_id, found), True
                # what was not sent was left for the app to fill in: not ours to clear
                sent = dict.fromkeys(rules.OPTIONAL_ATTRIBUTES) | attributes
                entry = self._held_user(obj, remote.id, sent, remote, None, outcome)
                self.mirror.save_user(user_id, entry)
                outcome.trace.append(f"  created {remote.id}")
                return entry, entry.attributes.get("active") != attributes.get("active")
            case UpdateUser(remote_id=rid, changes=changes, full=full):
                assert entry is not None
                name = "user_update_provision"
                if changes.get("active") is False:
                    name = "user_deprovision"
                answer = self._on_remote(
                    outcome,
                    name,
                    obj,
                    user_id,
                    "user",
                    lambda: self.scim.update_user(rid, changes, full),
                )
                if answer is GONE:
                    return None, True
                entry = self._held_user(obj, rid, changes, answer, entry, outcome)
                self.mirror.save_user(user_id, entry)
                outcome.trace.append(f"  updated {sorted(changes)}")
                self._check_active(changes, entry)
                return entry, False
            case SetActive(remote_id=rid, active=active, full=full):
                assert entry is not None
                name = "user_update_provision" if active else "user_deprovision"
                answer = self._on_remote(
                    outcome,
                    name,
                    obj,
                    user_id,
                    "user",
                    lambda: self.scim.set_active(rid, active, full),
                )
                if answer is GONE:
                    return None, True
                sent = {"active": active} if self.profile.user_patch else {**full, "active": active}
                entry = self._held_user(obj, rid, sent, answer, entry, outcome)
                self.mirror.save_user(user_id, entry)
                outcome.trace.append(f"  active={active}")
                self._check_active(sent, entry)
                return entry, False
            case DeleteUser(remote_id=rid):
                assert entry is not None
                try:
                    gone = self._on_remote(
                        outcome,
                        "user_delete_provision",
                        obj,
                        user_id,
                        "user",
                        lambda: self.scim.delete_user(rid),
                        status=204,
                    )
                except Conflict:
                    # Zscaler refuses to delete admin-linked users: deactivate instead.
                    outcome.trace.append("  409 on delete: deactivating instead")
                    if entry.attributes.get("active") is not False:
                        full = {**entry.attributes, "active": False}
                        self._send(
                            outcome,
                            "user_deprovision",
                            obj,
                            lambda: self.scim.set_active(rid, False, full),
                        )
                        entry = MirrorUser(rid, full)
                        self.mirror.save_user(user_id, entry)
                    return entry, False
                if gone is not GONE:
                    self.mirror.forget_user(user_id)
                outcome.trace.append(f"  deleted {rid}")
                return None, False
        raise TypeError(f"not a user call: {call!r}")

    # -- groups ---------------------------------------------------------------------------
    def _group(self, group_id: str, outcome: Outcome) -> None:
        if not self.settings.group_management:
            outcome.trace.append(f"group {group_id}: group management disabled, no group call")
            return
        facts = projection.group_facts(self.redis, self.app.id, group_id)
        entry, looked_up, in_doubt = self.mirror.load_group(group_id)
        if in_doubt:
            lookup = LookupGroup(facts.name) if facts.name else None
            entry, looked_up = self._reread("group", group_id, entry, lookup, outcome)
        remote_ids = self.mirror.remote_user_ids(facts.members)
        missing = [u for u, rid in remote_ids.items() if rid is None]
        if (
            self.wait_for_members
            and facts.associated
            and not facts.deleted
            and self._members_on_their_way(group_id, missing, outcome)
        ):
            # The plan once they exist may start with a lookup, which needs no member: sent
            # now, it leaves one call fewer for after the wait.
            expected = {user_id: rid or "(on its way)" for user_id, rid in remote_ids.items()}
            soon = rules.group_intent(facts, entry, expected, self.settings)
            first = plan_group(soon, entry, self.profile, looked_up=looked_up)[:1]
            if first and isinstance(first[0], LookupGroup):
                self._group_call(group_id, first[0], entry, outcome)
            raise Deferred(MEMBER_RECHECK)
        intent = rules.group_intent(facts, entry, remote_ids, self.settings)
        outcome.trace.append(f"group {group_id}: {type(intent).__name__} ({_why(intent)})")
        read_back = False
        for _ in range(MAX_ROUNDS + FALLBACKS):
            calls = plan_group(intent, entry, self.profile, looked_up=looked_up)
            if not calls:
                break
            for call in calls:
                try:
                    entry, replan = self._group_call(group_id, call, entry, outcome)
                except Unsupported as error:
                    self._fall_back(call, error, f"group:{group_id}", outcome)
                    replan = True
                except Invalid as error:
                    # A refused change may be one the app already holds (a member it dropped
                    # with its deleted user): read the group back once, then plan again.
                    refused = error.status is not None  # the app said no (not our own verdict)
                    if read_back or not refused or entry is None or isinstance(call, CreateGroup):
                        raise
                    read_back = True
                    outcome.trace.append(f"  {error}: reading the group back")
                    entry, _ = self._reread("group", group_id, entry, None, outcome)
                    intent = rules.group_intent(facts, entry, remote_ids, self.settings)
                    replan = True
                if isinstance(call, LookupGroup):
                    looked_up = True
                if replan:
                    break

    def _group_call(
        self, group_id: str, call: Call, entry: MirrorGroup | None, outcome: Outcome
    ) -> tuple[MirrorGroup | None, bool]:
        obj = f"group:{group_id}"
        match call:
            case LookupGroup(display_name=name):
                found = self._send(
                    outcome,
                    "group_create_provision",
                    obj,
                    lambda: self.scim.find_group(name),
                    detail="lookup",
                    write=False,
                )
                if found is None:
                    outcome.trace.append(f"  lookup displayName eq {name!r}: none")
                    self.mirror.remember_absent("group", group_id)
                    return None, True
                entry = self._take_over(group_id, found)
                outcome.trace.append(f"  lookup displayName eq {name!r}: taking over {found.id}")
                return entry, True
            case CreateGroup(display_name=name, members=members):
                try:
                    remote = self._send(
                        outcome,
                        "group_create_provision",
                        obj,
                        lambda: self.scim.create_group(name, members.values()),
                        status=201,
                    )
                except Conflict:
                    found = self._send(
                        outcome,
                        "group_create_provision",
                        obj,
                        lambda: self.scim.find_group(name),
                        detail="lookup after 409",
                        write=False,
                    )
                    found = found or self._find_in_pages("group", name, obj, outcome)
                    if found is None:
                        raise
                    outcome.trace.append(f"  409 on create: taking over {found.id}")
                    return self._take_over(group_id, found), True
                entry = self._held_group(remote.id, name, members, remote, None)
                self.mirror.save_group(group_id, entry)
                outcome.trace.append(f"  created {remote.id} with {len(members)} members")
                dropped = sum(1 for user in members if user not in entry.members)
                if dropped:
                    outcome.trace.append(f"  the app kept {len(entry.members)}: completing")
                    self._note(obj, f"the application ignored {dropped} members sent on create: "
                               "sending them again")  # fmt: skip
                return entry, bool(dropped)
            case RenameGroup(remote_id=rid, display_name=name):
                assert entry is not None
                old_name, held = entry.display_name, entry
                answer = self._on_remote(
                    outcome,
                    "group_update_provision",
                    obj,
                    group_id,
                    "group",
                    lambda: self.scim.rename_group(rid, name, held.members.values()),
                )
                if answer is GONE:
                    return None, True
                entry = self._held_group(rid, name, dict(entry.members), answer, entry)
                self.mirror.save_group(group_id, entry)
                outcome.trace.append(f"  renamed to {name!r}")
                if entry.display_name == old_name != name:
                    raise Unsupported(None, f"the application kept the name {old_name!r}")
                return entry, False
            case PatchMembers(remote_id=rid, add=add, remove=remove):
                assert entry is not None
                detail = f"+{len(add)} -{len(remove)} members"
                answer = self._on_remote(
                    outcome,
                    "group_update_provision",
                    obj,
                    group_id,
                    "group",
                    lambda: self.scim.patch_members(rid, add.values(), remove.values()),
                    detail=detail,
                )
                if answer is GONE:
                    return None, True
                members = {u: r for u, r in entry.members.items() if u not in remove}
                members.update(add)
                known = {**entry.members, **add}
                entry = self._held_group(rid, entry.display_name, members, answer, entry, known)
                self.mirror.save_group(group_id, entry)
                outcome.trace.append(f"  members {detail}")
                ignored = answers.ignored_members(add, remove, entry.members)
                if ignored:  # answered 200 and did not do it: this form does not work here
                    raise Unsupported(None, f"the application answered without {ignored}")
                return entry, False
            case ReplaceGroup(remote_id=rid, display_name=name, members=members):
                answer = self._on_remote(
                    outcome,
                    "group_update_provision",
                    obj,
                    group_id,
                    "group",
                    lambda: self.scim.replace_group(rid, name, members.values()),
                )
                if answer is GONE:
                    return None, True
                entry = self._held_group(rid, name, dict(members), answer, entry)
                self.mirror.save_group(group_id, entry)
                outcome.trace.append(f"  replaced with {len(members)} members")
                missing = sum(1 for user in members if user not in entry.members)
                if missing:
                    raise Invalid(
                        None,
                        f"the application does not keep the members it is sent ({missing} "
                        "of them were left out of its answer to a PUT of the whole group)",
                    )
                return entry, False
            case RemoveGroup(remote_id=rid):
                with contextlib.suppress(NotFound):
                    self._send(
                        outcome,
                        "group_delete_provision",
                        obj,
                        lambda: self.scim.delete_group(rid),
                        status=204,
                    )
                self.mirror.forget_group(group_id)
                outcome.trace.append(f"  deleted {rid}")
                return None, False
        raise TypeError(f"not a group call: {call!r}")

    def _members_on_their_way(self, group_id: str, missing: list[str], outcome: Outcome) -> bool:
        """Whether to wait for members that are being provisioned right now: each one's
        creation marks the group again, and one PATCH then carries them all instead of one
        PATCH now and another per late member. Never waits longer than ``MEMBER_WAIT``.

        Looks at the missing members a slice at a time and stops at the first one still
        queued, so a large group waiting for many members costs one round trip a check."""
        group_key = f"{self.app.id} group {group_id}"
        since = self.redis.hget(keys.WQ_DEFERRED, group_key) if missing else None
        waited = (scripts.now_ms() - int(since)) / 1000 if since else 0.0
        if missing and waited < MEMBER_WAIT:
            for start in range(0, len(missing), MEMBER_SLICE):
                pipe = self.redis.pipeline(transaction=False)
                for user_id in missing[start : start + MEMBER_SLICE]:
                    pipe.zscore(keys.WQ_DIRTY, f"{self.app.id} user {user_id}")
                    pipe.hexists(keys.WQ_OWNER, f"{self.app.id} user {user_id}")
                if any(pipe.execute()):
                    if since is None:
                        self.redis.hsetnx(keys.WQ_DEFERRED, group_key, scripts.now_ms())
                    outcome.trace.append(f"group {group_id}: waiting for members on their way")
                    return True
        if since is not None or not missing:
            outcome.stopped_waiting = True  # forgotten when the key is released (runner.py)
        return False

    def _reread(
        self, kind: Kind, object_id: str, entry: Any, lookup: Call | None, outcome: Outcome
    ) -> tuple[Any, bool]:
        """A write of ours was interrupted: read what the app really holds before planning.
        Returns the entry and whether a lookup (``LookupUser``/``LookupGroup``) found nothing.

        An interrupted create may have made the object even if it is no longer wanted: it is
        looked up whatever the intent (adopted if found, so that the plan can undo it)."""
        outcome.trace.append("  an earlier write was interrupted: reading the app's copy")
        user = kind == "user"
        if entry is None:
            if lookup is not None and self.profile.filter_supported:
                call = self._user_call if user else self._group_call
                entry, _ = call(object_id, lookup, None, outcome)
                return entry, entry is None
            self.mirror.clear_doubt(kind, object_id)  # nothing to look it up by
            return None, False
        read = self.scim.get_user if user else self.scim.get_group
        name = "user_lookup_provision" if user else "group_update_provision"
        remote_id = entry.remote_id
        try:
            remote = self._send(outcome, name, f"{kind}:{object_id}", lambda: read(remote_id),
                                write=False, detail="re-read after an interrupted write")  # fmt: skip
        except NotFound:
            (self.mirror.forget_user if user else self.mirror.forget_group)(object_id)
            return None, False
        return (self._adopt_user if user else self._take_over)(object_id, remote), False

    def _adopt_user(self, user_id: str, found) -> MirrorUser:  # noqa: ANN001
        """Record the app's copy of a user as ours."""
        entry = MirrorUser(found.id, found.attributes)
        self.mirror.save_user(user_id, entry)
        return entry

    def _take_over(self, group_id: str, found) -> MirrorGroup:  # noqa: ANN001
        """Manage an existing group of the same name: its members become ours to sync."""
        by_remote = self.mirror.directory_ids_by_remote_id()
        members = {by_remote.get(rid, f"?{rid}"): rid for rid in found.member_ids}
        entry = MirrorGroup(found.id, found.display_name, members)
        self.mirror.save_group(group_id, entry)
        return entry

    def _find_in_pages(self, kind: Kind, name: str, obj: str, outcome: Outcome) -> Any:
        """After a 409 that the lookup cannot explain (an app whose filter finds nothing), the
        object of that name among the app's, page by page, each page a call of its own."""
        user = kind == "user"
        page = self.scim.users_page if user else self.scim.groups_page
        audit_name = "user_lookup_provision" if user else "group_create_provision"
        start, size = 1, self.profile.page_size
        outcome.trace.append(f"  409, and the lookup found nothing: listing the app's {kind}s")
        while True:
            found, total = self._send(outcome, audit_name, obj, lambda at=start: page(at, size),
                                      write=False, detail=f"listing from {start}")  # type: ignore[misc]  # fmt: skip
            hit = named(found, name, _name_of)
            if hit is not None:
                return hit
            start += len(found)
            if not found or start > total:
                return None

    # -- answers and what they teach --------------------------------------------------------
    def _held_user(
        self,
        obj: str,
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
            self._learn_unsupported(attribute, obj, outcome)
        for attribute, (value, stored) in result.normalized.items():
            outcome.trace.append(f"  the app stores {attribute}={stored!r} for {value!r}")
        return result.entry

    def _check_active(self, sent: dict[str, Any], entry: MirrorUser) -> None:
        """A (de)activation the app answered without taking: another form, else park."""
        if "active" not in sent or entry.attributes.get("active") == sent["active"]:
            return
        detail = f"the application kept active={entry.attributes.get('active')}"
        if self.profile.user_patch:
            raise Unsupported(None, detail)
        raise Invalid(None, f"{detail} after a PUT of the whole user with active={sent['active']}")

    def _held_group(
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
        if answer is not None and self.profile.group_members_readable:
            ids = answer.member_ids
        held = answers.group_members(members, ids, known or {})
        answer_name = getattr(answer, "display_name", None) or None
        return answers.group_entry(remote_id, name, held, answer_name, before)

    def _skip_attributes(self, attributes: Any) -> None:
        """Neither want nor send these attributes any more (the app does not store them)."""
        extra = frozenset(attributes) - self.settings.excluded_attributes
        if extra:
            excluded = self.settings.excluded_attributes | extra
            self.settings = replace(self.settings, excluded_attributes=excluded)

    def _learn_unsupported(self, attribute: str, obj: str, outcome: Outcome, why: str = "") -> None:
        why = why or f"the application answered a write of {attribute} without it"
        outcome.trace.append(f"  {why}: not sent from now on")
        self._skip_attributes([attribute])
        if learned.learn_unsupported(self.redis, self.app.id, attribute, why):
            self._note(obj, f"{why}: {attribute} is unsupported by this application and is not "
                       "sent from now on (`apps update` forgets it)")  # fmt: skip
            log.warning("app %s does not store %s: not sent from now on", self.app.id, attribute)

    def _refused_extension(self, call: Call, error: ScimError, obj: str, outcome: Outcome) -> bool:
        """A user write refused (400) for its enterprise extension, as an app without that
        schema does: learn ``department`` as unsupported and plan again (True), else False."""
        sent = {
            **getattr(call, "attributes", {}),
            **getattr(call, "changes", {}),
            **(getattr(call, "full", {}) if not self.profile.user_patch else {}),
        }
        # the schema named, not the attribute: a department refused for its value (too long,
        # say) is a bad value, to be parked, not an attribute to stop sending
        if sent.get("department") is None or "enterprise" not in (error.detail or "").lower():
            return False
        why = f"the application refused the enterprise extension (HTTP {error.status})"
        self._learn_unsupported("department", obj, outcome, why)
        return True

    def _fall_back(self, call: Call, error: ScimError, obj: str, outcome: Outcome) -> None:
        """The app does not implement the form this call was sent in: learn the next form for
        the app, or raise ``Invalid`` (the object is parked) when no form is left."""
        operation = compat.operation_of(call)
        form = compat.next_form(self.base_profile, self.forms, operation) if operation else None
        if operation is None or form is None:
            tried = {op: chosen for op, chosen in self.forms.items()}
            if operation is not None:
                tried[operation] = compat.CHAINS[operation][-1]
            raise Invalid(
                error.status,
                f"the application does not implement this request ({error.detail}) and no other "
                f"form is left; tried: {compat.tried(tried) or type(call).__name__}",
                error.scim_type,
            ) from None
        before = compat.forms(self.base_profile, self.forms)[operation]
        self.forms[operation] = form
        learned.learn_form(self.redis, self.app.id, operation, form)
        self.profile = compat.effective(self.base_profile, self.forms)
        self.scim = self.scim.reshaped(self.profile)
        what = (
            f"{compat.describe(operation, before)} is not implemented by the application "
            f"({error}): using {compat.describe(operation, form)} from now on"
        )
        outcome.trace.append(f"  {what}")
        self._note(obj, what, error.status)
        log.warning("app %s: %s", self.app.id, what)

    def _note(self, obj: str, detail: str, status: int | None = None) -> None:
        """An audit entry for something learned about the application."""
        self.mirror.flush()
        self.record(
            AuditEntry(
                "idm_integration_update",
                self.app.id,
                obj,
                "learned",
                status,
                detail,
                causes=self.causes,
            )
        )

    # -- calls ----------------------------------------------------------------------------
    def _on_remote(
        self,
        outcome: Outcome,
        name: str,
        obj: str,
        object_id: str,
        kind: str,
        send: Callable[[], object],
        **kw: object,
    ) -> object:
        """Send a call about an object we hold: the app's answer, or ``GONE`` (and the object
        forgotten) when the app lost it."""
        try:
            return self._send(outcome, name, obj, send, **kw)  # type: ignore[arg-type]
        except NotFound:
            outcome.trace.append(f"  404: the application lost {obj}; it will be recreated")
            if kind == "user":
                self.mirror.forget_user(object_id)
            else:
                self.mirror.forget_group(object_id)
            return GONE

    def _send(
        self,
        outcome: Outcome,
        name: str,
        obj: str,
        send: Callable[[], object],
        *,
        status: int = 200,
        detail: str = "",
        write: bool = True,
    ) -> object:
        self.mirror.flush()  # entries stay in the order of the calls
        kind, _, object_id = obj.partition(":")
        doubt = (kind, object_id) if write else None
        if self.gate is not None:
            self.gate(name, obj, doubt)  # type: ignore[arg-type]
        else:
            if not self.still_ours():
                raise LeaseLost(obj)
            self.guard(name, obj)  # may raise Held: too many deactivations or deletions at once
            self.throttle()  # may raise Throttled: the key comes back when the app has room
            if doubt:
                self.mirror.begin_write(kind, object_id)  # type: ignore[arg-type]
        outcome.calls += 1
        try:
            result = send()
        except ScimError as error:
            if doubt and error.status is not None and _refused(error.status):
                self.mirror.end_write(kind, object_id)  # type: ignore[arg-type]
            self.record(
                AuditEntry(
                    name,
                    self.app.id,
                    obj,
                    "failure",
                    error.status,
                    error.detail,
                    causes=self.causes,
                )
            )
            raise
        remote_id = getattr(result, "id", None)
        entry = AuditEntry(
            name, self.app.id, obj, "success", status, detail, remote_id, causes=self.causes
        )
        if self._ride:  # written with the mirror's record of this outcome, which comes next
            self.mirror.then(lambda pipe: audit.record(pipe, entry))
        else:
            self.record(entry)
        return result


GONE = object()  # what ``_on_remote`` returns when the application lost the object


def _refused(status: int) -> bool:
    """An answer that says the request changed nothing: a 4xx (429 included) or a 501."""
    return 400 <= status < 500 or status == 501


def _name_of(remote: Any) -> str | None:
    """The name a lookup matches: a user's ``userName``, a group's ``displayName``."""
    attributes = getattr(remote, "attributes", None)
    return attributes.get("userName") if attributes is not None else remote.display_name


def _why(intent: object) -> str:
    reason = getattr(intent, "reason", None)
    if reason:
        return reason
    return "in scope"
