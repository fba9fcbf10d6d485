"""Snapshots end to end: ``provisioner snapshot`` and ``rebuild --from-snapshot`` over the CLI
(and ``publish_snapshot`` as a connector calls it), real workers, a real SCIM application."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from producers.snapshot import publish_snapshot
from tests.support.harness import Harness
from worker.store import journal, keys

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@dataclass
class Directory:
    """A directory as a snapshot lists it; ``events`` creates it, ``lines`` describes it."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record
    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # id -> name, members
    apps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # groups, users

    def events(self, h: Harness) -> list[dict[str, Any]]:
        out = [h.user(u, **{k: v for k, v in r.items() if k not in ("id", "username")})
               for u, r in self.users.items()]  # fmt: skip
        for g, (name, members) in self.groups.items():
            out += [h.group(g, name)] + [h.member(g, u) for u in members]
        for a, (groups, users) in self.apps.items():
            out += [h.associate(a, g) for g in groups]
            out += [h.event("app.user_associated", app_id=a, user_id=u) for u in users]
        return out

    def lines(self, taken_at: str, source: str = "test:org") -> list[str]:
        out = [json.dumps({"kind": "snapshot", "taken_at": taken_at, "source": source})]
        out += [json.dumps({"kind": "user", "user": r}) for r in self.users.values()]
        out += [json.dumps({"kind": "group", "group": {"id": g, "name": n}, "members": m})
                for g, (n, m) in self.groups.items()]  # fmt: skip
        out += [json.dumps({"kind": "app", "app_id": a, "groups": gs, "users": us})
                for a, (gs, us) in self.apps.items()]  # fmt: skip
        return out

    def write(self, path: Path, taken_at: str) -> str:
        path.write_text("\n".join(self.lines(taken_at)) + "\n")
        return str(path)


def record(uid: str, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "username": f"{uid}@example.com", "department": "rd", "state": "active",
            **fields}  # fmt: skip


def company() -> Directory:
    """eng (u0-u4) and ops (u5-u7) associated with zs; u8 associated directly; tmp (u0), not
    associated; the app `other` (not active) has eng."""
    d = Directory()
    d.users = {f"u{i}": record(f"u{i}") for i in range(9)}
    d.groups = {"g1": ("eng", [f"u{i}" for i in range(5)]), "g2": ("ops", ["u5", "u6", "u7"]),
                "g4": ("tmp", ["u0"])}  # fmt: skip
    d.apps = {"zs": (["g1", "g2"], ["u8"]), "other": (["g1"], [])}
    return d


def taken_after(h: Harness) -> str:
    """A snapshot time after every event sent so far and before the next one (the harness's
    clock moves a second per event)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(h.clock)) + ".500Z"


def difference(result: Any) -> set[tuple[str, str]]:
    return {(e["type"], json.dumps(e["data"], sort_keys=True)) for e in result.sample}


def data(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True)


# -- publishing a snapshot ----------------------------------------------------------------------
def test_an_unchanged_snapshot_derives_no_event(harness: Harness, tmp_path: Path) -> None:
    h = harness
    h.activate("zs")
    d = company()
    h.send(*d.events(h))
    path = d.write(tmp_path / "snapshot.jsonl", taken_after(h))
    journaled, writes = h.redis.xlen(keys.JOURNAL), len(h.writes())

    result = h.cli("snapshot", path, "--dry-run")
    assert "projection: 9 users, 3 groups" in result.stdout
    assert "difference: 0 events" in result.stdout and "nothing published" in result.stdout
    result = h.cli("snapshot", path)
    assert "published 0 events (0 duplicates skipped)" in result.stdout
    h.wait()
    assert h.redis.xlen(keys.JOURNAL) == journaled and len(h.writes()) == writes


def test_each_change_derives_exactly_its_events_and_the_same_snapshot_again_none(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    h.activate("zs")
    before = company()
    h.send(*before.events(h))
    after = copy.deepcopy(before)
    after.users["u9"] = record("u9")  # a new hire in eng
    after.groups["g1"][1].append("u9")
    after.users["u1"]["department"] = "sales"  # a record changed
    after.users["u2"]["state"] = "suspended"  # only the state
    del after.users["u3"]  # gone
    after.groups["g1"][1].remove("u3")
    after.groups["g1"][1].remove("u4")  # moved from eng to ops
    after.groups["g2"][1].append("u4")
    after.groups["g2"] = ("operations", after.groups["g2"][1])  # renamed
    after.groups["g3"] = ("qa", ["u0"])  # a new group, associated
    del after.groups["g4"]  # gone
    after.apps["zs"] = (["g1", "g2", "g3"], ["u6"])  # u8's direct access ends, u6 gets one
    del after.apps["other"]  # no line: `other` keeps its associations
    taken_at = taken_after(h)
    lines = after.lines(taken_at)

    result = publish_snapshot(h.redis, lines, show=100)
    assert difference(result) == {
        ("user.created", data(user=record("u9"))),
        ("group.member_added", data(group_id="g1", user_id="u9")),
        ("user.updated", data(user=record("u1", department="sales"))),
        ("user.suspended", data(user_id="u2")),
        ("user.deleted", data(user_id="u3")),
        ("group.member_removed", data(group_id="g1", user_id="u3")),
        ("group.member_removed", data(group_id="g1", user_id="u4")),
        ("group.member_added", data(group_id="g2", user_id="u4")),
        ("group.renamed", data(group_id="g2", name="operations")),
        ("group.created", data(group={"id": "g3", "name": "qa"})),
        ("group.member_added", data(group_id="g3", user_id="u0")),
        ("group.deleted", data(group_id="g4")),
        ("app.group_associated", data(app_id="zs", group_id="g3")),
        ("app.user_associated", data(app_id="zs", user_id="u6")),
        ("app.user_disassociated", data(app_id="zs", user_id="u8")),
    }
    assert result.events == result.published == 15 and result.deletions == {"user": 1, "group": 1}
    assert {e["occurred_at"] for e in result.sample} == {taken_at.replace(".500Z", ".500000Z")}
    h.wait()

    users = h.users()
    assert users["u1@example.com"][ENTERPRISE]["department"] == "sales"
    assert [users[f"u{i}@example.com"]["active"] for i in (2, 3, 8)] == [False, False, False]
    assert users["u9@example.com"]["active"] is True
    assert h.members("eng") == {f"u{i}@example.com" for i in (0, 1, 2, 9)}
    assert h.members("operations") == {f"u{i}@example.com" for i in (4, 5, 6, 7)}
    assert h.members("qa") == {"u0@example.com"}
    assert h.redis.sismember(keys.app_groups("other"), "g1")  # an app without a line: as it was

    journaled, writes = h.redis.xlen(keys.JOURNAL), len(h.writes())
    path = str(tmp_path / "again.jsonl")
    Path(path).write_text("\n".join(lines) + "\n")
    again = h.cli("snapshot", path)
    assert "difference: 0 events" in again.stdout and "published 0 events" in again.stdout
    h.wait()
    assert h.redis.xlen(keys.JOURNAL) == journaled and len(h.writes()) == writes


def test_events_newer_than_the_snapshot_win(harness: Harness) -> None:
    h = harness
    h.activate("zs")
    d = company()
    h.send(*d.events(h))
    taken_at = taken_after(h)  # the directory is read now, the next events happen after it
    h.send(
        h.user("u1", department="R&D"),  # u1's record changes after the snapshot was taken
        h.member("g2", "u0"),  # u0 joins ops after it
        h.user("u20"),  # u20 is hired after it, in no group
        h.event("user.suspended", user_id="u5"),
    )
    stale = copy.deepcopy(d)  # the snapshot, taken before those, says the older values
    stale.users["u5"]["department"] = "ops"  # and one change of its own, older than u5's
    result = publish_snapshot(h.redis, stale.lines(taken_at), show=100)
    assert difference(result) == {
        ("user.updated", data(user=record("u5", department="ops"))),
    }
    assert result.kept_newer == {"user": 1} and result.deletions == {}  # u20 is not deleted
    h.wait()
    users = h.users()
    assert users["u1@example.com"][ENTERPRISE]["department"] == "R&D"
    assert users["u5@example.com"]["active"] is False  # the state register is newer: kept
    assert json.loads(h.redis.hget(keys.user("u5"), "rec"))["department"] == "ops"
    assert "u0@example.com" in h.members("ops")
    assert not h.redis.hexists(keys.user("u20"), "del")


def test_deletions_beyond_the_guard_are_refused_whole(harness: Harness, tmp_path: Path) -> None:
    h = harness
    d = Directory(users={f"u{i}": record(f"u{i}") for i in range(30)})
    h.send(*d.events(h))
    truncated = Directory(users={u: d.users[u] for u in list(d.users)[:5]})  # a cut-off export
    path = truncated.write(tmp_path / "snapshot.jsonl", taken_after(h))
    before = projection(h.redis)
    journaled = h.redis.xlen(keys.JOURNAL)

    for options in ((), ("--allow-deletions", "24"), ("--dry-run",)):
        result = h.cli("snapshot", path, *options, check=False)
        assert result.returncode == 3, (options, result.stderr)
        assert "would delete 25 of the projection's 30 users" in result.stderr
        assert "more than the deletion guard's share (20: 10 %, at least 20)" in result.stderr
        assert "nothing was published" in result.stderr
    assert h.redis.xlen(keys.JOURNAL) == journaled and h.redis.zcard(keys.PENDING_BATCHES) == 0
    assert projection(h.redis) == before

    result = h.cli("snapshot", path, "--allow-deletions", "25")
    assert "user.deleted" in result.stdout and "published 25 events" in result.stdout
    h.wait()
    deleted = {u for u in d.users if h.redis.hexists(keys.user(u), "del")}
    assert deleted == set(list(d.users)[5:])


def test_a_bad_snapshot_is_refused_naming_each_line(harness: Harness, tmp_path: Path) -> None:
    h = harness
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z", "source": "test"}\n'
        '{"kind": "user", "user": {"id": "u1", "username": "a", "state": "active"}}\n'
        '{"kind": "user", "user": {"id": "u2", "username": "b", "state": "gone"}}\n'
        '{"kind": "group", "group": {"id": "g1", "name": "eng"}, "members": ["u1"], "size": 1}\n'
        '{"kind": "user", "user": {"id": "u1", "username": "a", "state": "active"}}\n'
        "{oops\n"
    )
    result = h.cli("snapshot", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"refused {path}: nothing was published",
        "  line 3: /user/state: Input should be 'active' or 'suspended'",
        "  line 4: /size: unknown field",
        "  line 5: /user/id: duplicate: user 'u1' is on an earlier line",
        "  line 6: /: malformed JSON: Invalid JSON: key must be a string at line 1 column 2",
    ]
    assert h.redis.xlen(keys.JOURNAL) == 0
    assert h.cli("snapshot", str(tmp_path / "missing"), check=False).returncode == 1
    assert h.cli("snapshot", str(path), "--allow-deletions", "-1", check=False).returncode == 2


# -- rebuild from a snapshot ------------------------------------------------------------------
def projection(r: redis.Redis) -> dict[str, Any]:
    """The projection's facts, without the versions that record which event wrote them."""
    state: dict[str, Any] = {}
    for pattern in keys.PROJECTION_PATTERNS:
        for key in r.scan_iter(match=pattern):
            if r.type(key) == b"hash":
                fields = r.hgetall(key)
                if key.startswith(keys.user("").encode()):
                    state[key] = {k: v for k, v in fields.items() if k in (b"rec", b"st")}
                    state[key][b"del"] = b"del" in fields
                elif key.startswith(keys.group("").encode()):
                    state[key] = (fields.get(b"name"), b"del" in fields)
                else:  # pair registers: the flag only
                    state[key] = {k: v[:1] for k, v in fields.items()}
            else:
                state[key] = r.smembers(key)
    return state


def test_rebuild_from_a_snapshot_after_the_journal_was_trimmed(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    h.activate("zs")
    d = company()
    h.send(*d.events(h))
    path = d.write(tmp_path / "snapshot.jsonl", taken_after(h))
    time.sleep(0.01)
    journal.trim(h.redis, max_age_seconds=0.005, approximate=False)  # the directory's events go
    assert h.redis.xlen(keys.JOURNAL) == 0
    h.send(  # after the snapshot: journaled, kept
        h.event("user.suspended", user_id="u1"),
        h.member("g1", "u2", added=False),
        h.event("group.renamed", group_id="g2", name="operations"),
        h.event("user.deleted", user_id="u3"),
        h.user("u9"),
        h.event("app.user_associated", app_id="zs", user_id="u9"),
    )
    before, writes = projection(h.redis), len(h.writes())
    app = (h.users(), {name: sorted(h.members(name)) for name in h.groups()})

    refused = h.cli("rebuild", "--yes", check=False)
    assert refused.returncode == 1 and "--from-snapshot FILE" in refused.stderr
    result = h.cli("rebuild", "--from-snapshot", path, "--yes")
    assert "rebuilt the projection from 25 snapshot events and 6 journal events" in result.stdout
    h.wait()
    assert projection(h.redis) == before
    assert (h.users(), {name: sorted(h.members(name)) for name in h.groups()}) == app
    assert len(h.writes()) == writes  # the full sync found nothing to do
    assert h.app_row()["state"] == "active"
    h.send(h.member("g1", "u2"))  # and it keeps syncing
    assert "u2@example.com" in h.members("eng")


def test_rebuild_from_a_snapshot_older_than_the_journal_is_refused(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    h.activate("zs")
    d = company()
    h.send(*d.events(h))
    time.sleep(0.01)
    journal.trim(h.redis, max_age_seconds=0.005, approximate=False)
    h.send(h.event("user.suspended", user_id="u1"))
    before = projection(h.redis)
    old = d.write(tmp_path / "old.jsonl", "2026-01-01T00:00:00Z")  # before the journal's start
    result = h.cli("rebuild", "--from-snapshot", old, "--yes", check=False)
    assert result.returncode == 1 and "later than the snapshot" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(old).read_text().replace('"state": "active"', '"state": "on"', 1))
    result = h.cli("rebuild", "--from-snapshot", str(bad), "--yes", check=False)
    assert result.returncode == 1 and "line 2: /user/state" in result.stderr
    assert projection(h.redis) == before
    assert h.app_row()["state"] == "active"


def test_a_rebuild_replays_only_the_journal_events_newer_than_the_snapshot(
    harness: Harness, tmp_path: Path
) -> None:
    """An event older than the snapshot that the snapshot contradicts (the removal that
    followed it never reached us) is not replayed over it."""
    h = harness
    h.activate("zs")
    d = company()
    h.send(*d.events(h))
    time.sleep(0.01)
    journal.trim(h.redis, max_age_seconds=0.005, approximate=False)
    h.send(h.member("g1", "u5"))  # kept in the journal, older than the snapshot
    path = d.write(tmp_path / "snapshot.jsonl", taken_after(h))  # u5 is not in eng there
    h.send(h.event("user.suspended", user_id="u6"))  # newer
    assert "u5@example.com" in h.members("eng")

    result = h.cli("rebuild", "--from-snapshot", path, "--yes")
    assert "from 25 snapshot events and 1 journal events" in result.stdout
    h.wait()
    assert not h.redis.sismember(keys.group_members("g1"), "u5")
    assert "u5@example.com" not in h.members("eng")
    assert h.users()["u6@example.com"]["active"] is False
