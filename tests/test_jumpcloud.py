"""The JumpCloud connector's parts without a pool: the mapping (pure), the snapshot lines, and
the API client against the local JumpCloud double (paging, 429, 401/403, pace, Insights)."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.jumpcloud import mapping
from producers.jumpcloud.api import (
    AuthError,
    Client,
    JumpCloudError,
    ListingChanged,
    Stopped,
    check_url,
    insights_url_for,
)
from producers.jumpcloud.directory import read_snapshot, snapshot_lines
from producers.jumpcloud.follow import FollowOptions, query
from producers.jumpcloud.mapping import EdgeChange, MappingError, ObjectChange
from tests.support.jumpcloud import FakeJumpCloud
from worker.contract.events import parse_documents
from worker.contract.snapshot import parse_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake() -> Iterator[FakeJumpCloud]:
    with FakeJumpCloud() as double:
        yield double


def client(fake: FakeJumpCloud, **options: object) -> Client:
    return Client(fake.api_key, api_url=fake.url, **{"rate": 1000.0, **options})  # type: ignore[arg-type]


# -- mapping -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ({"state": "ACTIVATED", "suspended": False, "activated": True}, "active"),
        ({"state": "SUSPENDED", "suspended": True}, "suspended"),
        ({"state": "STAGED", "activated": False}, "suspended"),  # not onboarded yet
        ({"state": "ACTIVATED", "suspended": True}, "suspended"),  # the flag wins
        ({"suspended": False, "activated": True}, "active"),  # no state: an older record
        ({"activated": False}, "suspended"),
        ({"suspended": "True"}, "suspended"),  # a CSV export's cell
        ({"state": "", "suspended": "False", "activated": "True"}, "active"),
    ],
)
def test_user_state(raw: dict[str, object], state: str) -> None:
    assert mapping.user_state(raw) == state


def test_user_record_maps_the_attributes_of_a_system_user() -> None:
    raw = {"_id": "5c86b7149fdce00001d38014", "username": "ann", "email": "ann@example.com",
           "firstname": "Ann", "lastname": "Lee", "displayname": "Ann Lee",
           "employeeIdentifier": "E7", "department": "Sales", "jobTitle": "ignored",
           "state": "ACTIVATED", "suspended": False}  # fmt: skip
    assert mapping.user_record(raw) == {
        "id": "5c86b7149fdce00001d38014", "username": "ann", "state": "active",
        "email": "ann@example.com", "firstname": "Ann", "lastname": "Lee",
        "displayname": "Ann Lee", "employee_id": "E7", "department": "Sales",
    }  # fmt: skip


def test_user_record_cuts_long_texts_and_refuses_what_the_contract_refuses() -> None:
    record = mapping.user_record({"_id": "u1", "username": "bob", "department": "x" * 300,
                                  "lastname": ""})  # fmt: skip
    assert record == {"id": "u1", "username": "bob", "state": "active", "department": "x" * 256}
    with pytest.raises(MappingError, match="user u2"):
        mapping.user_record({"_id": "u2", "username": " "})
    with pytest.raises(MappingError, match="user u3: email"):
        mapping.user_record({"_id": "u3", "username": "cy", "email": "not an address"})
    with pytest.raises(MappingError, match="group g1"):
        mapping.group_record({"id": "g1", "name": "n" * 129})


def association(op: str, source: tuple[str, str], target: tuple[str, str]) -> dict[str, object]:
    ends = {"from": {"type": source[0], "object_id": source[1]},
            "to": {"type": target[0], "object_id": target[1]}}  # fmt: skip
    return {"id": "e1", "event_type": "association_change", "timestamp": "2026-11-29T06:00:00Z",
            "association": {"op": op, "connection": ends}}  # fmt: skip


def test_classify_insights_events() -> None:
    user = {"event_type": "user_update", "resource": {"type": "user", "id": "u1"}}
    assert mapping.classify(user) == ObjectChange("user", "u1")
    assert mapping.classify({**user, "event_type": "user_create"}) == ObjectChange(
        "user", "u1", True
    )
    group = {"event_type": "group_update", "resource": {"type": "user_group", "id": "g1"}}
    assert mapping.classify(group) == ObjectChange("group", "g1")
    assert mapping.classify({**group, "resource": {"type": "system_group", "id": "s1"}}) is None
    assert mapping.classify({**user, "success": False}) is None
    assert mapping.classify({"event_type": "user_login_attempt", "resource": {"id": "u1"}}) is None
    member = association("add", ("USER_GROUP", "g1"), ("USER", "u1"))
    assert mapping.classify(member) == EdgeChange("member", "g1", "u1", True)
    reversed_ends = association("remove", ("USER", "u1"), ("USER_GROUP", "g1"))
    assert mapping.classify(reversed_ends) == EdgeChange("member", "g1", "u1", False)
    bound = association("add", ("APPLICATION", "a1"), ("USER_GROUP", "g1"))
    assert mapping.classify(bound) == EdgeChange("app_group", "a1", "g1", True)
    direct = association("remove", ("USER", "u1"), ("APPLICATION", "a1"))
    assert mapping.classify(direct) == EdgeChange("app_user", "a1", "u1", False)
    assert mapping.classify(association("update", ("USER_GROUP", "g1"), ("USER", "u1"))) is None
    assert mapping.classify(association("add", ("SYSTEM_GROUP", "s1"), ("SYSTEM", "d1"))) is None


def test_v1_events_of_changes_are_valid_and_deterministic() -> None:
    at = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    eid = mapping.event_id({"id": "30b03bc3-be76-4919-b341-f9b271a5777e"})
    assert eid == "jc-30b03bc3-be76-4919-b341-f9b271a5777e"
    assert mapping.event_id({"id": "has space"}) == mapping.event_id({"id": "has space"})
    assert mapping.event_id({"id": "has space"}).startswith("jc-h")
    documents = [
        *mapping.object_events(ObjectChange("user", "u1"), {"_id": "u1", "username": "a"}, eid, at),
        *mapping.object_events(ObjectChange("user", "u2"), None, "jc-2", at),
        *mapping.object_events(ObjectChange("group", "g1"), {"id": "g1", "name": "G"}, "jc-3", at),
        *mapping.object_events(
            ObjectChange("group", "g3", True), {"id": "g3", "name": "H"}, "jc-8", at
        ),
        *mapping.object_events(ObjectChange("group", "g2"), None, "jc-4", at),
        *mapping.edge_events(EdgeChange("member", "g1", "u1", True), {}, "jc-5", at),
        *mapping.edge_events(
            EdgeChange("app_group", "a1", "g1", False), {"a1": ["zs", "zs2"]}, "jc-6", at
        ),
        *mapping.edge_events(EdgeChange("app_user", "a9", "u1", True), {"a1": ["zs"]}, "jc-7", at),
    ]
    events = parse_documents(documents)
    assert [e.type for e in events] == [
        "user.updated", "user.deleted", "group.renamed", "group.created", "group.deleted",
        "group.member_added", "app.group_disassociated", "app.group_disassociated",
    ]  # fmt: skip
    assert [e.id for e in events][-2:] == ["jc-6.zs", "jc-6.zs2"]  # an unmapped app: none


# -- snapshot lines ----------------------------------------------------------------------------
def test_snapshot_lines_are_valid_snapshot_lines_in_order() -> None:
    lines = list(snapshot_lines(
        "jumpcloud:org-1", "2026-11-29T06:00:00Z",
        [{"_id": "u1", "username": "ann", "state": "SUSPENDED"}, {"_id": "u2", "username": "bo"}],
        [({"id": "g1", "name": "Sales"}, ["u1", "u2", "u1"]), ({"id": "g2", "name": "Ops"}, [])],
        [("zs", ["g1"], ["u2"])],
    ))  # fmt: skip
    assert [line["kind"] for line in lines] == ["snapshot", "user", "user", "group", "group", "app"]
    assert lines[0] == {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z",
                        "source": "jumpcloud:org-1"}  # fmt: skip
    assert lines[1]["user"]["state"] == "suspended"
    assert lines[3]["members"] == ["u1", "u2"]  # once each
    assert lines[5] == {"kind": "app", "app_id": "zs", "groups": ["g1"], "users": ["u2"]}
    for line in lines:
        parsed, found = parse_line(line)
        assert parsed is not None and not found, (line, found)


def test_read_snapshot_through_the_api(fake: FakeJumpCloud) -> None:
    users = [fake.add_user(f"user{i}", department="Sales") for i in range(3)]
    sales, empty = fake.add_group("Sales"), fake.add_group("Empty")
    fake.add_member(sales, users[0])
    fake.add_member(sales, users[1])
    app = fake.add_application()
    fake.bind(app, "user_group", sales)
    fake.bind(app, "user", users[2])
    with client(fake) as jc:
        lines = list(read_snapshot(jc, "jumpcloud:default", "2026-11-29T06:00:00Z", {"zs": app}))
    assert [line["user"]["id"] for line in lines if line["kind"] == "user"] == users
    groups = {line["group"]["id"]: line["members"] for line in lines if line["kind"] == "group"}
    assert groups == {sales: users[:2], empty: []}
    assert lines[-1] == {"kind": "app", "app_id": "zs", "groups": [sales], "users": [users[2]]}


def test_an_unknown_application_stops_the_read(fake: FakeJumpCloud) -> None:
    with client(fake) as jc, pytest.raises(JumpCloudError, match="no application nope"):
        list(read_snapshot(jc, "jumpcloud:default", "2026-11-29T06:00:00Z", {"zs": "nope"}))


# -- the client: paging ------------------------------------------------------------------------
def test_users_are_read_in_overlapping_pages_of_100_sorted_by_id(fake: FakeJumpCloud) -> None:
    ids = [fake.add_user(f"u{i:03d}", event=False) for i in range(250)]
    with client(fake) as jc:
        read = [u["_id"] for u in jc.users()]
    assert read == ids  # every user once, in order
    pages = [r.query for r in fake.requests]
    assert [(p["limit"], p["skip"], p["sort"]) for p in pages] == [
        ("100", "0", "_id"), ("100", "90", "_id"), ("100", "180", "_id")
    ]  # fmt: skip


def test_a_deletion_while_paging_loses_no_other_user(fake: FakeJumpCloud) -> None:
    ids = [fake.add_user(f"u{i:03d}", event=False) for i in range(250)]

    def delete_early_user(seen: object) -> None:
        if getattr(seen, "query", {}).get("skip") == "90" and ids[5] in fake.users:
            fake.delete_user(ids[5], event=False)  # shifts every later user back by one

    fake.on_request = delete_early_user
    with client(fake) as jc:
        read = [u["_id"] for u in jc.users()]
    assert set(ids) - set(read) == set()  # u005 was read before it went; nothing skipped


def test_many_deletions_while_paging_stop_the_listing(fake: FakeJumpCloud) -> None:
    ids = [fake.add_user(f"u{i:03d}", event=False) for i in range(250)]

    def delete_fifteen(seen: object) -> None:
        if getattr(seen, "query", {}).get("skip") == "90" and ids[0] in fake.users:
            for uid in ids[:15]:
                fake.delete_user(uid, event=False)

    fake.on_request = delete_fifteen
    with client(fake) as jc, pytest.raises(ListingChanged):
        list(jc.users())


# -- the client: 429, errors, pace -------------------------------------------------------------
def test_429_waits_as_retry_after_says(fake: FakeJumpCloud) -> None:
    uid = fake.add_user("ann", event=False)
    fake.throttle(2, retry_after="1")
    with client(fake) as jc:
        started = time.monotonic()
        assert jc.user(uid)["username"] == "ann"  # type: ignore[index]
        elapsed = time.monotonic() - started
        assert jc.throttled == 2
    arrivals = [r.at for r in fake.requests]
    assert [r.status for r in fake.requests] == [429, 429, 200]
    assert arrivals[1] - arrivals[0] >= 0.95 and arrivals[2] - arrivals[1] >= 0.95
    assert elapsed < 4


def test_429_with_an_http_date_and_without_retry_after(fake: FakeJumpCloud) -> None:
    uid = fake.add_user("ann", event=False)
    fake.throttle(1, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True))
    fake.throttle(1, retry_after=None)  # backs off on its own
    with client(fake) as jc:
        assert jc.user(uid) is not None
    arrivals = [r.at for r in fake.requests]
    assert arrivals[1] - arrivals[0] >= 0.9  # the date is 1 to 2 s away (second precision)


def test_the_client_gives_up_on_a_persistent_429(fake: FakeJumpCloud) -> None:
    fake.throttle(3, retry_after="0")
    with client(fake, max_attempts=3) as jc, pytest.raises(JumpCloudError, match="gave up after 3"):
        jc.user("x")


def test_a_stop_cuts_a_retry_after_short(fake: FakeJumpCloud) -> None:
    fake.throttle(1, retry_after="30")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with client(fake, stop=stop) as jc, pytest.raises(Stopped):
        jc.user("x")
    assert time.monotonic() - started < 5


def test_401_and_403_are_clear_and_never_show_the_key() -> None:
    with FakeJumpCloud(org_id="5f0a5f0a5f0a5f0a5f0a5f0a") as fake:
        with Client("wrong-key-123", api_url=fake.url) as jc, pytest.raises(AuthError) as error:
            list(jc.users())
        assert "401" in str(error.value) and "--api-key-file" in str(error.value)
        assert "wrong-key-123" not in str(error.value)
        with client(fake) as jc, pytest.raises(AuthError, match="needs --org-id"):
            jc.user("x")  # a multi-tenant admin's key without x-org-id
        with client(fake, org_id=fake.org_id) as jc:
            assert jc.user("x") is None  # with it: answered (404: no such user)
        assert fake.requests[-1].headers["x-org-id"] == fake.org_id
        assert fake.requests[-1].headers["x-api-key"] == fake.api_key
        fake.forbidden = True
        with client(fake, org_id=fake.org_id) as jc, pytest.raises(AuthError) as error:
            jc.user("x")
        assert "403" in str(error.value) and fake.api_key not in str(error.value)


def test_the_client_keeps_its_own_pace(fake: FakeJumpCloud) -> None:
    with client(fake, rate=10.0, burst=1) as jc:
        for _ in range(6):
            jc.user("x")
    arrivals = [r.at for r in fake.requests]
    assert arrivals[-1] - arrivals[0] >= 0.45  # 5 gaps of 0.1 s
    fake.requests.clear()
    with client(fake, rate=10.0, burst=3) as jc:
        for _ in range(6):
            jc.user("x")
    arrivals = [r.at for r in fake.requests]
    assert arrivals[2] - arrivals[0] < 0.18  # 3 at once (paced: 0.2 s)
    assert arrivals[-1] - arrivals[0] >= 0.27  # then 0.1 s apart


def test_urls() -> None:
    assert insights_url_for("https://console.jumpcloud.com") == "https://api.jumpcloud.com"
    assert insights_url_for("https://console.eu.jumpcloud.com/") == "https://api.eu.jumpcloud.com"
    assert insights_url_for("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    with pytest.raises(JumpCloudError, match="https"):
        check_url("http://console.jumpcloud.com")


# -- Directory Insights ------------------------------------------------------------------------
def test_insights_pages_follow_x_search_after(fake: FakeJumpCloud) -> None:
    uid = fake.add_user("ann")
    for i in range(24):
        fake.update_user(uid, department=f"d{i}")
    fake.record_event("user_login_attempt", resource={"type": "user", "id": uid})
    options = FollowOptions(page_size=10)
    cursor = {"start_time": "2020-01-01T00:00:00Z", "search_after": None}
    seen, pages = [], 0
    with client(fake) as jc:
        while True:
            body = query(cursor, options, datetime.now(UTC))
            events, cursor["search_after"], more = jc.events(body)
            seen += [e["event_type"] for e in events]
            pages += 1
            if not more:
                break
    assert pages == 3 and seen == ["user_create"] + ["user_update"] * 24  # no login event
    sent = [r.body for r in fake.requests]
    assert all(b["service"] == ["directory"] and b["sort"] == "ASC" and b["limit"] == 10
               for b in sent)  # fmt: skip
    # each page asks for the rows after the last one of the page before (X-Search_after)
    assert "search_after" not in sent[0]
    assert [b["search_after"] for b in sent[1:]] == [list(fake.rows[9].key),
                                                     list(fake.rows[19].key)]  # fmt: skip


# -- the CSV example ---------------------------------------------------------------------------
def test_csv_example_turns_an_export_into_a_snapshot(tmp_path: Path) -> None:
    script = ROOT / "examples" / "jumpcloud_csv_to_snapshot.py"
    result = subprocess.run(
        [sys.executable, str(script), str(ROOT / "examples" / "jumpcloud_users.csv"),
         "--group-members", str(ROOT / "examples" / "jumpcloud_group_members.csv"),
         "--app", "zscaler=Sales", "--source", "jumpcloud:csv", "--taken-at",
         "2026-11-29T06:00:00Z"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line in lines:
        parsed, found = parse_line(line)
        assert parsed is not None and not found, (line, found)
    assert lines[0] == {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z",
                        "source": "jumpcloud:csv"}  # fmt: skip
    users = {line["user"]["username"]: line["user"] for line in lines if line["kind"] == "user"}
    assert users["ann.lee"] == {
        "id": "5c86b7149fdce00001d38014", "username": "ann.lee", "state": "active",
        "email": "ann.lee@example.com", "firstname": "Ann", "lastname": "Lee",
        "displayname": "Ann Lee", "employee_id": "E7", "department": "Sales",
    }  # fmt: skip
    assert users["bo.chen"]["state"] == "suspended" and users["cy.diaz"]["state"] == "suspended"
    groups = {line["group"]["name"]: line for line in lines if line["kind"] == "group"}
    assert sorted(groups["Sales"]["members"]) == sorted(
        [users["ann.lee"]["id"], users["bo.chen"]["id"]]
    )
    app = next(line for line in lines if line["kind"] == "app")
    assert app == {"kind": "app", "app_id": "zscaler", "groups": [groups["Sales"]["group"]["id"]],
                   "users": []}  # fmt: skip
    bad = tmp_path / "bad.csv"
    bad.write_text("username,email\nann,ann@example.com\n")
    refused = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
    assert refused.returncode == 1 and "_id" in refused.stderr and not refused.stdout
