"""Trust but verify, end to end: the pool reads every answer of the application and learns what
it does not do (real workers, scim2-server made imperfect the way real applications are)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from worker.store import audit

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
U1, U2 = "u1@example.com", "u2@example.com"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def rewrite(environ: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> None:
    """Let the application see a changed request body (what an app that ignores part of it
    does)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.loads(environ["wsgi.input"].read(length) or b"{}")
    change(body)
    raw = json.dumps(body).encode()
    environ["wsgi.input"] = io.BytesIO(raw)
    environ["CONTENT_LENGTH"] = str(len(raw))


def not_implemented(status: int = 501, scim_type: str | None = None) -> tuple[int, dict, bytes]:
    error = {"schemas": [SCIM_ERROR], "status": str(status), "detail": "not implemented here"}
    if scim_type:
        error["scimType"] = scim_type
    return status, {"Content-Type": "application/scim+json"}, json.dumps(error).encode()


def body_of(environ: dict[str, Any]) -> str:
    """Read the body and put it back for the application."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(raw)
    return raw.decode()


def value_list_as_filters(body: dict[str, Any]) -> None:
    """A ``remove members`` with a value list, as the filter operations scim2-server takes."""
    operations = []
    for op in body.get("Operations", []):
        if op.get("op") == "remove" and op.get("path") == "members" and op.get("value"):
            operations += [
                {"op": "remove", "path": f'members[value eq "{member["value"]}"]'}
                for member in op["value"]
            ]
        else:
            operations.append(op)
    body["Operations"] = operations


def learned_of(h, app_id: str = "zs") -> dict[str, Any]:  # noqa: ANN001
    return json.loads(h.cli("apps", "show", app_id, "--json").stdout)["learned"]


def entries(h, outcome: str) -> list[dict[str, Any]]:  # noqa: ANN001
    """The audit entries about objects (not the app: with Bulk, what its read-backs found)."""
    return [e for e in audit.read(h.redis, app="zs")
            if e["outcome"] == outcome and not e["object"].startswith("app:")]  # fmt: skip


def sales_group(h, *users: str) -> None:  # noqa: ANN001
    h.send(*(h.user(u) for u in users), h.group("g1", "sales"),
           *(h.member("g1", u) for u in users), h.associate("zs", "g1"))  # fmt: skip


def test_members_ignored_on_create_are_completed_by_the_next_call(harness):
    h = harness

    def drop_members(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"].endswith("/Groups"):
            rewrite(environ, lambda body: body.pop("members", None))

    h.scim.inject(drop_members)
    h.activate("zs")
    sales_group(h, "u1", "u2")
    assert h.members("sales") == {U1, U2}
    group_writes = [w for w in h.writes() if "/Groups" in w[1]]
    assert [w[0] for w in group_writes] == ["POST", "PATCH"]
    assert any("ignored 2 members" in e["detail"] for e in entries(h, "learned"))


def test_an_attribute_the_app_never_stores_is_learned_and_not_sent_again(harness):
    h = harness

    def drop_enterprise(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] in ("POST", "PUT") and "/Users" in environ["PATH_INFO"]:

            def strip(body: dict[str, Any]) -> None:
                body.pop(ENTERPRISE, None)
                body["schemas"] = [s for s in body.get("schemas", []) if s != ENTERPRISE]

            rewrite(environ, strip)

    h.scim.inject(drop_enterprise)
    h.activate("zs")  # zscaler: users are PUT whole
    h.send(
        h.user("u1", department="Sales"), h.event("app.user_associated", app_id="zs", user_id="u1")
    )
    assert U1 in h.users()
    assert learned_of(h)["unsupported_attributes"] == ["department"]
    assert [e for e in entries(h, "learned") if "department" in e["detail"]]
    status = h.cli("status").stdout
    assert "does not store department" in status
    writes = len(h.writes())
    h.send(h.user("u1", department="Marketing"))  # only the unsupported attribute changed
    assert len(h.writes()) == writes  # nothing sent for it
    h.send(h.user("u1", department="Marketing", firstname="Ann"))
    assert len(h.writes()) == writes + 1 and h.users()[U1]["name"]["givenName"] == "Ann"
    assert h.parked() == {}

    h.scim.inject(None)  # the application is fixed: `apps update` forgets and tries again
    out = h.cli("apps", "update", "zs").stdout
    assert "forgot what was learned" in out
    h.wait()
    forgotten = learned_of(h)
    assert (forgotten["forms"], forgotten["unsupported_attributes"]) == ({}, [])
    assert h.users()[U1][ENTERPRISE]["department"] == "Marketing"


def test_filter_path_removal_answered_501_falls_back_to_a_value_list_for_good(harness):
    h = harness

    def no_filter_paths(environ):  # noqa: ANN001, ANN202
        """An app that removes members only from a value list (scim2-server, strict, takes
        only the filter form: the list is translated for it)."""
        if environ["REQUEST_METHOD"] != "PATCH" or "/Groups/" not in environ["PATH_INFO"]:
            return None
        if "members[value eq" in body_of(environ):
            return not_implemented()
        rewrite(environ, value_list_as_filters)
        return None

    h.scim.inject(no_filter_paths)
    h.activate("zs")
    sales_group(h, "u1", "u2")
    h.send(h.member("g1", "u2", added=False))
    assert h.members("sales") == {U1}
    assert learned_of(h)["forms"] == {"member_remove": "value"}
    assert h.parked() == {}
    h.scim.clear_requests()
    h.send(h.member("g1", "u1", added=False))
    assert h.members("sales") == set()
    assert [w[0] for w in h.writes() if "/Groups" in w[1]] == ["PATCH"]  # no 501 first
    show = h.cli("apps", "show", "zs").stdout
    assert "member_remove: PATCH remove members with a value list" in show


def test_patch_on_users_answered_501_falls_back_to_put_and_the_key_settles(harness):
    h = harness

    def no_user_patch(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "PATCH" and "/Users/" in environ["PATH_INFO"]:
            return not_implemented()
        return None

    h.scim.inject(no_user_patch)
    h.activate("zs", "--profile", "generic")  # scim2-server announces PATCH
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    h.send(h.event("user.suspended", user_id="u1"))  # wait() returns: nothing loops
    assert h.users()[U1]["active"] is False
    assert learned_of(h)["forms"] == {"user_update": "put"}
    rows = json.loads(h.cli("apps", "list", "--json").stdout)
    assert rows[0]["learned"]["forms"] == {"user_update": "put"}
    assert [e["status"] for e in entries(h, "learned")] == [501]
    h.send(h.event("user.activated", user_id="u1"))
    assert h.users()[U1]["active"] is True
    assert sum(1 for w in h.writes() if w[0] == "PATCH") == 1  # the one answered 501


def test_rename_by_patch_answered_400_invalid_path_falls_back_to_put(harness):
    h = harness

    def no_patch_rename(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "PATCH" and '"displayName"' in body_of(environ):
            return not_implemented(400, "invalidPath")
        return None

    h.scim.inject(no_patch_rename)
    h.activate("zs")
    sales_group(h, "u1", "u2")
    h.send(h.event("group.renamed", group_id="g1", name="revenue"))
    assert set(h.groups()) == {"revenue"} and h.members("revenue") == {U1, U2}
    assert learned_of(h)["forms"] == {"group_rename": "put"}


def test_an_operation_with_no_form_left_parks_the_object_with_a_clear_reason(harness):
    h = harness

    def no_member_removal(environ):  # noqa: ANN001, ANN202
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if "/Groups/" in path and method in ("PATCH", "PUT") and '"remove"' in body_of(environ):
            return not_implemented()
        if "/Groups/" in path and method == "PUT":
            return not_implemented()
        return None

    h.scim.inject(no_member_removal)
    h.activate("zs")
    sales_group(h, "u1", "u2")
    h.send(h.member("g1", "u2", added=False))  # wait() returns: parked, not retried
    reason = h.parked()["zs group g1"]
    assert "does not implement" in reason and "tried:" in reason and "PUT" in reason
    assert learned_of(h)["forms"] == {"member_remove": "put"}
    failures = [w for w in h.writes() if "/Groups/" in w[1]]
    assert len(failures) == 3  # filter, value list, PUT: each once
    assert h.cli("status").stdout.count("does not implement") == 1


def test_a_refused_write_is_not_read_back(harness):
    h = harness
    refused: list[str] = []

    def throttle_first_put(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "PUT" and not refused:
            refused.append(environ["PATH_INFO"])
            return 429, {"Content-Type": "application/scim+json"}, b'{"detail": "slow down"}'
        return None

    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    h.trust_bulk_writes()
    h.scim.inject(throttle_first_put)
    h.scim.clear_requests()
    h.send(h.user("u1", firstname="Ann"))
    sent = list(h.scim.requests)
    assert refused and h.users()[U1]["name"]["givenName"] == "Ann"
    assert [r[0] for r in sent] == ["PUT", "PUT"]  # the 429 changed nothing: no re-read
