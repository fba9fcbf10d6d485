"""The journal over the CLI, with workers: ``replay --since/--until``, ``--dry-run``,
idempotency, and ``rebuild`` ending in the same application state."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import redis

from tests.support.harness import Harness
from worker.contract.events import parse_events
from worker.store import journal, keys


def events(prefix: str, n: int) -> list[Any]:
    documents = [
        {
            "id": f"{prefix}-{i}",
            "type": "group.member_added",
            "occurred_at": "2026-01-01T00:00:00Z",
            "data": {"group_id": "g1", "user_id": f"u{i}"},
        }
        for i in range(n)
    ]
    return parse_events(json.dumps(documents))


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instant() -> datetime:
    """Now, with a few ms of margin on each side (journal ids are ms timestamps)."""
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    return moment


# -- replay of a range, over the CLI -----------------------------------------------------------
def directory(h: Harness) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A small directory, then changes: a suspension, a removal, a rename, a deletion, a
    direct association (sent after the directory is provisioned, so that they make calls)."""
    base = [h.group("g1", "eng"), h.group("g2", "ops"), h.associate("zs", "g1")]
    base += [h.associate("zs", "g2")]
    for i in range(8):
        base += [h.user(f"u{i}", department="rd"), h.member("g1" if i < 5 else "g2", f"u{i}")]
    changes = [
        h.event("user.suspended", user_id="u1"),
        h.member("g1", "u2", added=False),
        h.event("group.renamed", group_id="g2", name="operations"),
        h.event("user.deleted", user_id="u3"),
        h.user("u9"),
        h.event("app.user_associated", app_id="zs", user_id="u9"),
    ]
    return base, changes


def snapshot(h: Harness) -> tuple[Any, Any]:
    return h.users(), {name: sorted(h.members(name)) for name in h.groups()}


def test_replay_since_until_over_the_cli_is_idempotent(harness: Harness) -> None:
    h = harness
    h.activate("zs")
    base, changes = directory(h)
    documents = base + changes
    h.send(*base)
    t1 = instant()
    h.send(*changes)
    t2 = instant()
    h.send(h.user("u20"))  # after the range
    state, writes = snapshot(h), len(h.writes())
    published = int(h.redis.hget(keys.COUNTERS, "published"))

    result = h.cli("replay", "--since", rfc3339(t1), "--until", rfc3339(t2))
    assert f"republished {len(changes)} journal events" in result.stdout
    assert "replay " in result.stderr  # progress lines in a pipe
    h.wait()
    result = h.cli("replay", "--since", "-1h")  # all of it (a relative time as its own word)
    assert f"republished {len(documents) + 1} journal events" in result.stdout
    h.wait()
    assert snapshot(h) == state and len(h.writes()) == writes  # no SCIM write: LWW registers
    counters = {k.decode(): int(v) for k, v in h.redis.hgetall(keys.COUNTERS).items()}
    assert counters["published"] == published == h.redis.xlen(keys.JOURNAL)
    assert counters["replayed"] == len(changes) + len(documents) + 1


def test_replay_dry_run_publishes_nothing(harness: Harness) -> None:
    h = harness
    h.send(*[h.user(f"u{i}") for i in range(5)])
    before = h.redis.hgetall(keys.COUNTERS)
    result = h.cli("replay", "--since", "5m", "--dry-run")
    assert "5 valid journal events" in result.stdout and "nothing published" in result.stdout
    assert h.redis.zcard(keys.PENDING_BATCHES) == 0
    assert h.redis.hgetall(keys.COUNTERS) == before


def test_replay_refuses_bad_arguments(harness: Harness, tmp_path) -> None:  # noqa: ANN001
    h = harness
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(h.user("u1")) + "\n")
    for args, message in [
        (("replay", str(path), "--since=-1h"), "not both"),
        (("replay", "--until=-1h"), "--until goes with --since"),
        (("replay",), "give a FILE"),
        (("replay", "--since", "yesterday"), "relative time"),
    ]:
        result = h.cli(*args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert h.redis.xlen(keys.JOURNAL) == 0
    assert "published 1 events" in h.cli("replay", str(path)).stdout  # FILE still works


def test_replay_names_an_invalid_journal_entry(harness: Harness) -> None:
    h = harness
    h.send(h.user("u1"))
    h.redis.xadd(keys.JOURNAL, {"e": '{"id": "x", "type": "user.exploded"}'})
    result = h.cli("replay", "--since=-1h", "--dry-run", check=False)
    assert result.returncode == 1 and "entry " in result.stderr and "/type" in result.stderr


# -- rebuild -----------------------------------------------------------------------------------
def projection(r: redis.Redis) -> dict[bytes, Any]:
    state: dict[bytes, Any] = {}
    for pattern in keys.PROJECTION_PATTERNS:
        for key in r.scan_iter(match=pattern):
            kind = r.type(key)
            state[key] = r.hgetall(key) if kind == b"hash" else r.smembers(key)
    return state


def test_rebuild_ends_in_the_same_state_without_a_scim_write(harness: Harness) -> None:
    h = harness
    h.activate("zs")
    base, changes = directory(h)
    h.send(*base)
    h.send(*changes)
    state, writes, before = snapshot(h), len(h.writes()), projection(h.redis)
    users, groups = state
    assert [users[f"u{i}@example.com"]["active"] for i in range(4)] == [True, False, False, False]
    assert groups["operations"] == ["u5@example.com", "u6@example.com", "u7@example.com"]

    result = h.cli("rebuild", "--yes")
    assert f"rebuilt the projection from {len(base + changes)} journal events" in result.stdout
    assert "zs (" in result.stdout
    h.wait()
    assert projection(h.redis) == before
    assert snapshot(h) == state and len(h.writes()) == writes
    assert json.loads(h.cli("apps", "list", "--json").stdout)[0]["state"] == "active"
    h.send(h.member("g1", "u2"))  # and it keeps syncing
    assert "u2@example.com" in h.members("eng")


def test_rebuild_asks_for_confirmation(harness: Harness) -> None:
    result = harness.cli("rebuild", check=False)
    assert result.returncode == 2 and "--yes" in result.stderr


def test_rebuild_is_refused_when_the_journal_was_trimmed(harness: Harness) -> None:
    h = harness
    h.activate("zs")
    h.send(*directory(h)[0])
    before = projection(h.redis)
    time.sleep(0.01)
    journal.trim(h.redis, max_age_seconds=0.005, approximate=False)
    result = h.cli("rebuild", "--yes", check=False)
    assert result.returncode == 1 and "no longer holds" in result.stderr
    assert projection(h.redis) == before
    assert json.loads(h.cli("apps", "list", "--json").stdout)[0]["state"] == "active"
