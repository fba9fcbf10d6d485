"""Snapshots without workers: the line models, the pure diff, and, on a Redis of this module's
own with ``lua/ingest.lua`` run here, a property test: applying a snapshot's events to any
projection yields the snapshot's directory (checked against ``tests/reference_model.py``), and
the same snapshot again derives nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.snapshot import DeletionsRefused, SnapshotError, publish_snapshot
from producers.snapshot_diff import (
    GuardLimits,
    HeldGroup,
    HeldUser,
    Stamp,
    deletion_event,
    group_events,
    pair_event,
    refused_deletions,
    user_events,
)
from tests import reference_model
from tests.conftest import own_redis, reset_state
from worker.contract.events import GroupRecord, UserRecord, parse_documents, parse_event
from worker.contract.snapshot import GroupLine, Header, UserLine, parse_line
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import publish
from worker.store import keys, scripts

T = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
STAMP = Stamp("test:org", T)
ANN = {"id": "u-7", "username": "ann", "email": "ann@example.com", "state": "active"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker ingests behind the tests' back."""
    yield from own_redis(tmp_path_factory)


def header(taken_at: datetime = T, source: str = "test:org") -> str:
    return json.dumps({"kind": "snapshot", "taken_at": taken_at.isoformat(), "source": source})


def ingest_pending(r: redis.Redis) -> None:
    for batch_id in r.zrange(keys.PENDING_BATCHES, 0, -1):
        scripts.run(r, "ingest", batch_id.decode())


# -- lines ---------------------------------------------------------------------------------------
def test_each_kind_of_line_parses() -> None:
    line, found = parse_line(header())
    assert found == [] and isinstance(line, Header) and line.taken_at == T
    line, found = parse_line(json.dumps({"kind": "user", "user": ANN}).encode())
    assert found == [] and isinstance(line, UserLine) and line.user.email == "ann@example.com"
    group = {"kind": "group", "group": {"id": "g-42", "name": "Sales"}, "members": ["u-7"]}
    line, found = parse_line(group)  # an already decoded line, as a connector may pass it
    assert found == [] and isinstance(line, GroupLine) and line.members == ["u-7"]
    line, found = parse_line('{"kind": "app", "app_id": "zs", "groups": [], "users": ["u-7"]}')
    assert found == [] and line is not None and line.kind == "app"


@pytest.mark.parametrize(
    ("raw", "pointer", "reason"),
    [
        ('{"kind": "user", "user": {"id": "u", "username": "a", "state": "active"}, "x": 1}',
         "/x", "unknown field"),
        ('{"kind": "user", "user": {"id": "u", "username": "a", "state": "gone"}}',
         "/user/state", "'active' or 'suspended'"),
        ('{"kind": "user", "user": {"id": "u 1", "username": "a", "state": "active"}}',
         "/user/id", "pattern"),
        ('{"kind": "user", "user": {"id": "u", "username": "a", "state": "active", "pw": 1}}',
         "/user/pw", "unknown field"),
        ('{"kind": "group", "group": {"id": "g", "name": "n"}}', "/members", "Field required"),
        ('{"kind": "group", "group": {"id": "g", "name": "n"}, "members": ["u", 5]}',
         "/members/1", "string"),
        ('{"kind": "group", "group": {"id": "g", "name": "n"}, "members": ["u", "v", "u"]}',
         "/members/2", "duplicate"),
        ('{"kind": "app", "app_id": "zs", "groups": ["g"]}', "/users", "Field required"),
        ('{"kind": "app", "app_id": "zs", "groups": ["g", "g"], "users": []}', "/groups/1",
         "duplicate"),
        ('{"kind": "snapshot", "taken_at": "2026-11-29T06:00:00", "source": "x"}', "/taken_at",
         "zone"),
        ('{"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z"}', "/source", "Field required"),
        ('{"kind": "directory"}', "/kind", "unknown line kind"),
        ('{"user": {}}', "/kind", "missing field"),
        ("[1, 2]", "/", "one JSON object per line"),
        ("{not json", "/", "malformed JSON"),
    ],
)  # fmt: skip
def test_bad_lines_name_the_field(raw: str, pointer: str, reason: str) -> None:
    line, found = parse_line(raw)
    assert line is None
    assert any(p.startswith(f"{pointer}: ") and reason in p for p in found), found


def test_a_bad_snapshot_is_refused_whole_with_line_numbers(r: redis.Redis) -> None:
    user = {"kind": "user", "user": ANN}
    lines = [
        header(),
        json.dumps(user),
        "",  # blank lines are skipped, and counted
        '{"kind": "user", "user": {"id": "u-8", "username": "bo", "state": "on"}}',
        json.dumps(user),  # u-7 again
        '{"kind": "group", "group": {"id": "g-1", "name": "G"}, "members": ["u-7"], "x": 0}',
        header(),
    ]
    with pytest.raises(SnapshotError) as refused:
        publish_snapshot(r, lines)
    assert refused.value.lines == [
        "line 4: /user/state: Input should be 'active' or 'suspended'",
        "line 5: /user/id: duplicate: user 'u-7' is on an earlier line",
        "line 6: /x: unknown field",
        "line 7: /kind: a second header (the header is the first line only)",
    ]
    assert r.xlen(keys.JOURNAL) == 0 and r.zcard(keys.PENDING_BATCHES) == 0
    assert not list(r.scan_iter(match=keys.PREFIX + "snapshot:*"))  # its scratch sets are gone


def test_the_header_comes_first_and_a_snapshot_is_never_empty(r: redis.Redis) -> None:
    with pytest.raises(SnapshotError) as refused:
        publish_snapshot(r, [json.dumps({"kind": "user", "user": ANN}), header()])
    assert refused.value.lines[0].startswith("line 1: /kind: the first line must be the header")
    with pytest.raises(SnapshotError) as refused:
        publish_snapshot(r, ["", "  "])
    assert refused.value.lines == ["line 1: /: empty snapshot: no header"]


def test_problems_beyond_twenty_are_not_listed(r: redis.Redis) -> None:
    bad = '{"kind": "user", "user": {"id": "u", "username": "a", "state": "on"}}'
    with pytest.raises(SnapshotError) as refused:
        publish_snapshot(r, [header()] + [bad] * 50)
    assert len(refused.value.lines) == 20 and refused.value.lines[-1].startswith("line 21:")


# -- the pure diff -------------------------------------------------------------------------------
def user(**changes: Any) -> UserRecord:
    return UserRecord.model_validate({**ANN, **changes})


def held_user(record: UserRecord, version: str = "0" * 17 + " e1", **fields: Any) -> HeldUser:
    document = record.model_dump(exclude_none=True)
    state = document.pop("state")
    return HeldUser(**{"record": document, "record_v": version, "state": state,
                       "state_v": version, **fields})  # fmt: skip


def test_events_carry_taken_at_and_ids_that_depend_on_everything() -> None:
    event = STAMP.event("user.deleted", {"user_id": "u-7"})
    assert event == STAMP.event("user.deleted", {"user_id": "u-7"})
    assert event["occurred_at"] == "2026-11-29T06:00:00.000000Z"
    parse_event(event)  # a valid v1 event: the id fits the contract
    others = [
        Stamp("other:org", T).event("user.deleted", {"user_id": "u-7"}),
        Stamp("test:org", T + timedelta(microseconds=1)).event("user.deleted", {"user_id": "u-7"}),
        STAMP.event("group.deleted", {"group_id": "u-7"}),
        STAMP.event("user.deleted", {"user_id": "u-8"}),
    ]
    assert len({event["id"], *(e["id"] for e in others)}) == 5
    assert STAMP.newer(event, None) and STAMP.newer(event, f"{STAMP.micros - 1:017d} zzz")
    assert not STAMP.newer(event, f"{STAMP.micros + 1:017d} a")


def test_user_events() -> None:
    ann = user()
    assert _types(ann, HeldUser()) == ["user.created"]
    assert _types(ann, held_user(ann)) == []
    assert _types(user(department="Sales"), held_user(ann)) == ["user.updated"]
    assert _types(user(email=None), held_user(ann)) == ["user.updated"]  # a field dropped
    assert _types(user(state="suspended"), held_user(ann)) == ["user.suspended"]
    assert _types(ann, held_user(user(state="suspended"))) == ["user.activated"]
    newer = f"{STAMP.micros + 1:017d} e9"
    assert _types(user(department="Sales"), held_user(ann, newer)) == []  # a newer event wins
    assert _types(user(department="Sales", state="suspended"), held_user(ann, record_v=newer)) \
        == ["user.suspended"]  # fmt: skip
    assert _types(ann, HeldUser(deleted=True)) == []  # deletion is terminal
    # Only a state: the record is created (and the state register keeps the newer value).
    assert _types(ann, HeldUser(state="suspended", state_v=newer)) == ["user.created"]
    [updated] = user_events(STAMP, user(department="Sales"), held_user(ann))
    assert updated["data"]["user"] == {**ANN, "department": "Sales"}  # the whole record


def _types(record: UserRecord, held: HeldUser) -> list[str]:
    return [e["type"] for e in user_events(STAMP, record, held)]


def test_group_events() -> None:
    sales = GroupRecord(id="g-42", name="Sales")
    old = "0" * 17 + " e1"
    assert [e["type"] for e in group_events(STAMP, sales, HeldGroup())] == ["group.created"]
    assert group_events(STAMP, sales, HeldGroup(name="Sales", name_v=old)) == []
    [renamed] = group_events(STAMP, sales, HeldGroup(name="Sales team", name_v=old))
    assert renamed["type"] == "group.renamed" and renamed["data"] == {"group_id": "g-42",
                                                                      "name": "Sales"}  # fmt: skip
    newer = f"{STAMP.micros + 1:017d} e9"
    assert group_events(STAMP, sales, HeldGroup(name="Sales team", name_v=newer)) == []
    assert group_events(STAMP, sales, HeldGroup(deleted=True, name="x", name_v=old)) == []


@pytest.mark.parametrize(
    ("wanted", "register", "deleted", "expected"),
    [
        (True, None, False, "group.member_added"),
        (True, b"0" + b"0" * 17 + b" e1", False, "group.member_added"),
        (True, b"1" + b"0" * 17 + b" e1", False, None),  # already a member
        (True, None, True, None),  # a deleted user: ingest would ignore it
        (False, b"1" + b"0" * 17 + b" e1", False, "group.member_removed"),
        (False, b"0" + b"0" * 17 + b" e1", False, None),
        (False, None, False, None),
        (False, b"1" + b"0" * 17 + b" e1", True, None),
        (False, b"1" + b"9" * 17 + b" e1", False, None),  # added by a newer event: it stays
        (True, b"0" + b"9" * 17 + b" e1", False, None),  # removed by a newer event: it stays
    ],
)
def test_pair_events(wanted: bool, register: bytes | None, deleted: bool, expected: str | None):
    event = pair_event(STAMP, "member", "g-42", "u-7", wanted, register, deleted)
    assert (event and event["type"]) == expected
    if event:
        assert event["data"] == {"group_id": "g-42", "user_id": "u-7"}
    app_event = pair_event(STAMP, "app_user", "zs", "u-7", True, None, False)
    assert app_event and app_event["data"] == {"app_id": "zs", "user_id": "u-7"}


def test_deletion_events() -> None:
    old, newer = "0" * 17 + " e1", f"{STAMP.micros + 1:017d} e9"
    gone = deletion_event(STAMP, "user", "u-7", HeldUser(record={}, record_v=old, state_v=old))
    assert gone and gone["type"] == "user.deleted" and gone["data"] == {"user_id": "u-7"}
    assert deletion_event(STAMP, "user", "u-7", HeldUser(record_v=old, state_v=newer)) is None
    assert deletion_event(STAMP, "user", "u-7", HeldUser(deleted=True)) is None
    group = deletion_event(STAMP, "group", "g-1", HeldGroup(name="G", name_v=old))
    assert group and group["data"] == {"group_id": "g-1"}
    assert deletion_event(STAMP, "group", "g-1", HeldGroup(name="G", name_v=newer)) is None


def test_the_deletion_guard_share() -> None:
    limits = GuardLimits(percent=10, minimum=20)
    assert limits.share(100) == 20 and limits.share(1000) == 100 and limits.share(1009) == 100
    assert refused_deletions({"user": 100}, {"user": 1000}, limits, None) == []
    [reason] = refused_deletions({"user": 101, "group": 3}, {"user": 1000, "group": 5}, limits,
                                 None)  # fmt: skip
    assert "delete 101 of the projection's 1000 users" in reason and "(100: 10 %" in reason
    assert refused_deletions({"user": 101}, {"user": 1000}, limits, 101) == []
    assert len(refused_deletions({"user": 102}, {"user": 1000}, limits, 101)) == 1
    assert len(refused_deletions({"user": 21, "group": 21}, {}, limits, None)) == 2


# -- against the projection (ingest.lua run here) ----------------------------------------------
def test_deletions_beyond_the_share_are_refused_before_anything_is_published(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_GUARD_MINIMUM", "2")
    monkeypatch.setenv("PROVISIONER_GUARD_PERCENT", "10")
    events = [_event(f"e{i}", "user.created", -10, user=_record(f"u{i}")) for i in range(10)]
    publish(r, parse_documents(events), notify=False)
    ingest_pending(r)
    journaled = r.xlen(keys.JOURNAL)
    lines = [header()] + [json.dumps({"kind": "user", "user": _record(f"u{i}")}) for i in range(7)]
    with pytest.raises(DeletionsRefused) as refused:
        publish_snapshot(r, lines)
    assert refused.value.result.deletions == {"user": 3}
    assert "delete 3 of the projection's 10 users" in refused.value.lines[0]
    assert r.xlen(keys.JOURNAL) == journaled and r.zcard(keys.PENDING_BATCHES) == 0
    with pytest.raises(DeletionsRefused):
        publish_snapshot(r, lines, allow_deletions=2)
    result = publish_snapshot(r, lines, allow_deletions=3)
    assert result.deletions == {"user": 3} and result.counts == {"user.deleted": 3}
    assert result.published == 3 and result.held == {"user": 10}
    ingest_pending(r)
    assert [r.hexists(keys.user(f"u{i}"), "del") for i in range(6, 10)] == [False, True, True, True]


def _record(uid: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "username": f"{uid}@example.com", "state": "active", **fields}


def _event(event_id: str, type_: str, seconds: float, **data: Any) -> dict[str, Any]:
    moment = T + timedelta(seconds=seconds)
    return {"id": event_id, "type": type_, "occurred_at": moment.isoformat(), "data": data}


# -- the property ------------------------------------------------------------------------------
USERS, GROUPS, APPS = ["u0", "u1", "u2", "u3"], ["g0", "g1", "g2"], ["a0", "a1"]
records = st.builds(
    lambda name, dept, state: {"username": name, "state": state,
                               **({"department": dept} if dept else {})},  # fmt: skip
    st.sampled_from(["ann", "bo"]), st.sampled_from([None, "Sales", "R&D"]),
    st.sampled_from(["active", "suspended"]),
)  # fmt: skip


@st.composite
def initial_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of any type about a small directory, older or newer than the snapshot."""
    events = []
    for i in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(reference_model_types()))
        u, g, a = draw(st.sampled_from(USERS)), draw(st.sampled_from(GROUPS)), draw(
            st.sampled_from(APPS))  # fmt: skip
        seconds = draw(st.integers(-30, 29)) + 0.5  # never a tie with the snapshot's T
        data: dict[str, Any] = {
            "user.created": {"user": {"id": u, **draw(records)}},
            "user.updated": {"user": {"id": u, **draw(records)}},
            "user.suspended": {"user_id": u}, "user.activated": {"user_id": u},
            "user.deleted": {"user_id": u},
            "group.created": {"group": {"id": g, "name": draw(st.sampled_from(["G", "H"]))}},
            "group.renamed": {"group_id": g, "name": draw(st.sampled_from(["G", "H"]))},
            "group.deleted": {"group_id": g},
            "group.member_added": {"group_id": g, "user_id": u},
            "group.member_removed": {"group_id": g, "user_id": u},
            "app.group_associated": {"app_id": a, "group_id": g},
            "app.group_disassociated": {"app_id": a, "group_id": g},
            "app.user_associated": {"app_id": a, "user_id": u},
            "app.user_disassociated": {"app_id": a, "user_id": u},
        }[kind]  # fmt: skip
        events.append(_event(f"e{i}", kind, seconds, **data))
    return events


def reference_model_types() -> list[str]:
    from worker.contract.events import EVENT_TYPES

    return list(EVENT_TYPES)


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    subset = lambda items: draw(st.lists(st.sampled_from(items), unique=True))  # noqa: E731
    return {
        "users": {u: draw(records) for u in subset(USERS)},
        "groups": {g: (draw(st.sampled_from(["G", "H"])), subset(USERS)) for g in subset(GROUPS)},
        "apps": {a: (subset(GROUPS), subset(USERS)) for a in subset(APPS)},
    }


def snapshot_lines(snap: dict[str, Any]) -> list[str]:
    lines = [header()]
    lines += [json.dumps({"kind": "user", "user": {"id": u, **rec}})
              for u, rec in snap["users"].items()]  # fmt: skip
    lines += [json.dumps({"kind": "group", "group": {"id": g, "name": name}, "members": members})
              for g, (name, members) in snap["groups"].items()]  # fmt: skip
    lines += [json.dumps({"kind": "app", "app_id": a, "groups": gs, "users": us})
              for a, (gs, us) in snap["apps"].items()]  # fmt: skip
    return lines


def snapshot_facts(snap: dict[str, Any], initial: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the snapshot asserts, as events at T for the reference model: every record, name,
    pair of the listed groups and apps; the deletion of every object the projection held that
    it lacks, unless an event newer than T wrote one of the object's own registers."""
    facts: list[dict[str, Any]] = []

    def fact(kind: str, **data: Any) -> None:
        facts.append(_event(f"fact{len(facts)}", kind, 0, **data))

    for u, rec in snap["users"].items():
        fact("user.created", user={"id": u, **rec})
    for g, (name, members) in snap["groups"].items():
        fact("group.created", group={"id": g, "name": name})
        for u in USERS:
            fact("group.member_added" if u in members else "group.member_removed", group_id=g,
                 user_id=u)  # fmt: skip
    for a, (groups, users) in snap["apps"].items():
        for g in GROUPS:
            kind = "app.group_associated" if g in groups else "app.group_disassociated"
            fact(kind, app_id=a, group_id=g)
        for u in USERS:
            kind = "app.user_associated" if u in users else "app.user_disassociated"
            fact(kind, app_id=a, user_id=u)
    own = {
        "user.created": "user", "user.updated": "user", "user.suspended": "user",
        "user.activated": "user", "user.deleted": "user", "group.created": "group",
        "group.renamed": "group", "group.deleted": "group",
    }  # fmt: skip
    held, newer = set(), set()
    for event in initial:
        kind = own.get(event["type"])
        if kind:
            subject = (kind, reference_model_subject(event))
            held.add(subject)
            moment = datetime.fromisoformat(event["occurred_at"])
            if moment > T and not event["type"].endswith(".deleted"):
                newer.add(subject)
    for kind, object_id in sorted(held - newer):
        listed = snap["users"] if kind == "user" else snap["groups"]
        if object_id not in listed:
            fact(f"{kind}.deleted", **{f"{kind}_id": object_id})
    return facts


def reference_model_subject(event: dict[str, Any]) -> str:
    data = event["data"]
    return (data.get("user") or data.get("group") or {}).get("id") or data.get(
        "user_id") or data["group_id"]  # fmt: skip


def projection(r: redis.Redis) -> dict[str, Any]:
    """The projection's directory, as the reference model describes one."""
    out: dict[str, Any] = {"records": {}, "suspended": {}, "deleted_users": set(), "names": {},
                           "deleted_groups": set(), "members": {}, "group_apps": {},
                           "user_apps": {}}  # fmt: skip
    for u in USERS:
        fields = r.hgetall(keys.user(u))
        if b"rec" in fields:
            out["records"][u] = json.loads(fields[b"rec"])
        if b"st" in fields:
            out["suspended"][u] = fields[b"st"] == b"suspended"
        if b"del" in fields:
            out["deleted_users"].add(u)
    for g in GROUPS:
        fields = r.hgetall(keys.group(g))
        if b"name" in fields:
            out["names"][g] = fields[b"name"].decode()
        if b"del" in fields:
            out["deleted_groups"].add(g)
        out["members"][g] = {m.decode() for m in r.smembers(keys.group_members(g))}
    for a in APPS:
        out["group_apps"][a] = {m.decode() for m in r.smembers(keys.app_groups(a))}
        out["user_apps"][a] = {m.decode() for m in r.smembers(keys.app_users(a))}
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(initial=initial_events(), snap=snapshots())
def test_a_snapshot_takes_any_projection_to_its_directory(
    r: redis.Redis, initial: list[dict[str, Any]], snap: dict[str, Any]
) -> None:
    reset_state(r)
    if initial:
        publish(r, parse_documents(initial), notify=False)
        ingest_pending(r)
    result = publish_snapshot(r, snapshot_lines(snap), allow_deletions=100)
    ingest_pending(r)
    assert result.published == result.events and result.duplicates == 0

    expected = reference_model.directory(initial + snapshot_facts(snap, initial))
    got = projection(r)
    assert got["deleted_users"] == expected.deleted_users
    assert got["deleted_groups"] == expected.deleted_groups
    live_users = [u for u in USERS if u not in expected.deleted_users]
    live_groups = [g for g in GROUPS if g not in expected.deleted_groups]
    for u in live_users:
        assert got["records"].get(u) == expected.records.get(u), u
        assert got["suspended"].get(u, False) == expected.suspended.get(u, False), u
    for g in live_groups:
        assert got["names"].get(g) == expected.names.get(g), g
        assert got["members"][g] & set(live_users) == expected.members.get(g, set()) & set(
            live_users), g  # fmt: skip
    for a in APPS:
        groups = {g for g in live_groups if expected.group_associated.get((a, g))}
        users = {u for u in live_users if expected.user_associated.get((a, u))}
        assert got["group_apps"][a] & set(live_groups) == groups, a
        assert got["user_apps"][a] & set(live_users) == users, a

    again = publish_snapshot(r, snapshot_lines(snap), allow_deletions=100)
    assert again.events == 0, again.sample


def test_a_newer_event_not_yet_ingested_still_keeps_its_object(r: redis.Redis) -> None:
    """The scan reads the projection; an event journaled meanwhile, newer than the snapshot,
    is found in the journal before anything is published."""
    older = [_event(f"e{i}", "user.created", -10, user=_record(f"u{i}")) for i in range(3)]
    publish(r, parse_documents(older), notify=False)
    ingest_pending(r)
    newer = _event("e9", "user.updated", +10, user=_record("u2", department="R&D"))
    publish(r, parse_documents([newer]), notify=False)  # journaled, waiting for ingest
    lines = [header(), json.dumps({"kind": "user", "user": _record("u0")})]
    result = publish_snapshot(r, lines, dry_run=True)
    assert result.deletions == {"user": 1} and result.kept_newer == {"user": 1}
    assert [e["data"] for e in result.sample] == [{"user_id": "u1"}]
