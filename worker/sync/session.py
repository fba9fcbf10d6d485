"""The application as a reconcile sees it: its settings, the profile and the SCIM client in the
request forms learned to work, and what the app's answers teach, learned for the whole pool
(``worker.store.learned``).

An attribute the app never stores is learned as unsupported and is not sent again; a request
form the app does not implement (``Unsupported``) moves the app to the next form
(``worker.scim.compat``), learned for good.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import redis

from worker.scim import Invalid, ScimClient, ScimError, compat
from worker.scim.profiles import Profile
from worker.store import learned
from worker.store.apps import AppConfig
from worker.store.keys import ReconcileKey
from worker.store.learned import Learned
from worker.sync.executor import Executor, Outcome
from worker.sync.plan import Call

log = logging.getLogger("provisioner.reconcile")

MAX_ROUNDS = 6  # plan -> run rounds; a lookup or a vanished object costs one more round
FALLBACKS = sum(len(chain) - 1 for chain in compat.CHAINS.values())  # a round each at most
ROUNDS = MAX_ROUNDS + FALLBACKS  # of one reconcile


class AppSession:
    """The settings, profile and client of one application for a reconcile, kept up to date
    with what it learns."""

    def __init__(
        self,
        client: redis.Redis,
        app: AppConfig,
        scim: ScimClient,
        profile: Profile,
        knowledge: Learned,
        executor: Executor,
    ):
        """``knowledge`` is what the pool learned about the app: the request forms that work,
        and the attributes it does not store (never sent)."""
        self.redis = client
        self.app_id = app.id
        self.executor = executor
        self.settings = app.settings()
        self.skip_attributes(knowledge.unsupported_attributes)
        self.base_profile = profile
        self.forms = dict(knowledge.forms)
        self.profile = compat.effective(profile, self.forms)
        self.scim = scim.reshaped(self.profile)

    def skip_attributes(self, attributes: Iterable[str]) -> None:
        """Neither want nor send these attributes any more (the app does not store them)."""
        extra = frozenset(attributes) - self.settings.excluded_attributes
        if extra:
            excluded = self.settings.excluded_attributes | extra
            self.settings = replace(self.settings, excluded_attributes=excluded)

    def learn_unsupported(
        self, attribute: str, key: ReconcileKey, outcome: Outcome, why: str = ""
    ) -> None:
        """The app does not store ``attribute``: not sent from now on, by the whole pool."""
        why = why or f"the application answered a write of {attribute} without it"
        outcome.trace.append(f"  {why}: not sent from now on")
        self.skip_attributes([attribute])
        if learned.learn_unsupported(self.redis, self.app_id, attribute, why):
            self.executor.note(key, f"{why}: {attribute} is unsupported by this application "
                               "and is not sent from now on (`apps update` forgets it)")  # fmt: skip
            log.warning("app %s does not store %s: not sent from now on", self.app_id, attribute)

    def refused_extension(
        self, call: Call, error: ScimError, key: ReconcileKey, outcome: Outcome
    ) -> bool:
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
        self.learn_unsupported("department", key, outcome, why)
        return True

    def fall_back(self, call: Call, error: ScimError, key: ReconcileKey, outcome: Outcome) -> None:
        """The app does not implement the form this call was sent in: learn the next form for
        the app, or raise ``Invalid`` (the object is parked) when no form is left."""
        operation = compat.operation_of(call)
        form = compat.next_form(self.base_profile, self.forms, operation) if operation else None
        if operation is None or form is None:
            tried = dict(self.forms)
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
        learned.learn_form(self.redis, self.app_id, operation, form)
        self.profile = compat.effective(self.base_profile, self.forms)
        self.scim = self.scim.reshaped(self.profile)
        what = (
            f"{compat.describe(operation, before)} is not implemented by the application "
            f"({error}): using {compat.describe(operation, form)} from now on"
        )
        outcome.trace.append(f"  {what}")
        self.executor.note(key, what, error.status)
        log.warning("app %s: %s", self.app_id, what)


def why(intent: object) -> str:
    """The reason of an intent, for the trace."""
    return getattr(intent, "reason", None) or "in scope"
