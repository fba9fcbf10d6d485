"""Attribute mappings (issue 4): exclusion, inclusion and restore of optional attributes,
observed on the wire and in the application's users."""

from __future__ import annotations

import io
import json

from worker.store import audit

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
U1 = "u1@example.com"


def capture_bodies(h) -> list[tuple[str, str, dict]]:  # noqa: ANN001
    """Record the JSON body of every write the application receives."""
    seen: list[tuple[str, str, dict]] = []

    def record(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] in ("POST", "PUT", "PATCH"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(raw)
            seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], json.loads(raw or b"{}")))
        return None

    h.scim.inject(record)
    return seen


def record(**attrs: str) -> dict:
    return {"id": "u1", "username": U1, "state": "active", **attrs}


def mappings(h, *args: str) -> dict[str, dict]:  # noqa: ANN001
    rows = json.loads(h.cli("apps", "mappings", "zs", *args, "--json").stdout)
    return {row["attribute"]: row for row in rows}


def test_table_and_required_attributes(harness):
    h = harness
    h.activate("zs")
    rows = mappings(h)
    assert list(rows) == ["userName", "name.givenName", "name.familyName", "displayName",
                          "active", "emails", "externalId", "department"]  # fmt: skip
    assert rows["userName"]["required"] and rows["active"]["required"]
    assert rows["emails"]["property"] == "email" and rows["externalId"]["property"] == "employee_id"
    assert all(row["included"] for row in rows.values())
    for attribute in ("userName", "active"):
        result = h.cli("apps", "mappings", "zs", "--exclude", attribute, check=False)
        assert result.returncode == 2 and "required and cannot be excluded" in result.stderr
    result = h.cli("apps", "mappings", "zs", "--exclude", "nickName", check=False)
    assert result.returncode == 2 and "unknown attribute" in result.stderr
    assert audit.read(h.redis, name="idm_integration_update", failed=True)


def test_exclude_include_restore_on_the_wire_with_put(harness):
    """Zscaler profile (PUT): an excluded attribute keeps the value the app holds."""
    h = harness
    h.activate("zs")
    h.send(h.event("user.created", user=record(firstname="Ada", department="Eng")),
           h.event("app.user_associated", app_id="zs", user_id="u1"))  # fmt: skip
    remote_id = h.users()[U1]["id"]
    bodies = capture_bodies(h)

    rows = mappings(h, "--exclude", "department", "--exclude", "name.givenName")
    assert not rows["department"]["included"] and not rows["name.givenName"]["included"]
    h.wait()
    assert bodies == []  # an exclusion sends nothing

    h.send(h.event("user.updated", user=record(firstname="Adele", department="Research")))
    assert bodies == []  # only excluded attributes changed: nothing to send
    user = h.users()[U1]
    assert user[ENTERPRISE]["department"] == "Eng" and user["name"]["givenName"] == "Ada"

    mappings(h, "--include", "department")
    h.wait()
    [(method, path, body)] = bodies
    assert (method, path) == ("PUT", f"/v2/Users/{remote_id}")
    assert body[ENTERPRISE]["department"] == "Research"
    assert body["name"]["givenName"] == "Ada"  # still excluded: not cleared, not changed
    bodies.clear()

    rows = mappings(h, "--restore-defaults")
    assert all(row["included"] for row in rows.values())
    h.wait()
    [(_, _, body)] = bodies
    assert body["name"]["givenName"] == "Adele"
    user = h.users()[U1]
    assert user["name"]["givenName"] == "Adele" and user[ENTERPRISE]["department"] == "Research"


def test_only_the_included_attribute_is_patched(harness):
    """Generic profile (PATCH): re-including an attribute sends that attribute only."""
    h = harness
    h.activate("zs", "--profile", "generic")
    h.send(h.event("user.created", user=record(displayname="Ada L", employee_id="E1")),
           h.event("app.user_associated", app_id="zs", user_id="u1"))  # fmt: skip
    remote_id = h.users()[U1]["id"]
    bodies = capture_bodies(h)
    mappings(h, "--exclude", "displayName", "--exclude", "externalId")
    h.send(h.event("user.updated", user=record(displayname="Ada Lovelace", employee_id="E2")))
    assert bodies == []
    mappings(h, "--include", "displayName")
    h.wait()
    [(method, path, body)] = bodies
    assert (method, path) == ("PATCH", f"/v2/Users/{remote_id}")
    assert [(op["op"], op["path"]) for op in body["Operations"]] == [("replace", "displayName")]
    user = h.users()[U1]
    assert user["displayName"] == "Ada Lovelace" and user["externalId"] == "E1"
    details = [e["detail"] for e in audit.read(h.redis, name="idm_integration_update")]
    assert "included displayName; 1 users re-synced" in details[-1] or (  # with Bulk, last:
        "included displayName; 1 users re-synced" in details[-2] and "Bulk" in details[-1]
    )
