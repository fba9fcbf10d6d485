"""Reconcile one key: the kind's reconciler reads the projection and the mirror, asks the
rules and the planner, and runs the calls (STYLE: controller-runtime's ``Reconcile(key)``).

- ``executor.py``: one call: the gate, the send, the audit entry, the mirror's record;
- ``users.py``, ``groups.py``: the reconcilers of each kind;
- ``doubt.py``: what the app holds when the mirror cannot say (re-read, 409, lookup);
- ``session.py``: the app's settings, profile and client, and what its answers teach.

Errors of the application propagate as ``worker.scim`` errors after they are audited; the
runner (``runner.py``) turns them into retries, parking or a pause.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from worker.scim import ScimClient
from worker.scim.profiles import Profile
from worker.store import audit
from worker.store.apps import AppConfig
from worker.store.audit import AuditEntry
from worker.store.fence import Fence
from worker.store.keys import ReconcileKey
from worker.store.learned import Learned
from worker.store.mirror import Mirror
from worker.sync.doubt import DoubtResolver
from worker.sync.executor import Executor, Gate, LeaseLost, Outcome, marking
from worker.sync.groups import Deferred, GroupReconciler
from worker.sync.session import AppSession
from worker.sync.users import UserReconciler

__all__ = ["Deferred", "LeaseLost", "Outcome", "Reconciler"]


class Reconciler:
    """Reconciles keys of one application with one SCIM client."""

    def __init__(
        self,
        client: redis.Redis,
        app: AppConfig,
        scim: ScimClient,
        profile: Profile,
        *,
        gate: Gate | None = None,
        fence: Fence | None = None,
        mirror: Mirror | None = None,
        record: Callable[[AuditEntry], None] | None = None,
        causes: tuple[str, ...] = (),
        wait_for_members: bool = True,
        knowledge: Learned | None = None,
    ):
        """``mirror`` and ``record`` default to the app's mirror and the audit log; a dry run
        passes an in-memory mirror and its own recorder. With both defaults, a call's audit
        entry is written atomically with the mirror's record of its outcome, and with
        ``fence`` (the run's lease) both are accepted only while the lease holds (``LeaseLost``).
        ``gate`` runs before each call (``executor.py``); by default it only marks a write in
        doubt in the mirror. ``causes`` are the ids of the directory events that dirtied the
        key, carried into every audit entry; ``knowledge`` is what the pool learned about the
        app (``worker.store.learned``)."""
        self.mirror = mirror or Mirror(client, app.id, fence)
        executor = Executor(
            app.id,
            self.mirror,
            record or (lambda entry: audit.record(client, entry)),
            gate or marking(self.mirror),
            causes=causes,
            ride=mirror is None and record is None,
            token=fence.token if fence else "",
            bulk=scim if scim.bulk is not None else None,
        )
        session = AppSession(client, app, scim, profile, knowledge or Learned(), executor)
        doubt = DoubtResolver(session, executor, self.mirror)
        self.users = UserReconciler(client, session, executor, doubt, self.mirror)
        self.groups = GroupReconciler(
            client, session, executor, doubt, self.mirror, wait_for_members=wait_for_members
        )

    def reconcile(self, key: ReconcileKey, outcome: Outcome | None = None) -> Outcome:
        """Reconcile one key; ``outcome`` collects calls, trace and follow-ups even when an
        error of the application cuts the run short."""
        outcome = outcome if outcome is not None else Outcome()
        try:
            (self.users if key.kind == "user" else self.groups).reconcile(key, outcome)
        finally:
            self.mirror.flush()  # an audit entry with no mirror write after it
        return outcome
