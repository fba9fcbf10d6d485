"""Convergence: any permutation, duplication and concurrency of a set of events
leaves the application in the state that a small reference model of the rules predicts.

The end-to-end property drives real worker processes (2 Celery workers x concurrency 2)
through the producers' publish path against a real SCIM application (scim2-server); the
reference model is ``tests/reference_model.py``. The pure tests keep that model honest by
checking it against ``worker.sync.rules`` on the facts it derives.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import reset_state
from tests.reference_model import (
    ABSENT,
    ABSENT_OR_EMPTY,
    ABSENT_OR_INACTIVE,
    ENTERPRISE,
    PRESENT,
    UNCONSTRAINED,
    Directory,
    Prediction,
    check,
    predict,
)
from tests.support.harness import Harness
from tests.support.scimserver import ScimServer
from worker.cli.status import snapshot
from worker.contract.events import parse_events
from worker.contract.model import (
    AppSettings,
    DirectoryUser,
    GroupFacts,
    MirrorGroup,
    MirrorUser,
    UserFacts,
)
from worker.queue.publish import publish
from worker.sync import rules

APP = "zs"
START = datetime(2026, 11, 28, 17, 0, 0, tzinfo=UTC)
E2E_EXAMPLES = int(os.environ.get("CONVERGENCE_EXAMPLES", "60"))  # in all shares; ~0.5 s each
PHASES = [Phase.explicit, Phase.generate]
if os.environ.get("CONVERGENCE_SHRINK"):
    PHASES.append(Phase.shrink)


# -- scenarios ------------------------------------------------------------------------------
@dataclass
class Scenario:
    """A directory history (``events``, in true order) and how it is delivered: ``chunks``
    of documents, shuffled, some sent twice, one ``publish`` call per chunk, with no pause
    between chunks except after the chunk indexes in ``settle`` (the test then waits for the
    pool to be idle, so that states in between reach the application: a group created and
    later deleted, a user provisioned and later deactivated)."""

    events: list[dict[str, Any]]
    chunks: list[list[dict[str, Any]]]
    settle: tuple[int, ...] = ()

    def __repr__(self) -> str:
        lines = ["Scenario(events=["]
        lines += [f"  {json.dumps(e, separators=(',', ':'))}," for e in self.events]
        lines.append("], delivery=" + repr([[e["id"] for e in c] for c in self.chunks]))
        lines.append(f"   settle after chunks {list(self.settle)})")
        return "\n".join(lines)


class History:
    """Builds v1 documents with increasing (sometimes equal) timestamps and ordered ids."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.clock = START

    def add(self, type_: str, step: timedelta = timedelta(seconds=1), **data: Any) -> None:
        self.clock += step
        stamp = self.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        n = len(self.events)
        self.events.append({"id": f"e{n:03d}", "type": type_, "occurred_at": stamp, "data": data})


def record(uid: str, username: str, state: str = "active", **attrs: Any) -> dict[str, Any]:
    return {"id": uid, "username": username, "state": state, **attrs}


def delivered(events: list[dict[str, Any]], cuts: list[int]) -> list[list[dict[str, Any]]]:
    """``events`` cut into chunks at the sorted positions ``cuts`` (empty chunks dropped)."""
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


STEPS = [timedelta(seconds=1)] * 6 + [timedelta(milliseconds=1), timedelta(microseconds=1),
                                      timedelta(0)]  # fmt: skip
OPS = (  # weighted: deletions are rare enough that most histories keep something to check
    ["group.member_added"] * 5 + ["group.member_removed"] * 2
    + ["app.group_associated"] * 3 + ["app.group_disassociated"] * 2
    + ["app.user_associated"] * 2 + ["app.user_disassociated"]
    + ["user.updated"] * 3 + ["user.suspended", "user.activated", "user.deleted"]
    + ["group.renamed"] * 2 + ["group.deleted"]
)  # fmt: skip
DISPLAY_NAMES = [None, "Ann Lee", "Bob Roe"]
DEPARTMENTS = [None, "Eng", "Ops"]
FIRST_NAMES = [None, "Ann", "Bob"]
EMPLOYEE_IDS = [None, "E1", "E2"]


@st.composite
def user_records(draw: st.DrawFn, uid: str, username: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for prop, values in (("displayname", DISPLAY_NAMES), ("department", DEPARTMENTS),
                         ("firstname", FIRST_NAMES), ("employee_id", EMPLOYEE_IDS)):  # fmt: skip
        value = draw(st.sampled_from(values))
        if value is not None:
            attrs[prop] = value
    if draw(st.booleans()):
        attrs["email"] = username
    state = draw(st.sampled_from(["active", "active", "suspended"]))
    return record(uid, username, state, **attrs)


@st.composite
def scenarios(draw: st.DrawFn, max_users: int = 6, max_groups: int = 3,
              max_ops: int = 30) -> Scenario:  # fmt: skip
    users = [f"u{i}" for i in range(draw(st.integers(1, max_users)))]
    groups = [f"g{i}" for i in range(draw(st.integers(1, max_groups)))]
    h = History()
    # The simplest draws (what Hypothesis tries first and shrinks towards) give a directory
    # with something to provision: every record sent, groups associated, users in a group.
    # Names are unique per id (a user's userNames, a group's names), so no legit collision.
    user_names = {u: 0 for u in users}
    group_names = {g: 0 for g in groups}
    for u in users:
        if draw(st.integers(0, 9)) < 9:  # now and then a user whose record never comes
            h.add("user.created", user=draw(user_records(u, f"{u}.0@example.com")))
    for g in groups:
        if draw(st.integers(0, 9)) < 9:
            h.add("group.created", group={"id": g, "name": f"{g}-name0"})
        if draw(st.sampled_from([True, True, False])):
            h.add("app.group_associated", app_id=APP, group_id=g)
    for u in users:
        home = draw(st.sampled_from([*groups, None]))
        if home is not None:
            h.add("group.member_added", group_id=home, user_id=u)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(OPS))
        step = draw(st.sampled_from(STEPS))
        u, g = draw(st.sampled_from(users)), draw(st.sampled_from(groups))
        if op == "user.updated":
            if draw(st.integers(0, 3)) == 0:
                user_names[u] += 1
            username = f"{u}.{user_names[u]}@example.com"
            h.add(op, step, user=draw(user_records(u, username)))
        elif op in ("user.suspended", "user.activated", "user.deleted"):
            h.add(op, step, user_id=u)
        elif op == "group.renamed":
            group_names[g] += 1
            h.add(op, step, group_id=g, name=f"{g}-name{group_names[g]}")
        elif op == "group.deleted":
            h.add(op, step, group_id=g)
        elif op.startswith("group.member_"):
            h.add(op, step, group_id=g, user_id=u)
        elif op.startswith("app.group_"):
            h.add(op, step, app_id=APP, group_id=g)
        else:
            h.add(op, step, app_id=APP, user_id=u)
    events = h.events
    twice = draw(st.lists(st.sampled_from(events), max_size=5)) if events else []
    shuffled = draw(st.permutations(events + twice))
    cuts = draw(st.lists(st.integers(0, len(shuffled)), min_size=1, max_size=5))
    chunks = delivered(shuffled, sorted(cuts))
    settle = draw(
        st.lists(st.sampled_from(range(len(chunks) - 1)), unique=True, max_size=2)
        if len(chunks) > 1 and draw(st.integers(0, 3)) == 3
        else st.just([])
    )
    return Scenario(events, chunks, tuple(sorted(settle)))


def in_order(*steps: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Hand-made histories: ``("type", data)`` pairs, one second apart."""
    h = History()
    for type_, data in steps:
        h.add(type_, **data)
    return h.events


def rev(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Deliver in reverse order, every event twice, in two chunks."""
    backwards = list(reversed(events)) + events
    half = len(backwards) // 2
    return [backwards[:half], backwards[half:]]


def created(u: str, name: str | None = None, **attrs: Any) -> tuple[str, dict[str, Any]]:
    return "user.created", {"user": record(u, name or f"{u}.0@example.com", **attrs)}


def group(g: str) -> tuple[str, dict[str, Any]]:
    return "group.created", {"group": {"id": g, "name": f"{g}-name0"}}


def member(g: str, u: str, added: bool = True) -> tuple[str, dict[str, Any]]:
    return ("group.member_added" if added else "group.member_removed"), {
        "group_id": g,
        "user_id": u,
    }


def assoc(g: str, on: bool = True) -> tuple[str, dict[str, Any]]:
    return ("app.group_associated" if on else "app.group_disassociated"), {
        "app_id": APP,
        "group_id": g,
    }


# Removal from two covering groups at once (the race that motivates level-triggered reconciles): deactivated.
TWO_REMOVALS = in_order(created("u0"), group("g0"), group("g1"), member("g0", "u0"),
                        member("g1", "u0"), assoc("g0"), assoc("g1"),
                        member("g0", "u0", False), member("g1", "u0", False))  # fmt: skip
# A deleted member leaves its group; a deleted group leaves the app; renames are sent.
DELETIONS = in_order(created("u0", department="Eng"), created("u1", state="suspended"),
                     group("g0"), group("g1"), member("g0", "u0"), member("g0", "u1"),
                     member("g1", "u1"), assoc("g0"), assoc("g1"),
                     ("group.renamed", {"group_id": "g0", "name": "g0-name1"}),
                     ("user.deleted", {"user_id": "u1"}), ("group.deleted", {"group_id": "g1"}),
                     ("user.updated", {"user": record("u0", "u0.1@example.com")}))  # fmt: skip


# Histories whose middle states must reach the application first (``staged``): a group we
# created, disassociated, then deleted is deleted; a provisioned user deleted is deactivated
# and leaves its group; a group renamed while disassociated gets the new name on return.
STAGED = in_order(created("u0", displayname="Ann Lee"), created("u1"), group("g0"), group("g1"),
                  member("g0", "u0"), member("g1", "u1"), member("g0", "u1"), assoc("g0"),
                  assoc("g1"),  # settle
                  assoc("g1", False), ("user.deleted", {"user_id": "u1"}),
                  ("group.renamed", {"group_id": "g1", "name": "g1-name1"}),
                  ("group.renamed", {"group_id": "g0", "name": "g0-name1"}),  # settle
                  ("group.deleted", {"group_id": "g1"}), assoc("g0", False),  # settle
                  ("group.renamed", {"group_id": "g0", "name": "g0-name2"}),
                  assoc("g0"))  # fmt: skip


def staged(events: list[dict[str, Any]], *sizes: int) -> Scenario:
    """Deliver in order, in chunks of ``sizes`` (the rest last), idle after each but the last."""
    chunks = delivered(events, list(itertools.accumulate(sizes)))
    return Scenario(events, chunks, tuple(range(len(chunks) - 1)))


# -- the end-to-end property -----------------------------------------------------------------
def run(h: Any, r: Any, scenario: Scenario) -> None:
    """One example on an empty application: activate, deliver, wait, compare."""
    h.scim.reset()
    reset_state(r)
    h.activate(APP)

    def wait() -> None:
        try:
            h.wait(timeout=60)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{scenario!r}") from None

    for i, chunk in enumerate(scenario.chunks):  # the workers run concurrently
        publish(r, parse_events(json.dumps(chunk)))
        if i in scenario.settle:
            wait()
    wait()
    state = snapshot(r)
    queue = state["queue"]
    assert queue["parked"] == 0 and queue["parked_batches"] == 0, f"{state}\n{scenario!r}"
    prediction = predict(scenario.events, APP)
    problems = check(prediction, h.scim.users(), h.scim.groups())
    assert not problems, "\n".join(["the application breaks the reference model:", *problems,
                                     repr(scenario)])  # fmt: skip


def _delivery_property(shard: int, bulk: bool = False) -> Any:
    """The end-to-end property over its ``shard``-th share of the ``E2E_EXAMPLES`` random
    scenarios (its own seed), so that the shares run side by side (pytest-xdist); the first
    share also runs the hand-made scenarios. With ``bulk``, a share of scenarios of its own
    against an app that announces SCIM Bulk: the pool's writes travel in Bulk requests."""
    share = E2E_EXAMPLES // SHARDS + (1 if shard < E2E_EXAMPLES % SHARDS else 0)

    @settings(
        max_examples=max(1, share),
        deadline=None,
        database=None,
        # A failure here is often a race: shrinking re-runs it dozens of times (minutes each)
        # and may end in "Flaky". The failing scenario is printed whole; CONVERGENCE_SHRINK=1
        # shrinks.
        phases=PHASES,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],  # fmt: skip
    )
    @seed(20261128 + shard + (100 if bulk else 0))  # the same scenarios on every run
    @given(scenario=scenarios())
    def test(harness: Any, r: Any, scenario: Scenario) -> None:
        assert harness.scim.bulk == bulk or not bulk  # the Bulk share's app announces Bulk
        run(harness, r, scenario)
        if bulk and harness.writes():
            assert any(path.endswith("/Bulk") for _, path in harness.writes())

    if bulk:
        test.__name__ = "test_any_delivery_converges_to_the_reference_model_with_bulk"
        return test
    if shard == 0:
        for scenario in (Scenario(TWO_REMOVALS, rev(TWO_REMOVALS)),
                         Scenario(DELETIONS, rev(DELETIONS)), staged(STAGED, 9, 4, 2)):  # fmt: skip
            test = example(scenario=scenario)(test)
    test.__name__ = f"test_any_delivery_converges_to_the_reference_model_{shard}"
    return test


SHARDS = 3
test_any_delivery_converges_to_the_reference_model_0 = _delivery_property(0)
test_any_delivery_converges_to_the_reference_model_1 = _delivery_property(1)
test_any_delivery_converges_to_the_reference_model_2 = _delivery_property(2)


@pytest.fixture(name="harness")
def _harness_by_test(request: Any, r: Any, worker_pool: Any, tmp_path: Any) -> Any:
    """The conftest's harness; for the Bulk share, on an app that announces Bulk."""
    bulk = request.node.name.endswith("_with_bulk")
    with ScimServer(bulk=True if bulk else None) as server:
        yield Harness(r, server, tmp_path)


test_any_delivery_converges_to_the_reference_model_with_bulk = _delivery_property(0, bulk=True)


# -- the reference model against worker.sync.rules (pure, no Redis) --------------------------------
SETTINGS = AppSettings(APP)


def user_facts(d: Directory, uid: str) -> UserFacts:
    user = DirectoryUser(uid, d.records.get(uid), d.suspended.get(uid, False),
                         uid in d.deleted_users)  # fmt: skip
    direct = d.user_associated.get((APP, uid), False)
    return UserFacts(user, direct, frozenset(d.covering_groups(APP, uid)))


def group_facts(d: Directory, gid: str) -> GroupFacts:
    return GroupFacts(gid, d.names.get(gid), gid in d.deleted_groups,
                      d.group_associated.get((APP, gid), False),
                      frozenset(d.live_members(gid)))  # fmt: skip


def disagreements(prediction: Prediction) -> list[str]:
    """Where ``worker.sync.rules`` (fed the model's own facts) and the model's prediction differ."""
    d = prediction.directory
    out: list[str] = []
    mirror_user = MirrorUser("remote", {"userName": "x", "active": True})
    for uid, expected in prediction.users.items():
        facts = user_facts(d, uid)
        fresh = rules.user_intent(facts, None, SETTINGS)
        held = rules.user_intent(facts, mirror_user, SETTINGS)
        if expected.kind == PRESENT:
            ok = (isinstance(fresh, rules.Provision) and fresh.attributes == expected.attributes
                  and held == fresh)  # fmt: skip
        elif expected.kind == ABSENT:  # never had a record: never created
            ok = isinstance(fresh, rules.Leave)
        else:
            assert expected.kind == ABSENT_OR_INACTIVE
            ok = isinstance(fresh, rules.Leave) and isinstance(held, rules.Deprovision)
        if not ok:
            out.append(f"user {uid}: model {expected}, rules {fresh} / {held}")
    remote_ids = {
        uid: (f"r-{uid}" if e.kind == PRESENT else None) for uid, e in prediction.users.items()
    }
    for gid, expected in prediction.groups.items():
        facts = group_facts(d, gid)
        mirror_group = MirrorGroup("remote", "old name", {})
        fresh = rules.group_intent(facts, None, remote_ids, SETTINGS)
        held = rules.group_intent(facts, mirror_group, remote_ids, SETTINGS)
        if expected.kind == PRESENT:
            want = rules.SyncGroup(expected.name or "", {u: f"r-{u}" for u in expected.members})
            ok = fresh == want and held == want
        elif expected.kind == ABSENT_OR_EMPTY:
            ok = isinstance(fresh, rules.Leave) and held == rules.SyncGroup(expected.name or "", {})
        elif expected.kind == UNCONSTRAINED:
            ok = isinstance(fresh, rules.Leave) and isinstance(held, rules.Leave)
        else:
            assert expected.kind == ABSENT
            ok = isinstance(fresh, rules.Leave)
            if gid in d.deleted_groups:  # deleted in the app if we ever created it
                ok = ok and isinstance(held, rules.DeleteGroup)
        if not ok:
            out.append(f"group {gid}: model {expected}, rules {fresh} / {held}")
    return out


HAND_MADE = [
    (TWO_REMOVALS, {"u0": ABSENT_OR_INACTIVE}, {"g0": ABSENT_OR_EMPTY, "g1": ABSENT_OR_EMPTY}),
    (DELETIONS, {"u0": PRESENT, "u1": ABSENT_OR_INACTIVE}, {"g0": PRESENT, "g1": ABSENT}),
    (STAGED, {"u0": PRESENT, "u1": ABSENT_OR_INACTIVE}, {"g0": PRESENT, "g1": ABSENT}),
    # implicit deny: a member of a group that is not associated is never created
    (in_order(created("u0"), group("g0"), member("g0", "u0")),
     {"u0": ABSENT_OR_INACTIVE}, {"g0": ABSENT}),
    # a member whose record never came: covered but never created; the group stays empty
    (in_order(group("g0"), member("g0", "u0"), assoc("g0")),
     {"u0": ABSENT}, {"g0": ABSENT_OR_EMPTY}),
    # disassociated: the group is left as is; its member is no longer covered
    (in_order(created("u0"), group("g0"), member("g0", "u0"), assoc("g0"), assoc("g0", False)),
     {"u0": ABSENT_OR_INACTIVE}, {"g0": UNCONSTRAINED}),
    # direct association, suspended later; disassociated then deleted group: deleted
    (in_order(created("u0"), ("app.user_associated", {"app_id": APP, "user_id": "u0"}),
              ("user.suspended", {"user_id": "u0"}), group("g0"), member("g0", "u0"),
              assoc("g0"), assoc("g0", False), ("group.deleted", {"group_id": "g0"})),
     {"u0": PRESENT}, {"g0": ABSENT}),
]  # fmt: skip


@pytest.mark.parametrize("events, users, groups", HAND_MADE)
def test_reference_model_agrees_with_the_rules_on_hand_made_cases(events, users, groups):
    prediction = predict(events, APP)
    assert {u: e.kind for u, e in prediction.users.items()} == users
    assert {g: e.kind for g, e in prediction.groups.items()} == groups
    assert disagreements(prediction) == []
    # The model is order-independent: the same set in any order predicts the same.
    assert predict(list(reversed(events)), APP).users == prediction.users
    assert predict(list(reversed(events)), APP).groups == prediction.groups


def test_reference_model_reads_attributes_and_versions():
    events = in_order(created("u0", department="Eng", displayname="Ann Lee"),
                      ("app.user_associated", {"app_id": APP, "user_id": "u0"}),
                      ("user.updated", {"user": record("u0", "u0.1@example.com",
                                                       department="Ops")}))  # fmt: skip
    # Same instant as the update, higher id: this suspension wins the state register.
    tie = dict(events[-1], id="e999", type="user.suspended", data={"user_id": "u0"})
    expected = predict([*events, tie], APP).users["u0"]
    assert expected.kind == PRESENT
    assert expected.attributes == {
        "userName": "u0.1@example.com", "name.givenName": None, "name.familyName": None,
        "displayName": None, "emails": None, "externalId": None, "department": "Ops",
        "active": False,
    }  # fmt: skip


def test_check_flags_every_kind_of_departure_from_the_prediction():
    prediction = predict(DELETIONS, APP)  # u0 present (u0.1@…), u1 deleted, g0 renamed, g1 gone
    good_users = [{"id": "a", "userName": "u0.1@example.com", "active": True},
                  {"id": "b", "userName": "u1.0@example.com", "active": False}]  # fmt: skip
    good_groups = [{"id": "x", "displayName": "g0-name1", "members": [{"value": "a"}]}]
    assert check(prediction, good_users, good_groups) == []
    assert check(prediction, good_users[:1], good_groups) == []  # u1 absent: fine too
    bad: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
        ([good_users[0], {**good_users[1], "active": True}], good_groups),  # deleted, active
        ([{**good_users[0], ENTERPRISE: {"department": "Eng"}}], good_groups),  # stale value
        ([{**good_users[0], "userName": "u0.0@example.com"}], good_groups),  # old userName
        ([good_users[0], {**good_users[0], "id": "c"}], good_groups),  # duplicate userName
        ([*good_users, {"id": "s", "userName": "stranger", "active": False}], good_groups),
        (good_users[1:], []),  # u0 and g0 missing
        (good_users, [{**good_groups[0], "members": [{"value": "a"}, {"value": "b"}]}]),
        (good_users, [{**good_groups[0], "displayName": "g0-name0"}]),  # rename not sent
        (good_users, [*good_groups, {"id": "y", "displayName": "g1-name0"}]),  # deleted group
        (good_users, [*good_groups, {**good_groups[0], "id": "z"}]),  # duplicate displayName
    ]
    for users, groups in bad:
        assert check(prediction, users, groups), (users, groups)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(scenario=scenarios())
def test_reference_model_agrees_with_the_rules_on_random_histories(scenario: Scenario) -> None:
    prediction = predict(scenario.events, APP)
    assert disagreements(prediction) == []
    delivered_set = [e for chunk in scenario.chunks for e in chunk]
    again = predict(delivered_set, APP)
    assert (again.users, again.groups) == (prediction.users, prediction.groups)
