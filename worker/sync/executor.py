"""One SCIM call of a reconcile: the gate, the send, the audit entry, and the mirror's record of
it (the write marked in doubt before it is sent, cleared when the app refused it).

The gate is the one check before every call: it raises ``LeaseLost`` (our lease on the key
expired, or the app was deactivated), ``guard.Held`` (too many deactivations or deletions at
once) or ``ratelimit.Throttled`` (the app has no room now), and marks a write in doubt. The
worker's gate does all of that in one round trip (``runner.py``); ``marking`` makes a gate of
checks of one's own and a mirror that keeps its doubts (a dry run's, ``explain``'s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from worker.scim import NotFound, NotSent, ScimError
from worker.store import audit
from worker.store.audit import AuditEntry
from worker.store.fence import LeaseLost
from worker.store.keys import ReconcileKey
from worker.store.mirror import Mirror

Gate = Callable[[str, ReconcileKey, bool, "str | None"], None]
"""``gate(call name, key, write, creating)``: raises to stop the call; marks a write in doubt,
and a create's name (``creating``: looked up too if the create is interrupted)."""

__all__ = ["GONE", "Carrier", "Executor", "Gate", "LeaseLost", "Outcome", "forget", "marking"]


class Carrier(Protocol):
    """What carries the calls in Bulk requests (the app's ``ScimClient``): told which object
    each call is about, it says what the last one travelled in."""

    def about(self, obj: str | None) -> None: ...

    def bulk_note(self) -> str: ...


@dataclass
class Outcome:
    calls: int = 0
    trace: list[str] = field(default_factory=list)
    follow_up: list[ReconcileKey] = field(default_factory=list)  # to mark dirty afterwards
    stopped_waiting: bool = False  # a group no longer waits for members: forget since when


GONE = object()  # what ``Executor.on_remote`` returns when the application lost the object


def marking(mirror: Mirror, checks: Callable[[str, ReconcileKey], None] | None = None) -> Gate:
    """A gate that runs ``checks(name, key)`` (raising to stop the call), then marks a write
    in doubt in ``mirror``."""

    def gate(name: str, key: ReconcileKey, write: bool, creating: str | None = None) -> None:
        if checks is not None:
            checks(name, key)
        if write:
            mirror.begin_write(key.kind, key.id)
        if creating is not None:
            mirror.creating(key.kind, key.id, creating)

    return gate


class Executor:
    """Sends the calls of a reconcile of one application, each through the gate, and audits
    them. With ``ride``, every audit entry goes through the mirror: a call's entry atomically
    with the mirror's record of its outcome (which comes next), the others at once, all of
    them fenced as the mirror's writes are (``fence.py``); else at once with ``record``."""

    def __init__(
        self,
        app_id: str,
        mirror: Mirror,
        record: Callable[[AuditEntry], None],
        gate: Gate,
        *,
        causes: tuple[str, ...] = (),
        ride: bool = False,
        token: str = "",
        bulk: Carrier | None = None,
    ):
        """``causes`` are the ids of the directory events that dirtied the key, carried into
        every audit entry, as is ``token``, the fencing token of the run's lease; ``bulk``, when
        the app's writes go in Bulk requests, hears the object of each call before it is sent
        and says what the call travelled in, for its entry's detail."""
        self.app_id = app_id
        self.mirror = mirror
        self.record = record
        self.gate = gate
        self.causes = causes
        self.ride = ride
        self.token = token
        self.bulk = bulk

    def send(
        self,
        outcome: Outcome,
        name: str,
        key: ReconcileKey,
        send: Callable[[], object],
        *,
        status: int = 200,
        detail: str = "",
        write: bool = True,
        creating: str | None = None,
    ) -> object:
        """Send one call (``send``) named ``name`` about ``key``'s object; returns the app's
        answer, or raises its error (audited either way). ``creating``: the name a create is
        sent with, kept until its outcome is recorded (``Mirror.created_as``)."""
        self.mirror.flush()  # entries stay in the order of the calls
        self.gate(name, key, write, creating)
        if self.bulk is not None:
            self.bulk.about(key.object)
        outcome.calls += 1
        try:
            result = send()
        except ScimError as error:
            failed = self._entry(name, key, "failure", error.status, self._via(error.detail))
            if self.ride:  # with the end of the doubt, if any: one round trip
                self.mirror.then(audit.command(failed))
            if write and (isinstance(error, NotSent) or _refused(error.status)):
                self.mirror.end_write(key.kind, key.id)
            if self.ride:
                self.mirror.flush()
            else:
                self.record(failed)
            raise
        detail = self._via(detail)
        entry = self._entry(name, key, "success", status, detail, getattr(result, "id", None))
        if self.ride:  # written with the mirror's record of this outcome, which comes next
            self.mirror.then(audit.command(entry))
        else:
            self.record(entry)
        return result

    def on_remote(
        self,
        outcome: Outcome,
        name: str,
        key: ReconcileKey,
        send: Callable[[], object],
        **options: object,
    ) -> object:
        """``send`` a call about an object the app holds: its answer, or ``GONE`` (and the
        object forgotten) when the app lost it."""
        try:
            return self.send(outcome, name, key, send, **options)  # type: ignore[arg-type]
        except NotFound:
            outcome.trace.append(f"  404: the application lost {key.object}; it will be recreated")
            forget(self.mirror, key)
            return GONE

    def note(self, key: ReconcileKey, detail: str, status: int | None = None) -> None:
        """An audit entry for something learned about the application."""
        self.mirror.flush()
        self._audit(self._entry("idm_integration_update", key, "learned", status, detail))

    def _via(self, detail: str) -> str:
        """``detail``, with what the call travelled in when that was a Bulk request."""
        via = self.bulk.bulk_note() if self.bulk is not None else ""
        return f"{detail}; {via}" if detail and via else detail or via

    def _audit(self, entry: AuditEntry) -> None:
        """Record an entry now: through the mirror with ``ride`` (fenced), else ``record``."""
        if self.ride:
            self.mirror.then(audit.command(entry))
            self.mirror.flush()
        else:
            self.record(entry)

    def _entry(
        self,
        name: str,
        key: ReconcileKey,
        result: str,
        status: int | None,
        detail: str,
        remote_id: str | None = None,
    ) -> AuditEntry:
        return AuditEntry(name, self.app_id, key.object, result, status, detail, remote_id,
                          causes=self.causes, token=self.token)  # fmt: skip


def forget(mirror: Mirror, key: ReconcileKey) -> None:
    """The app no longer holds the object: forget it (the next plan creates it again)."""
    if key.kind == "user":
        mirror.forget_user(key.id)
    else:
        mirror.forget_group(key.id)


def _refused(status: int | None) -> bool:
    """An answer that says the request changed nothing: a 4xx (429 included) or a 501."""
    return status is not None and (400 <= status < 500 or status == 501)
