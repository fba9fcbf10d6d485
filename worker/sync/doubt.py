"""What the application holds of an object when the mirror cannot say: a write of ours that was
interrupted (re-read), a create refused with 409 (the object of that name adopted), a lookup by
name before a first create. An object found is recorded in the mirror as ours: a user as the
app holds it, a group taken over with its members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim import NotFound
from worker.scim.client import named
from worker.store.keys import Kind, ReconcileKey
from worker.store.mirror import Mirror
from worker.sync.executor import Executor, Outcome, forget
from worker.sync.session import AppSession

Entry = MirrorUser | MirrorGroup


@dataclass(frozen=True)
class Terms:
    """How the calls about one kind of object are named in the audit log and the trace."""

    attribute: str  # what a lookup filters on
    lookup: str  # audit name of a lookup (and of the listing after a 409)
    lookup_detail: str  # audit detail of a lookup
    conflict_detail: str  # audit detail of the lookup after a 409
    reread: str  # audit name of a re-read
    adopting: str  # the trace's word for recording the app's object as ours


TERMS: dict[Kind, Terms] = {
    "user": Terms("userName", "user_lookup_provision", "", "", "user_lookup_provision", "adopting"),
    "group": Terms(
        "displayName",
        "group_create_provision",
        "lookup",
        "lookup after 409",
        "group_update_provision",
        "taking over",
    ),
}


class DoubtResolver:
    """Finds what the app holds of an object and records it in the mirror."""

    def __init__(self, session: AppSession, executor: Executor, mirror: Mirror):
        self.session = session
        self.executor = executor
        self.mirror = mirror

    def reread(
        self, key: ReconcileKey, entry: Entry | None, name: str | None, outcome: Outcome
    ) -> tuple[Any, bool]:
        """A write of ours was interrupted: read what the app really holds before planning.
        Returns the entry and whether a lookup by ``name`` found nothing.

        An interrupted create may have made the object even if it is no longer wanted: it is
        looked up whatever the intent (adopted if found, so that the plan can undo it)."""
        outcome.trace.append("  an earlier write was interrupted: reading the app's copy")
        found = self._reread(key, entry, name, outcome)
        self.mirror.reread_done(key.kind, key.id)  # read: no longer to be re-read
        return found

    def _reread(
        self, key: ReconcileKey, entry: Entry | None, name: str | None, outcome: Outcome
    ) -> tuple[Any, bool]:
        if entry is None:
            if name is not None and self.session.profile.filter_supported:
                # an interrupted create was sent with the name of its time: renamed since in
                # the directory, the object is found by that name (then renamed by the plan)
                sent = self.mirror.created_as(key.kind, key.id)
                entry = self.lookup(key, name, outcome)
                if entry is None and sent is not None and sent != name:
                    entry = self.lookup(key, sent, outcome)
                return entry, entry is None
            self.mirror.clear_doubt(key.kind, key.id)  # nothing to look it up by
            return None, False
        scim, remote_id = self.session.scim, entry.remote_id
        read = scim.get_user if key.kind == "user" else scim.get_group
        try:
            remote = self.executor.send(
                outcome,
                TERMS[key.kind].reread,
                key,
                lambda: read(remote_id),
                write=False,
                detail="re-read after an interrupted write",
            )
        except NotFound:
            forget(self.mirror, key)
            return None, False
        return self.adopt(key, remote), False

    def lookup(self, key: ReconcileKey, name: str, outcome: Outcome) -> Entry | None:
        """Look the object up by name: adopted when found, else remembered as absent (the
        create comes next, with no lookup again)."""
        terms = TERMS[key.kind]
        found = self._find(key, name, outcome, terms.lookup_detail)
        if found is None:
            outcome.trace.append(f"  lookup {terms.attribute} eq {name!r}: none")
            self.mirror.remember_absent(key.kind, key.id)
            return None
        entry = self.adopt(key, found)
        outcome.trace.append(f"  lookup {terms.attribute} eq {name!r}: {terms.adopting} {found.id}")
        return entry

    def after_conflict(self, key: ReconcileKey, name: str, outcome: Outcome) -> Entry | None:
        """A create answered 409: the object of that name, adopted, or None when neither the
        lookup nor the app's listing finds it."""
        terms = TERMS[key.kind]
        found = self._find(key, name, outcome, terms.conflict_detail)
        found = found or self._find_in_pages(key, name, outcome)
        if found is None:
            return None
        outcome.trace.append(f"  409 on create: {terms.adopting} {found.id}")
        return self.adopt(key, found)

    def adopt(self, key: ReconcileKey, found: Any) -> Entry:
        """Record the app's copy of an object as ours; a group's members become ours to sync."""
        if key.kind == "user":
            user = MirrorUser(found.id, found.attributes)
            self.mirror.save_user(key.id, user)
            return user
        by_remote = self.mirror.directory_ids_by_remote_id()
        members = {by_remote.get(rid, f"?{rid}"): rid for rid in found.member_ids}
        group = MirrorGroup(found.id, found.display_name, members)
        self.mirror.save_group(key.id, group)
        return group

    def _find(self, key: ReconcileKey, name: str, outcome: Outcome, detail: str) -> Any:
        scim = self.session.scim
        find = scim.find_user if key.kind == "user" else scim.find_group
        return self.executor.send(
            outcome, TERMS[key.kind].lookup, key, lambda: find(name), detail=detail, write=False
        )

    def _find_in_pages(self, key: ReconcileKey, name: str, outcome: Outcome) -> Any:
        """After a 409 that the lookup cannot explain (an app whose filter finds nothing), the
        object of that name among the app's, page by page, each page a call of its own."""
        scim = self.session.scim
        page = scim.users_page if key.kind == "user" else scim.groups_page
        start, size = 1, self.session.profile.page_size
        outcome.trace.append(f"  409, and the lookup found nothing: listing the app's {key.kind}s")
        while True:
            answer: Any = self.executor.send(
                outcome,
                TERMS[key.kind].lookup,
                key,
                lambda at=start: page(at, size),  # type: ignore[misc]
                write=False,
                detail=f"listing from {start}",
            )
            found, total = answer
            hit = named(found, name, _name_of)
            if hit is not None:
                return hit
            start += len(found)
            if not found or start > total:
                return None


def _name_of(remote: Any) -> str | None:
    """The name a lookup matches: a user's ``userName``, a group's ``displayName``."""
    attributes = getattr(remote, "attributes", None)
    return attributes.get("userName") if attributes is not None else remote.display_name
