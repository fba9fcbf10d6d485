"""The pure parts of issue 10: the comparison of an app with the intent (``worker/sync/verify.py``),
matching a listing by name, seeding and the cost rule (``worker/sync/listing.py``), the schedule;
and the pacer's priority, against a real Redis with no worker involved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim import Invalid
from worker.scim.client import RemoteGroup, RemoteUser
from worker.store import keys, scripts
from worker.sync import listing
from worker.sync.listing import Listed, NameIndex, Pacer, Page
from worker.sync.rules import Delete, DeleteGroup, Deprovision, Leave, Provision, SyncGroup
from worker.sync.verify import (
    DELETED_BY_HAND,
    GROUP_MEMBERS_EXTRA,
    GROUP_MEMBERS_MISSING,
    GROUP_MISSING,
    GROUP_NOT_DELETED,
    GROUP_RENAMED,
    USER_ACTIVE,
    USER_ATTRIBUTES,
    USER_MISSING,
    attribute_drift,
    group_drift,
    same_value,
    user_drift,
)
from worker.sync.verify_schedule import every_text, is_due, parse_every

ANN = {"userName": "ann@example.com", "active": True, "emails": "ann@example.com",
       "displayName": "Ann", "department": None}  # fmt: skip


# -- attributes --------------------------------------------------------------------------------
def test_same_value_ignores_case_only_for_user_name_and_emails():
    assert same_value("emails", "ann@example.com", "Ann@Example.COM")
    assert same_value("userName", "ann@example.com", "ANN@example.com")
    assert not same_value("displayName", "Ann", "ANN")
    assert not same_value("emails", "ann@example.com", "bob@example.com")
    assert not same_value("emails", "ann@example.com", None)


def test_same_value_accepts_the_apps_recorded_form_of_our_value():
    normalized = {"displayName": ("Ann", "ANN")}
    assert same_value("displayName", "Ann", "ANN", normalized)
    assert not same_value("displayName", "Ann", "Annie", normalized)  # changed since
    assert not same_value("department", "Eng", "ENG", normalized)


def test_attribute_drift_names_each_difference_and_skips_ignored_attributes():
    held = {"userName": "ANN@example.com", "active": True, "emails": "Ann@Example.com",
            "displayName": "Annie", "department": "Ops", "externalId": "x"}  # fmt: skip
    assert attribute_drift(ANN, held) == {
        "displayName": ("Ann", "Annie"),
        "department": (None, "Ops"),
    }
    assert attribute_drift(ANN, held, ignored={"department", "displayName"}) == {}
    assert (
        attribute_drift({**ANN, "department": None}, {**held, "department": None}, {"displayName"})
        == {}
    )


# -- users -------------------------------------------------------------------------------------
def remote(attributes: dict, rid: str = "r1") -> RemoteUser:
    return RemoteUser(rid, {k: v for k, v in attributes.items() if v is not None})


def test_user_drift_for_each_intent():
    entry = MirrorUser("r1", dict(ANN))
    assert user_drift("u1", Provision(ANN), entry, remote(ANN)) is None
    changed = user_drift("u1", Provision(ANN), entry, remote({**ANN, "displayName": "Bob"}))
    assert changed.kind == USER_ATTRIBUTES and changed.held and changed.remote_id == "r1"
    assert changed.detail == "displayName: 'Ann' here, 'Bob' in the application"
    suspended = {**ANN, "active": False}
    assert user_drift("u1", Provision(suspended), entry, remote(ANN)).kind == USER_ACTIVE
    reactivate = user_drift("u1", Provision(ANN), entry, remote(suspended))
    assert reactivate.kind == USER_ATTRIBUTES and "active" in reactivate.detail
    missing = user_drift("u1", Provision(ANN), None, None)
    assert missing.kind == USER_MISSING and not missing.held
    gone = user_drift("u1", Provision(ANN), entry, None)
    assert gone.kind == DELETED_BY_HAND and gone.object == "user:u1"
    out = Deprovision("no longer covered")
    assert user_drift("u1", out, entry, remote(ANN)).kind == USER_ACTIVE
    assert user_drift("u1", out, entry, remote(suspended)) is None
    assert user_drift("u1", out, entry, None).kind == DELETED_BY_HAND
    assert user_drift("u1", Delete("deleted"), entry, None) is None  # as it should be
    assert user_drift("u1", Delete("deleted"), entry, remote(ANN)).kind == USER_ACTIVE
    assert user_drift("u1", Leave("not covered"), None, remote(ANN)) is None  # not ours


def test_user_drift_skips_what_the_app_does_not_store():
    app_copy = remote({**ANN, "department": None, "displayName": None})
    desired = {**ANN, "department": "Eng"}
    assert user_drift("u1", Provision(desired), None, app_copy).kind == USER_ATTRIBUTES
    ignored = {"department", "displayName"}
    assert user_drift("u1", Provision(desired), None, app_copy, ignored) is None


# -- groups ------------------------------------------------------------------------------------
def test_group_drift_names_renames_and_members_missing_or_extra():
    entry = MirrorGroup("rg", "eng", {"u1": "r1", "u2": "r2"})
    intent = SyncGroup("eng", {"u1": "r1", "u2": "r2"})
    assert group_drift("g1", intent, entry, RemoteGroup("rg", "eng", frozenset({"r1", "r2"}))) == []
    app_copy = RemoteGroup("rg", "Engineering", frozenset({"r1", "r9"}))
    found = {d.kind: d for d in group_drift("g1", intent, entry, app_copy)}
    assert set(found) == {GROUP_RENAMED, GROUP_MEMBERS_MISSING, GROUP_MEMBERS_EXTRA}
    assert found[GROUP_MEMBERS_MISSING].detail == "1 members missing: u2"
    assert found[GROUP_MEMBERS_EXTRA].detail == "1 members not ours to keep: r9"
    unreadable = group_drift("g1", intent, entry, app_copy, members_readable=False)
    assert [d.kind for d in unreadable] == [GROUP_RENAMED]
    assert group_drift("g1", intent, entry, app_copy, members_readable=False, renames=False) == []


def test_group_drift_for_groups_gone_missing_or_left_behind():
    entry = MirrorGroup("rg", "eng", {"u1": "r1"})
    intent = SyncGroup("eng", {"u1": "r1"})
    [gone] = group_drift("g1", intent, entry, None)
    assert (
        gone.kind == DELETED_BY_HAND and gone.held and gone.audit_name == "group_create_provision"
    )
    [missing] = group_drift("g1", intent, None, None)
    assert missing.kind == GROUP_MISSING and not missing.held
    assert group_drift("g1", SyncGroup("eng", {}), None, None) == []  # empty: never created
    app_copy = RemoteGroup("rg", "eng", frozenset({"r1"}))
    [left] = group_drift("g1", DeleteGroup("deleted"), entry, app_copy)
    assert left.kind == GROUP_NOT_DELETED and left.audit_name == "group_delete_provision"
    assert group_drift("g1", DeleteGroup("deleted"), entry, None) == []
    assert group_drift("g1", Leave("not associated"), None, app_copy) == []


# -- listing -----------------------------------------------------------------------------------
def test_name_index_takes_the_exact_name_first_then_the_name_but_for_case_never_another():
    names = {"a": "ANN@x.com", "b": "ann@x.com", "c": "Ann@X.com", "d": "bob@x.com"}
    users = [RemoteUser(rid, {"userName": name}) for rid, name in names.items()]
    index = listing.user_index(users)
    assert index.find("ann@x.com").id == "b"
    assert index.find("aNN@X.COM").id == "a"  # no exact match: the first but for case
    assert index.find("carl@x.com") is None
    assert NameIndex([], lambda x: x).find("anything") is None


def test_seeding_adopts_matches_and_records_absence_only_from_a_complete_listing():
    found = listing.user_index([RemoteUser("r1", {"userName": "Ann@x.com", "active": True})])
    wanted = {"u1": "ann@x.com", "u2": "bob@x.com"}
    seed = listing.seed_users(wanted, found, complete=True)
    assert seed.entries == {"u1": MirrorUser("r1", {"userName": "Ann@x.com", "active": True})}
    assert seed.absent == ["u2"]
    assert listing.seed_users(wanted, found, complete=False).absent == []
    groups = listing.group_index([RemoteGroup("rg", "eng", frozenset({"r1", "r7"}))])
    seed = listing.seed_groups({"g1": "eng", "g2": "ops"}, groups, True, {"r1": "u1"})
    assert seed.entries == {"g1": MirrorGroup("rg", "eng", {"u1": "r1", "?r7": "r7"})}
    assert seed.absent == ["g2"]


def test_listing_costs_no_more_pages_than_the_lookups_it_replaces():
    assert listing.pages_for(0, 100) == 1 and listing.pages_for(250, 100) == 3
    assert listing.worth_listing(250, 100, 3) and not listing.worth_listing(250, 100, 2)
    assert listing.worth_listing(0, 100, 1)


class FakeTransport:
    """Pages of ``per_page`` out of ``total`` objects, noted as ``PacedTransport`` notes them."""

    def __init__(self, total: int, per_page: int, too_big_over: int | None = None):
        self.total, self.per_page, self.too_big_over = total, per_page, too_big_over
        self.requests, self.pages, self.too_big = 0, [], False

    def list(self, size: int) -> Iterator[int]:
        start = 0
        while True:
            self.requests += 1
            if self.too_big_over is not None and size > self.too_big_over:
                self.too_big = True
                raise Invalid(200, "response body over 1048576 bytes refused")
            count = min(size, self.per_page, self.total - start)
            self.pages.append(Page(self.total, count))
            yield from range(start, start + count)
            start += count
            if count == 0 or start >= self.total:
                return


def test_read_stops_after_the_first_page_when_listing_costs_more():
    t = FakeTransport(total=450, per_page=100)
    listed = listing.read(t.list, t, 100, budget=3)
    assert (len(listed.items), listed.complete, listed.requests, listed.total) == (
        100,
        False,
        1,
        450,
    )
    t = FakeTransport(total=450, per_page=100)
    assert listing.read(t.list, t, 100, budget=5) == Listed(list(range(450)), True, 5, 450)
    t = FakeTransport(total=450, per_page=50)  # the app serves 50 a page: 9 pages
    assert not listing.read(t.list, t, 100, budget=8).complete
    t = FakeTransport(total=0, per_page=100)
    assert listing.read(t.list, t, 100, budget=1) == Listed([], True, 1, 0)


def test_read_halves_the_page_when_a_page_is_too_big():
    t = FakeTransport(total=120, per_page=100, too_big_over=40)
    listed = listing.read(t.list, t, 100)
    assert listed.items == list(range(120)) and listed.complete
    assert t.requests == 2 + 5  # pages of 100 and 50 refused, then 5 pages of 25
    t = FakeTransport(total=5, per_page=100, too_big_over=0)
    with pytest.raises(Invalid):
        listing.read(t.list, t, 1)


# -- schedule ----------------------------------------------------------------------------------
def test_durations_and_when_a_scheduled_verify_is_due():
    assert parse_every("24h") == 86400 and parse_every("30m") == 1800 and parse_every("2s") == 2
    assert parse_every("7d") == 7 * 86400 and parse_every("off") == 0 and parse_every("90") == 90
    with pytest.raises(ValueError):
        parse_every("soon")
    assert every_text(86400) == "1d" and every_text(7200) == "2h" and every_text(2) == "2s"
    assert every_text(None) == "off"
    assert not is_due(1000.0, None, None, None)
    assert is_due(1000.0, 60, None, None)  # never verified
    assert not is_due(1000.0, 60, 950.0, None) and is_due(1000.0, 60, 940.0, None)
    assert not is_due(1000.0, 60, 900.0, 990.0)  # queued, on its way
    assert is_due(1000.0, 60, 100.0, 300.0)  # queued long ago: lost, queued again


# -- priority ----------------------------------------------------------------------------------
def test_a_low_priority_pacer_waits_for_the_apps_live_work(r):
    r.hset(keys.WQ_OWNER, "zs user u1", "token")  # a reconcile of the app in flight
    r.zadd(keys.WQ_DELAYED, {"zs user u2": scripts.redis_now_ms(r) + 500})  # and one due soon
    r.zadd(keys.WQ_DELAYED, {"other user u3": scripts.redis_now_ms(r)})  # another app's: no matter
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            r.hdel(keys.WQ_OWNER, "zs user u1")
        if len(slept) == 4:
            r.zadd(keys.WQ_DELAYED, {"zs user u2": scripts.redis_now_ms(r) + 60_000})  # backoff

    pacer = Pacer(r, "zs", 1000, 10, low_priority=True, sleep=sleep)
    pacer()
    assert slept == [listing.BUSY_POLL] * 4 and pacer.yielded == 4 * listing.BUSY_POLL
    slept.clear()
    r.hset(keys.WQ_OWNER, "zs user u1", "token")
    Pacer(r, "zs", 1000, 10, sleep=sleep)()  # a normal pacer does not wait for it
    assert slept == []


def test_a_pacer_keeps_to_the_rate(r):
    import time

    pacer = Pacer(r, "paced", rate=20, burst=1)
    started = time.monotonic()
    for _ in range(6):
        pacer()
    assert time.monotonic() - started >= 5 * 0.05 * 0.9
