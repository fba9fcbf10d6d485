"""Provisioning on demand (issue 4): ``explain`` (no side effects), the per-app dry run (plans
and audits, sends no write), ``sync`` (one object now, with its trace)."""

from __future__ import annotations

import json

from worker.store import audit, keys
from worker.store.mirror import Mirror

U1, U2, U3 = "u1@example.com", "u2@example.com", "u3@example.com"
VOLATILE = (b"prov:workers", b"prov:wq:sweep", b"prov:journal:max_age_ms")  # the sweeper's own


def redis_state(client) -> dict[bytes, bytes]:  # noqa: ANN001
    """Every persistent key of the product (keys with an expiry, such as the rate limiter's,
    change by themselves)."""
    return {
        k: client.dump(k)
        for k in client.scan_iter("prov:*")
        if k not in VOLATILE and client.pttl(k) == -1
    }


def assert_same(before: dict[bytes, bytes], after: dict[bytes, bytes]) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"keys written: {changed}"


def explain(h, *args: str) -> dict:  # noqa: ANN001
    return json.loads(h.cli("explain", "zs", *args, "--json").stdout)


def test_explain_has_no_side_effects(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1", department="Eng"), h.group("g1"), h.member("g1", "u1"),
           h.associate("zs", "g1"))  # fmt: skip
    h.cli("apps", "deactivate", "zs")
    record = {"id": "u1", "username": U1, "state": "active", "department": "Research"}
    h.send(h.event("user.updated", user=record), h.user("u2"), h.member("g1", "u2"))
    before = redis_state(h.redis)
    h.scim.clear_requests()

    new = explain(h, "user", "u2")
    assert new["coverage"]["covered"] and new["coverage"]["through_groups"] == ["g1"]
    assert new["intent"] == "Provision" and new["mirror"] is None
    assert new["calls"][0].startswith('GET /Users?filter=userName eq "u2@example.com"  -> none')
    assert new["calls"][1].startswith("POST /Users") and new["calls"][1].endswith("[not sent]")
    assert new["writes"] == 1

    changed = explain(h, "user", "u1")
    remote_id = h.users()[U1]["id"]
    assert changed["mirror"]["remote_id"] == remote_id
    assert changed["changes"] == {"department": "Research"}
    assert changed["calls"] == [
        f"PUT /Users/{remote_id}  changes {{department='Research'}}  [not sent]"
    ]

    group = explain(h, "group", "g1")
    assert group["coverage"]["members"] == 2 and group["coverage"]["members_in_app"] == 1
    assert group["calls"] == []  # u2 is not in the app yet: nothing to add

    text = h.cli("explain", "zs", "user", "u1").stdout
    assert "intent: Provision" in text and "nothing was written" in text
    assert h.writes() == []
    assert {method for method, _ in h.scim.requests} <= {"GET"}
    h.scim.clear_requests()
    h.cli("explain", "zs", "user", "u2", "--offline")
    assert h.scim.requests == []
    assert_same(before, redis_state(h.redis))


def test_explain_reads_back_an_object_whose_last_write_is_in_doubt(harness):
    """A write cut short leaves the object in doubt: explain plans as a worker would, from
    the application's copy, read back (offline: assumed gone, so created again)."""
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    remote_id = h.users()[U1]["id"]
    h.redis.sadd(keys.mirror_doubt("zs", "user"), "u1")
    h.scim.clear_requests()
    online = explain(h, "user", "u1")
    assert online["calls"] == [f"GET /Users/{remote_id}  -> {remote_id}  [sent (read)]"]
    assert h.scim.requests == [("GET", f"/v2/Users/{remote_id}")]
    offline = json.loads(h.cli("explain", "zs", "user", "u1", "--offline", "--json").stdout)
    assert offline["calls"][0].startswith(f"GET /Users/{remote_id}  offline")
    assert offline["calls"][-1].startswith("POST /Users")
    assert h.redis.sismember(keys.mirror_doubt("zs", "user"), "u1")  # explain wrote nothing


def test_dry_run_plans_and_audits_without_writing(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    out = h.cli("apps", "update", "zs", "--dry-run", "on").stdout
    assert "dry run on;" in out and out.endswith("; 0 reconciles\n")
    assert "dry run: calls are planned and audited, not sent" in h.cli("status").stdout
    mirror = dict(h.redis.hgetall("prov:mirror:zs:users"))
    h.scim.clear_requests()

    record = {"id": "u1", "username": U1, "state": "active", "department": "Ops"}
    h.send(h.user("u2"), h.event("app.user_associated", app_id="zs", user_id="u2"),
           h.event("user.updated", user=record),
           h.event("app.user_disassociated", app_id="zs", user_id="u1"))  # fmt: skip
    assert h.writes() == []
    assert dict(h.redis.hgetall("prov:mirror:zs:users")) == mirror
    planned = audit.read(h.redis, app="zs", name="user_create_provision")
    assert [(e["object"], e["outcome"]) for e in planned] == [
        ("user:u1", "success"), ("user:u2", "dry_run")]  # fmt: skip
    assert planned[-1]["detail"].startswith("dry run: POST /Users")
    assert planned[-1]["causes"]
    trace = h.cli("sync", "zs", "user", "u1").stdout
    assert "dry run: PUT /Users/" in trace and "active=False" in trace
    assert h.writes() == []

    out = h.cli("apps", "update", "zs", "--dry-run", "off").stdout
    assert "dry run off" in out
    h.wait()
    users = h.users()
    assert users[U2]["active"] is True and users[U1]["active"] is False


def test_sync_runs_one_object_now(harness):
    h = harness
    h.activate("zs")

    def refuse_creates(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"].endswith("/Users"):
            return 400, {"Content-Type": "application/scim+json"}, b'{"detail": "no"}'
        return None

    h.scim.inject(refuse_creates)
    h.send(h.user("u3"), h.event("app.user_associated", app_id="zs", user_id="u3"))
    assert "zs user u3" in json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["parked"]
    failed = h.cli("sync", "zs", "user", "u3", check=False)
    assert failed.returncode == 1 and "zs user u3: parked" in failed.stdout
    h.scim.inject(None)

    out = h.cli("sync", "zs", "user", "u3").stdout
    # the refused create changed nothing: no re-read, the earlier lookup still stands
    assert out.startswith("zs user u3: done, 1 calls")
    assert "user u3: Provision (in scope)" in out and "  created " in out
    assert "audit: user_create_provision success 201" in out
    assert h.users()[U3]["active"] is True
    assert Mirror(h.redis, "zs").user("u3") is not None
    assert json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["parked"] == {}

    h.cli("apps", "deactivate", "zs")
    assert "skipped, 0 calls" in h.cli("sync", "zs", "user", "u3").stdout


def test_overlay_mirror_reads_through_and_keeps_writes_in_memory(r):
    from worker.contract.model import MirrorGroup, MirrorUser
    from worker.sync.dryrun import OverlayMirror

    stored = Mirror(r, "zs")
    stored.save_user("u1", MirrorUser("r1", {"userName": "a"}))
    stored.save_group("g1", MirrorGroup("rg", "eng", {"u1": "r1"}))
    stored.remember_absent("user", "u9")
    before = redis_state(r)

    overlay = OverlayMirror(r, "zs")
    assert overlay.user("u1").remote_id == "r1" and overlay.looked_up("user", "u9")
    overlay.save_user("u2", MirrorUser("r2", {"userName": "b"}))
    overlay.forget_user("u1")
    overlay.save_user("u9", MirrorUser("r9", {"userName": "c"}))
    overlay.forget_groups()
    assert overlay.user("u1") is None and overlay.user("u2").remote_id == "r2"
    assert overlay.remote_user_ids(["u1", "u2"]) == {"u1": None, "u2": "r2"}
    assert overlay.directory_ids_by_remote_id() == {"r2": "u2", "r9": "u9"}
    assert not overlay.looked_up("user", "u9") and overlay.group("g1") is None
    assert list(map(str, overlay.known_keys())) == ["zs user u2", "zs user u9"]
    assert_same(before, redis_state(r))  # Redis is as it was
    assert stored.user("u1").remote_id == "r1" and stored.group("g1") is not None
