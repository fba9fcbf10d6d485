"""Drift detection and repair (issue 10): ``provisioner verify APP [--fix] [--json]`` against
the real SCIM application, with every kind of drift made behind the product's back (in the
application's storage), repaired through the normal path; the schedule run by the pool; the
reading kept below live changes."""

from __future__ import annotations

import json
import time

import pytest

from tests.support import drift
from tests.support.harness import wait_until
from tests.test_listing_e2e import RequestLog
from worker.store import audit, keys, learned
from worker.store.mirror import Mirror
from worker.sync.verify import last_result, lock_key
from worker.sync.verify_schedule import QUEUED_FIELD


def verify(h, *options: str) -> tuple[int, dict]:  # noqa: ANN001
    result = h.cli("verify", "zs", "--json", *options, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def found(report: dict) -> set[tuple[str, str]]:
    return {(item["kind"], item["object"]) for item in report["items"]}


def email(uid: str) -> str:
    return f"{uid}@example.com"


def provision(h) -> None:  # noqa: ANN001
    """u1-u3 in eng, u4 in ops, u5 in eng then removed (deactivated), u2 suspended, u7 in
    sales (not associated yet), u9 associated directly, u10 in support."""
    h.activate("zs")
    h.send(
        h.user("u1", department="Eng"), h.user("u2"), h.user("u3"),
        h.user("u4", email=email("u4")), h.user("u5"), h.user("u7"), h.user("u9"),
        h.user("u10"),
        h.group("g1", "eng"), h.group("g2", "ops"), h.group("g3", "sales"),
        h.group("g5", "support"),
        *(h.member("g1", u) for u in ("u1", "u2", "u3", "u5")), h.member("g2", "u4"),
        h.member("g3", "u7"), h.member("g5", "u10"),
        h.associate("zs", "g1"), h.associate("zs", "g2"), h.associate("zs", "g5"),
        h.event("app.user_associated", app_id="zs", user_id="u7"),
        h.event("app.user_associated", app_id="zs", user_id="u9"),
    )  # fmt: skip
    h.send(h.event("user.suspended", user_id="u2"), h.member("g1", "u5", added=False))


def test_a_clean_app_has_no_drift(harness):
    """What is not drift: a user of the app that is not ours, an attribute the app is known
    not to store, emails and userName stored in another case; reading costs a page each."""
    h = harness
    provision(h)
    drift.add_user(h.scim, "stranger@example.com")
    learned.learn_unsupported(h.redis, "zs", "externalId", "the app never stores it")
    drift.edit_user(h.scim, email("u3"), external_id="set-by-hand")
    drift.edit_user(h.scim, email("u4"), emails=[{"value": "U4@EXAMPLE.COM", "type": "work"}])
    drift.edit_user(h.scim, email("u7"), user_name="U7@Example.com")
    log = RequestLog()
    h.scim.inject(log)
    code, report = verify(h)
    assert (code, report["drift"], report["items"]) == (0, 0, []), report
    assert report["users_in_app"] == 9 and report["groups_in_app"] == 3
    assert report["calls"] == 2 and len(log.calls) == 2  # a page of users, one of groups
    assert log.writes() == []
    out = h.cli("verify", "zs").stdout
    assert "no drift" in out and "9 users and 3 groups read in 2 calls" in out
    listed = json.loads(h.cli("apps", "list", "--json").stdout)[0]["verify"]
    assert listed["every"] is None and listed["last"]["drift"] == 0


def test_every_drift_kind_is_found_and_fix_repairs_it(harness):
    h = harness
    provision(h)

    def refuse(environ):  # noqa: ANN001, ANN202
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if method == "POST" or (method == "DELETE" and "/Groups/" in path):
            return 400, {"Content-Type": "application/scim+json"}, b'{"detail": "no"}'
        return None

    # refused by the app, so parked: a user never created, a group never created, a group
    # deleted in the directory that the app keeps
    h.scim.inject(refuse)
    h.send(h.user("u6"), h.member("g1", "u6"), h.associate("zs", "g3"), h.group("g4", "temp"),
           h.member("g4", "u10"), h.associate("zs", "g4"))  # fmt: skip
    h.scim.inject(None)
    h.send(h.member("g4", "u1"))  # created now, with its members
    h.scim.inject(refuse)
    h.send(h.event("group.deleted", group_id="g4"))
    h.scim.inject(None)
    # by hand, in the application
    stranger = drift.add_user(h.scim, "stranger@example.com")
    drift.edit_user(h.scim, email("u1"), department="Ops")
    drift.edit_user(h.scim, email("u2"), active=True)  # suspended in the directory
    drift.edit_user(h.scim, email("u5"), active=True)  # no longer covered
    drift.delete_user(h.scim, email("u9"))
    assert drift.delete_user(h.scim, email("u3")) == ["eng"]  # and its membership
    drift.rename_group(h.scim, "ops", "operations")
    eng = drift.members(h.scim, "eng")
    u1 = drift.user_id(h.scim, email("u1"))
    drift.set_members(h.scim, "eng", [m for m in eng if m != u1] + [stranger])
    drift.delete_group(h.scim, "support")

    expected = {
        ("user_attributes", "user:u1"), ("user_active", "user:u2"), ("user_active", "user:u5"),
        ("deleted_by_hand", "user:u9"), ("deleted_by_hand", "user:u3"),
        ("user_missing", "user:u6"),
        ("group_renamed", "group:g2"), ("group_members_missing", "group:g1"),
        ("group_members_extra", "group:g1"), ("deleted_by_hand", "group:g5"),
        ("group_missing", "group:g3"), ("group_not_deleted", "group:g4"),
    }  # fmt: skip
    code, report = verify(h)
    assert code == 1 and found(report) == expected, report["items"]
    assert report["by_kind"]["user_active"] == 2 and report["marked"] == 0
    [attributes] = [i for i in report["items"] if i["kind"] == "user_attributes"]
    assert attributes["detail"] == "department: 'Eng' here, 'Ops' in the application"

    log = RequestLog()
    h.scim.inject(log)
    code, report = verify(h, "--fix")
    assert code == 1 and found(report) == expected and report["marked"] == 11
    h.wait()
    entries = [e for e in audit.read(h.redis, app="zs") if e["outcome"] == "drift"]
    assert {(e["detail"].split(":")[1].strip(), e["object"]) for e in entries} == expected
    assert all(e["detail"].startswith("drift: ") for e in entries)
    assert {e["name"] for e in entries if e["object"] == "user:u2"} == {"user_deprovision"}
    # the normal path: what the mirror held was read back before planning
    assert ("GET", f"/v2/Users/{u1}") in [(m, p) for _, m, p, _ in log.calls]

    code, report = verify(h)
    assert (code, report["items"]) == (0, []), report["items"]
    users = h.users()
    assert users[email("u2")]["active"] is False and users[email("u5")]["active"] is False
    assert users[email("u9")]["active"] is True and email("u6") in users
    groups = h.groups()
    assert "operations" not in groups and {"ops", "sales", "support"} <= set(groups)
    assert "temp" not in groups
    assert h.members("eng") == {email(u) for u in ("u1", "u2", "u3", "u6")}
    assert Mirror(h.redis, "zs").user("u9").remote_id == users[email("u9")]["id"]


@pytest.mark.single_calls  # in Bulk requests, the six users would be done before verify starts
def test_verify_reads_the_app_after_its_live_changes(harness):
    """At 3 requests/s, six new users (12 calls) are being provisioned when verify starts:
    its page is read once they are done, not in between."""
    h = harness
    h.activate("zs", "--rate", "3", "--burst", "1")
    log = RequestLog()
    h.scim.inject(log)
    users = [f"n{i}" for i in range(6)]
    h.send(*(h.user(u) for u in users),
           *(h.event("app.user_associated", app_id="zs", user_id=u) for u in users),
           wait=False)  # fmt: skip
    wait_until(lambda: log.writes(), what="the first create")  # provisioning has begun
    code, report = verify(h)
    h.wait()
    [(page_at, _)] = log.pages("/Users")
    creates = [t for t, m, p, _ in log.calls if (m, p) == ("POST", "/v2/Users")]
    assert len(creates) == 6 and page_at > max(creates)
    assert report["waited_for_live_changes"] > 1.0 and code == 0


def test_the_pool_runs_the_scheduled_verify(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1", department="Eng"), h.group("g1", "eng"), h.member("g1", "u1"),
           h.associate("zs", "g1"))  # fmt: skip
    out = h.cli("apps", "update", "zs", "--verify-every", "2s", "--verify-fix", "on").stdout
    assert "verify every 2s" in out and "scheduled verify repairs drift" in out
    drift.edit_user(h.scim, email("u1"), department="Ops")
    deadline = time.monotonic() + 30
    while (
        h.users()[email("u1")]["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"][
            "department"
        ]
        != "Eng"
    ):
        assert time.monotonic() < deadline, "the scheduled verify did not repair"
        time.sleep(0.2)
    [entry] = [e for e in audit.read(h.redis, app="zs") if e["outcome"] == "drift"]
    assert entry["object"] == "user:u1" and entry["name"] == "user_update_provision"
    listed = json.loads(h.cli("apps", "list", "--json").stdout)[0]["verify"]
    assert listed["every"] == 2.0 and listed["fix"] is True
    assert listed["last"]["trigger"] == "schedule"
    assert "verify every 2s (last " in h.cli("apps", "list").stdout
    h.cli("apps", "update", "zs", "--verify-every", "off")
    h.wait()
    # a run queued before the change may still start (and finish): none queued nor running
    wait_until(lambda: not h.redis.hexists(keys.app("zs"), QUEUED_FIELD)
               and not h.redis.exists(lock_key("zs")), what="the last scheduled run")  # fmt: skip
    started = last_result(h.redis, "zs")["started"]
    time.sleep(3)  # more than the old schedule's 2 s and the sweeper's 1 s between looks
    assert last_result(h.redis, "zs")["started"] == started  # no schedule, no run


def test_verify_refuses_an_unknown_app_and_a_second_run(harness):
    from worker.sync.verify import Lock

    h = harness
    assert h.cli("verify", "nope", check=False).returncode == 2
    h.activate("zs")
    lock = Lock(h.redis, "zs")
    assert lock.acquire()
    result = h.cli("verify", "zs", check=False)
    assert result.returncode == 2 and "already running" in result.stderr
    lock.release()
    assert h.cli("verify", "zs", check=False).returncode == 0
