"""The audit log (issue 4): success and failure of every event name of the article, each with
time, app, object, outcome, HTTP status, detail and the ids of the directory events that
caused it; ``provisioner audit`` filters."""

from __future__ import annotations

import json
import socket

from worker.store import audit

PROVISION_NAMES = (
    "user_create_provision",
    "user_update_provision",
    "user_deprovision",
    "user_delete_provision",
    "user_lookup_provision",
    "group_create_provision",
    "group_update_provision",
    "group_delete_provision",
)
INTEGRATION_NAMES = (
    "idm_integration_activate",
    "idm_integration_update",
    "idm_integration_reauth",
    "idm_integration_delete",
)


def refuse(method: str, fragment: str, query: str | None = None):  # noqa: ANN201
    """A fault answering 400 to ``method`` on paths containing ``fragment``."""

    def fault(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] != method or fragment not in environ["PATH_INFO"]:
            return None
        if query is not None and query not in environ.get("QUERY_STRING", ""):
            return None
        body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "400",
                "detail": f"refused by the test ({method} {fragment})"}  # fmt: skip
        return 400, {"Content-Type": "application/scim+json"}, json.dumps(body).encode()

    return fault


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_event_name_succeeds_and_fails_with_its_causes(harness):
    h = harness
    sent: set[str] = set()

    def send(*events: dict) -> None:
        sent.update(e["id"] for e in events)
        h.send(*events)

    bad = h.tmp / "bad.token"
    bad.write_text("wrong")
    h.cli("apps", "activate", "zs", "--base-url", h.scim.base_url, "--token-file", str(bad),
          check=False)  # fmt: skip
    h.activate("zs")
    h.cli("apps", "update", "zs", "--user-delete-policy", "delete")
    h.cli("apps", "update", "zs", "--base-url", f"http://127.0.0.1:{free_port()}/v2", check=False)
    h.cli("apps", "reauth", "zs", "--token-file", str(h.token_file), check=False)

    direct = [h.event("app.user_associated", app_id="zs", user_id=u) for u in ("u3", "u4", "u5", "u6")]  # fmt: skip
    send(*(h.user(f"u{i}") for i in range(1, 7)), h.group("g1", "eng"), h.group("g2", "ops"),
         h.group("g3", "sales"), h.member("g1", "u1"), h.member("g1", "u2"),
         h.member("g2", "u1"), h.member("g3", "u1"), h.associate("zs", "g1"),
         h.associate("zs", "g2"), h.associate("zs", "g3"), *direct)  # fmt: skip
    record = {"id": "u3", "username": "u3@example.com", "state": "active"}
    send(h.event("group.renamed", group_id="g1", name="engineering"),
         h.event("user.updated", user={**record, "department": "Eng"}),
         h.member("g1", "u2", added=False), h.event("user.deleted", user_id="u6"),
         h.event("group.deleted", group_id="g2"))  # fmt: skip

    failures = [
        (refuse("GET", "/Users", query="filter"), [h.user("u10"), h.event(
            "app.user_associated", app_id="zs", user_id="u10")]),
        (refuse("POST", "/Users"), [h.user("u11"), h.event(
            "app.user_associated", app_id="zs", user_id="u11")]),
        (refuse("PUT", "/Users/"), [h.event("user.updated", user={**record, "department": "X"}),
                                    h.event("app.user_disassociated", app_id="zs", user_id="u5")]),
        (refuse("DELETE", "/Users/"), [h.event("user.deleted", user_id="u4")]),
        (refuse("POST", "/Groups"), [h.group("g4", "support"), h.member("g4", "u1"),
                                     h.associate("zs", "g4")]),
        (refuse("PATCH", "/Groups/"), [h.event("group.renamed", group_id="g1", name="eng3")]),
        (refuse("DELETE", "/Groups/"), [h.event("group.deleted", group_id="g3")]),
    ]  # fmt: skip
    for fault, events in failures:
        h.scim.inject(fault)
        send(*events)
    h.scim.inject(None)

    h.cli("apps", "deactivate", "zs")
    h.cli("apps", "reauth", "zs", "--token-file", str(h.token_file))
    h.cli("apps", "deactivate", "zs", check=False)

    log = audit.read(h.redis, app="zs")
    for name in PROVISION_NAMES:
        for outcome in ("success", "failure"):
            found = [e for e in log if e["name"] == name and e["outcome"] == outcome]
            assert found, f"no {outcome} of {name}"
            for entry in found:
                assert entry["causes"], f"{name} {outcome} without causes: {entry}"
                assert set(entry["causes"]) <= sent
                assert entry["time"] > 0 and entry["object"].split(":")[0] in ("user", "group")
                assert entry["status"] == (400 if outcome == "failure" else entry["status"])
                assert entry["status"] is not None
    for name in INTEGRATION_NAMES:
        outcomes = {e["outcome"] for e in log if e["name"] == name}
        # and what the pool learned of the app (with Bulk: what its writes read back showed)
        assert {"success", "failure"} <= outcomes <= {"success", "failure", "learned"}, outcomes
        assert all(e["detail"] for e in log if e["name"] == name)

    # the deprovision of u5 answers its disassociation
    [deprovision] = [
        e for e in log if e["name"] == "user_deprovision" and e["outcome"] == "failure"
    ]
    assert deprovision["object"] == "user:u5"
    assert failures[2][1][1]["id"] in deprovision["causes"]
    assert h.scim.token not in json.dumps(log)


def test_audit_command_filters(harness):
    h = harness
    h.activate("zs")
    association = h.event("app.user_associated", app_id="zs", user_id="u1")
    h.send(h.user("u1"), association)  # the record alone marks nothing: u1 is not covered yet
    out = h.cli("audit", "--app", "zs", "--name", "user_create_provision", "--json",
                "--since=-1h").stdout  # fmt: skip
    [entry] = [json.loads(line) for line in out.splitlines()]
    assert entry["object"] == "user:u1" and entry["status"] == 201
    assert entry["causes"] == [association["id"]]
    assert h.cli("audit", "--since", "2000-01-01T00:00:00Z", "--object", "u1").stdout.count("\n") == 2  # fmt: skip
    assert h.cli("audit", "--since", "2h", "--failed").stdout == ""
    assert h.cli("audit", "--since", "90").returncode == 0
    result = h.cli("audit", "--since", "yesterday", check=False)
    assert result.returncode == 2 and "RFC 3339" in result.stderr
