"""ScimClient against a real scim2-server; faults come only from ``ScimServer.inject``."""

from __future__ import annotations

import email.utils
import json
import pickle
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.support.scimserver import ScimServer, ignore_filters, scim_server_fixture  # noqa: F401
from worker.scim import (
    ENTERPRISE_URN,
    GENERIC,
    ZSCALER,
    Conflict,
    Invalid,
    NotFound,
    RequestRecord,
    ScimClient,
    ScimError,
    Transient,
    Unauthorized,
    Unsupported,
    escape_filter_value,
    generic_from_config,
    make_http_client,
    parse_retry_after,
    profile_by_name,
)
from worker.scim.client import AppHttp

ALICE = {
    "userName": "alice@example.com",
    "active": True,
    "name.givenName": "Alice",
    "name.familyName": "Liddell",
    "displayName": "Alice Liddell",
    "emails": "alice@example.com",
    "externalId": "E-1",
    "department": "Wonderland",
}


@pytest.fixture
def records() -> list[RequestRecord]:
    return []


@pytest.fixture
def http(scim_server: ScimServer) -> Iterator[AppHttp]:
    with make_http_client(scim_server.base_url, scim_server.token, timeout=5) as client:
        yield client


@pytest.fixture
def client(http: AppHttp, records: list[RequestRecord]) -> ScimClient:
    return ScimClient(http, GENERIC, on_request=records.append)


@pytest.fixture
def put_client(http: AppHttp, records: list[RequestRecord]) -> ScimClient:
    """Zscaler-like: PUT for users, PATCH for groups."""
    return ScimClient(http, ZSCALER, on_request=records.append)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None):
    """A fault that answers every request with ``status`` and a JSON ``body``."""
    raw = b"" if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/scim+json", **(headers or {})}
    return lambda environ: (status, hdrs, raw)


def scim_error(status: int, detail: str, scim_type: str | None = None) -> dict[str, Any]:
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": str(status),
        "detail": detail,
    }
    return body | ({"scimType": scim_type} if scim_type else {})


def writes(records: list[RequestRecord]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in records if r.method != "GET"]


# -- discovery and profiles ---------------------------------------------------


def test_service_provider_config_and_verify(client: ScimClient) -> None:
    spc = client.service_provider_config()
    assert spc.patch is not None and spc.patch.supported
    profile = generic_from_config(spc)
    assert profile.user_patch and profile.group_patch and profile.filter_supported
    assert profile_by_name("generic", spc) == profile
    assert profile_by_name("zscaler") is ZSCALER
    client.verify()


def test_profiles_as_data() -> None:
    assert (ZSCALER.user_patch, ZSCALER.group_patch, ZSCALER.requests_per_second) == (
        False,
        True,
        5.0,
    )
    assert ZSCALER.member_remove_form == "filter" and ZSCALER.members_per_patch == 100
    assert ZSCALER.user_delete == "deactivate" and ZSCALER.enterprise_department
    with pytest.raises(ValueError):
        profile_by_name("okta")


# -- users --------------------------------------------------------------------


def test_create_find_and_conflict(client: ScimClient, scim_server: ScimServer) -> None:
    created = client.create_user(ALICE)
    assert created.attributes == ALICE
    found = client.find_user("alice@example.com")
    assert found == created
    assert client.get_user(created.id) == created
    raw = scim_server.users()[0]
    assert raw[ENTERPRISE_URN] == {"department": "Wonderland"}
    assert raw["emails"] == [{"value": "alice@example.com", "type": "work", "primary": True}]
    with pytest.raises(Conflict) as info:
        client.create_user({"userName": "alice@example.com", "active": True})
    assert info.value.status == 409 and info.value.scim_type == "uniqueness"
    assert client.find_user("bob@example.com") is None


def test_minimal_user_has_no_extension(client: ScimClient, scim_server: ScimServer) -> None:
    created = client.create_user({"userName": "min@example.com", "active": False})
    assert created.attributes == {"userName": "min@example.com", "active": False}
    assert ENTERPRISE_URN not in scim_server.users()[0]
    client.update_user(created.id, {"department": "New"}, {})
    raw = scim_server.users()[0]
    assert raw[ENTERPRISE_URN] == {"department": "New"} and ENTERPRISE_URN in raw["schemas"]


def test_update_via_patch(
    client: ScimClient, scim_server: ScimServer, records: list[RequestRecord]
) -> None:
    user = client.create_user(ALICE)
    records.clear()
    changes = {
        "name.givenName": "Alicia",
        "department": "Looking Glass",
        "emails": "alicia@example.com",
        "displayName": None,
    }
    client.update_user(user.id, changes, {**ALICE, **changes})
    assert writes(records) == [("PATCH", f"/Users/{user.id}")]
    got = client.get_user(user.id).attributes
    assert got["name.givenName"] == "Alicia" and got["name.familyName"] == "Liddell"
    assert got["department"] == "Looking Glass" and got["emails"] == "alicia@example.com"
    assert "displayName" not in got
    assert scim_server.users()[0][ENTERPRISE_URN] == {"department": "Looking Glass"}
    client.update_user(user.id, {"department": None}, {})
    assert "department" not in client.get_user(user.id).attributes
    records.clear()
    client.update_user(user.id, {}, ALICE)
    assert records == []  # no call that changes nothing


def test_update_via_put(
    put_client: ScimClient, scim_server: ScimServer, records: list[RequestRecord]
) -> None:
    user = put_client.create_user(ALICE)
    records.clear()
    full = {**ALICE, "department": "Hearts", "name.familyName": "L."}
    full.pop("externalId")
    put_client.update_user(
        user.id, {"department": "Hearts", "name.familyName": "L.", "externalId": None}, full
    )
    assert writes(records) == [("PUT", f"/Users/{user.id}")]
    assert put_client.get_user(user.id).attributes == full
    assert scim_server.users()[0][ENTERPRISE_URN] == {"department": "Hearts"}


@pytest.mark.parametrize("profile", [GENERIC, ZSCALER], ids=["patch", "put"])
def test_set_active(http: AppHttp, profile: Any, records: list[RequestRecord]) -> None:
    client = ScimClient(http, profile, on_request=records.append)
    user = client.create_user(ALICE)
    client.set_active(user.id, False, ALICE)
    assert client.get_user(user.id).attributes == {**ALICE, "active": False}
    client.set_active(user.id, True, {**ALICE, "active": False})
    assert client.get_user(user.id).attributes["active"] is True
    assert [m for m, _ in writes(records)] == ["POST"] + [
        "PATCH" if profile.user_patch else "PUT"
    ] * 2


def test_patch_answering_200_with_body(client: ScimClient, scim_server: ScimServer) -> None:
    user = client.create_user(ALICE)
    body = scim_server.users()[0]
    scim_server.inject(answer(200, body))
    client.set_active(user.id, False, ALICE)  # a 200 with a body is as good as a 204


def test_delete_user(client: ScimClient) -> None:
    user = client.create_user(ALICE)
    client.delete_user(user.id)
    with pytest.raises(NotFound):
        client.get_user(user.id)
    with pytest.raises(NotFound):
        client.delete_user(user.id)


def test_delete_user_conflict(client: ScimClient, scim_server: ScimServer) -> None:
    user = client.create_user(ALICE)
    scim_server.inject(answer(409, scim_error(409, "Admin user cannot be deleted")))
    with pytest.raises(Conflict, match="Admin user cannot be deleted"):
        client.delete_user(user.id)
    scim_server.inject(None)
    assert client.get_user(user.id).id == user.id


def test_list_users_pages(client: ScimClient, records: list[RequestRecord]) -> None:
    names = {f"user{i}@example.com" for i in range(5)}
    for name in names:
        client.create_user({"userName": name, "active": True})
    records.clear()
    assert {u.attributes["userName"] for u in client.list_users(page_size=2)} == names
    assert [r.method for r in records] == ["GET"] * 3


@pytest.mark.parametrize(
    "name", ['o"brien\\x', "zoë@exämple.com", 'back\\\\slash"', "paren) or (x"]
)
def test_filter_escaping(client: ScimClient, name: str) -> None:
    client.create_user({"userName": "o@example.com", "active": True})
    created = client.create_user({"userName": name, "active": True})
    assert client.find_user(name) == created
    assert client.find_user(name + "y") is None
    group = client.create_group(name, [created.id])
    assert client.find_group(name) == group


def test_escape_filter_value() -> None:
    assert escape_filter_value('o"brien\\x') == '"o\\"brien\\\\x"'


# -- groups -------------------------------------------------------------------


def make_users(client: ScimClient, n: int) -> list[str]:
    return [
        client.create_user({"userName": f"m{i}@example.com", "active": True}).id for i in range(n)
    ]


def test_group_lifecycle(
    client: ScimClient, scim_server: ScimServer, records: list[RequestRecord]
) -> None:
    a, b, c, d = make_users(client, 4)
    group = client.create_group("Engineering", [a, b])
    assert group.display_name == "Engineering" and group.member_ids == {a, b}
    assert client.find_group("Engineering") == group
    assert client.find_group("Sales") is None

    records.clear()
    client.rename_group(group.id, "Eng")
    client.patch_members(group.id, add=[c, d], remove=[a, b])
    assert writes(records) == [("PATCH", f"/Groups/{group.id}")] * 2
    assert client.get_group(group.id) == replace(group, display_name="Eng", member_ids={c, d})

    client.patch_members(group.id, add=[], remove=[c])
    assert client.get_group(group.id).member_ids == {d}
    records.clear()
    client.patch_members(group.id, add=[], remove=[])
    assert records == []

    client.replace_group(group.id, "Engineering", [a, b, c])
    assert client.get_group(group.id) == replace(group, member_ids={a, b, c})
    assert scim_server.groups()[0]["displayName"] == "Engineering"

    client.delete_group(group.id)
    with pytest.raises(NotFound):
        client.get_group(group.id)


def test_empty_group(client: ScimClient) -> None:
    group = client.create_group("Empty", [])
    assert group.member_ids == frozenset()


def test_remove_forms(http: AppHttp, scim_server: ScimServer) -> None:
    """Both remove forms are sent as specified; scim2-server only accepts the filter form."""
    value_client = ScimClient(http, replace(GENERIC, member_remove_form="value"))
    a, b, c = make_users(value_client, 3)
    group = value_client.create_group("G", [a, b])
    with pytest.raises(Invalid) as info:  # RFC 7644: a remove carries no value
        value_client.patch_members(group.id, add=[c], remove=[a, b])
    assert info.value.status == 400 and info.value.scim_type == "invalidValue"

    bodies: list[dict[str, Any]] = []

    def capture(environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes] | None:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        bodies.append(json.loads(environ["wsgi.input"].read(size)))
        return 204, {}, b""

    scim_server.inject(capture)
    value_client.patch_members(group.id, add=[c], remove=[a, b])
    ScimClient(http, GENERIC).patch_members(group.id, add=[], remove=[a, b])
    assert [body["Operations"] for body in bodies] == [
        [
            {"op": "add", "path": "members", "value": [{"value": c}]},
            {"op": "remove", "path": "members", "value": [{"value": a}, {"value": b}]},
        ],
        [
            {"op": "remove", "path": f'members[value eq "{a}"]'},
            {"op": "remove", "path": f'members[value eq "{b}"]'},
        ],
    ]
    assert all(
        body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:PatchOp"] for body in bodies
    )


def test_members_per_patch_enforced(http: AppHttp) -> None:
    client = ScimClient(http, replace(GENERIC, members_per_patch=2))
    with pytest.raises(ValueError):
        client.patch_members("g", add=["a", "b"], remove=["c"])


def test_groups_without_patch(http: AppHttp, records: list[RequestRecord]) -> None:
    client = ScimClient(http, replace(ZSCALER, group_patch=False), on_request=records.append)
    a, b = make_users(client, 2)
    group = client.create_group("Ops", [a])
    with pytest.raises(ValueError):
        client.patch_members(group.id, add=[b], remove=[])
    with pytest.raises(ValueError):
        client.rename_group(group.id, "Operations")
    records.clear()
    client.rename_group(group.id, "Operations", member_ids=[a, b])
    assert writes(records) == [("PUT", f"/Groups/{group.id}")]
    assert client.get_group(group.id) == replace(
        group, display_name="Operations", member_ids={a, b}
    )


# -- errors -------------------------------------------------------------------


def test_bad_token_is_unauthorized(scim_server: ScimServer) -> None:
    http = make_http_client(scim_server.base_url, "wrong-token-123")
    with http, pytest.raises(Unauthorized) as info:
        ScimClient(http, GENERIC).verify()
    assert info.value.status == 401
    assert "wrong-token-123" not in str(info.value) + repr(info.value)


def test_429_retry_after_seconds(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(429, scim_error(429, "slow down"), {"Retry-After": "3"}))
    with pytest.raises(Transient) as info:
        client.find_user("x@example.com")
    assert info.value.status == 429 and info.value.retry_after == 3


def test_503_retry_after_http_date(client: ScimClient, scim_server: ScimServer) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    scim_server.inject(answer(503, None, {"Retry-After": when}))
    with pytest.raises(Transient) as info:
        client.verify()
    assert info.value.status == 503
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31


def test_500_without_retry_after(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(lambda environ: (500, {"Content-Type": "text/html"}, b"<h1>oops</h1>"))
    with pytest.raises(Transient) as info:
        client.verify()
    assert info.value.status == 500 and info.value.retry_after is None
    assert "oops" in info.value.detail


def test_400_is_invalid(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(400, scim_error(400, "bad department", "invalidValue")))
    with pytest.raises(Invalid) as info:
        client.create_user(ALICE)
    assert (info.value.status, info.value.detail, info.value.scim_type) == (
        400,
        "bad department",
        "invalidValue",
    )


def test_other_4xx_is_invalid(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(412, scim_error(412, "precondition")))
    with pytest.raises(Invalid):
        client.verify()


def test_403_is_unauthorized(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(403, scim_error(403, "forbidden")))
    with pytest.raises(Unauthorized):
        client.verify()


def test_timeout_is_transient(scim_server: ScimServer) -> None:
    def slow(environ: dict[str, Any]) -> None:
        time.sleep(0.5)

    scim_server.inject(slow)
    with make_http_client(scim_server.base_url, scim_server.token, timeout=0.1) as http:
        records: list[RequestRecord] = []
        with pytest.raises(Transient) as info:
            ScimClient(http, GENERIC, on_request=records.append).verify()
    assert info.value.status is None and "timeout" in str(info.value)
    assert records[0].status is None


def test_connection_error_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on: take a free one and close it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = make_http_client(f"http://127.0.0.1:{port}/v2", "tok-abc-123", timeout=2)
    with http, pytest.raises(Transient) as info:
        ScimClient(http, GENERIC).verify()
    assert "tok-abc-123" not in str(info.value)


def test_redirect_not_followed(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(302, None, {"Location": "http://example.invalid/v2/Users"}))
    with pytest.raises(Invalid, match="redirect not followed"):
        client.verify()
    assert len(scim_server.requests) == 1


def test_oversized_and_non_scim_responses(client: ScimClient, scim_server: ScimServer) -> None:
    big = json.dumps({"Resources": [], "pad": "x" * (1 << 20)}).encode()
    scim_server.inject(lambda environ: (200, {"Content-Type": "application/json"}, big))
    with pytest.raises(Invalid, match="over"):
        client.verify()
    scim_server.inject(lambda environ: (200, {"Content-Type": "text/html"}, b"<html>login</html>"))
    with pytest.raises(Invalid, match="not SCIM"):
        client.verify()
    scim_server.inject(answer(200, {"hello": "world"}))
    with pytest.raises(Invalid, match="not SCIM"):
        client.get_user("abc")


def test_remote_bad_email_does_not_hide_user(client: ScimClient, scim_server: ScimServer) -> None:
    user = client.create_user({**ALICE, "emails": None})
    raw = scim_server.users()[0] | {"emails": [{"value": "not-an-email", "type": "work"}]}
    scim_server.inject(answer(200, raw))
    got = client.get_user(user.id)
    assert got.id == user.id and "emails" not in got.attributes
    listing = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 1,
        "startIndex": 1,
        "itemsPerPage": 1,
        "Resources": [raw],
    }
    scim_server.inject(answer(200, listing))
    assert [u.id for u in client.list_users()] == [user.id]


def test_bad_local_data_is_invalid(client: ScimClient, records: list[RequestRecord]) -> None:
    with pytest.raises(Invalid):
        client.create_user({"userName": "x@example.com", "active": True, "emails": "not-an-email"})
    with pytest.raises(ValueError):
        client.create_user({"userName": "x@example.com", "active": True, "title": "Dr"})
    assert records == []


def test_token_never_in_errors(scim_server: ScimServer) -> None:
    token = scim_server.token
    errors: list[ScimError] = []
    with make_http_client(scim_server.base_url, token, timeout=5) as http:
        client = ScimClient(http, GENERIC)
        for status in (400, 401, 404, 409, 429, 500):  # a server echoing the token back
            scim_server.inject(answer(status, scim_error(status, f"bad Bearer {token}")))
            with pytest.raises(ScimError) as info:
                client.verify()
            errors.append(info.value)
    for error in errors:
        text = f"{error} {error!r} {error.args} {error.detail}"
        assert token not in text and "***" in text


def test_errors_pickle() -> None:
    error = pickle.loads(pickle.dumps(Transient(429, "slow", None, 2.5)))
    assert isinstance(error, Transient) and error.retry_after == 2.5 and error.status == 429
    assert pickle.loads(pickle.dumps(Conflict(409, "dup", "uniqueness"))).scim_type == "uniqueness"


def test_parse_retry_after() -> None:
    now = float(int(time.time()))
    assert parse_retry_after("3") == 3 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert parse_retry_after(past) == 0
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) == 10


def test_on_request_records(
    client: ScimClient, scim_server: ScimServer, records: list[RequestRecord]
) -> None:
    user = client.create_user(ALICE)
    client.get_user(user.id)
    with pytest.raises(NotFound):
        client.get_user("missing")
    assert [(r.method, r.path, r.status) for r in records] == [
        ("POST", "/Users", 201),
        ("GET", f"/Users/{user.id}", 200),
        ("GET", "/Users/missing", 404),
    ]
    assert all(r.elapsed >= 0 for r in records)
    assert scim_server.token not in repr(records) and "Wonderland" not in repr(records)
    assert scim_server.token not in repr(client)
    assert [m for m, _ in scim_server.requests] == ["POST", "GET", "GET"]
    scim_server.clear_requests()
    assert scim_server.requests == []


def test_a_lookup_never_takes_a_resource_of_another_name(
    client: ScimClient, scim_server: ScimServer
) -> None:
    """Taken for the one asked for, a resource of another name would be overwritten; the same
    name but for case is the same account (userName and displayName are not case-exact)."""
    bob = client.create_user({"userName": "Bob@Example.com", "active": True})
    team = client.create_group("Team", [bob.id])
    scim_server.inject(ignore_filters)
    assert client.find_user("alice@example.com") is None
    assert client.find_user("bob@example.com") == bob
    assert client.find_group("Engineering") is None
    assert client.find_group("team") == team


def test_scim_connections_send_without_waiting_for_acks(http: AppHttp) -> None:
    """TCP_NODELAY: a request's headers and body are written separately; on a kept-alive
    connection Nagle's algorithm would hold the body until the app's delayed ACK (40 ms)."""
    response = http.open("GET", "/ServiceProviderConfig", None, None)
    try:
        sock = response.extensions["network_stream"].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        response.close()


# -- answers of writes (#10) ------------------------------------------------------------------
def test_writes_return_what_the_application_answered(put_client: ScimClient) -> None:
    created = put_client.create_user(ALICE)
    answer = put_client.update_user(created.id, {"displayName": "A"}, {**ALICE, "displayName": "A"})
    assert answer is not None and answer.attributes["displayName"] == "A"
    group = put_client.create_group("eng", [created.id])
    assert group.member_ids == {created.id}
    replaced = put_client.replace_group(group.id, "eng", [])
    assert replaced is not None and replaced.member_ids == frozenset()  # none: left out
    # scim2-server answers a PATCH with 204: nothing to read, the caller keeps what it sent
    assert put_client.patch_members(group.id, [created.id], []) is None


def test_a_write_answered_without_a_resource_returns_none(
    client: ScimClient, scim_server: ScimServer
) -> None:
    created = client.create_user(ALICE)
    for status, body in ((204, None), (200, {"detail": "ok"}), (200, {"id": 7, "userName": "b"})):
        scim_server.inject(answer(status, body))
        assert client.update_user(created.id, {"displayName": "x"}, {}) is None
    scim_server.inject(None)


def test_integer_ids_name_the_resource_all_the_same(
    client: ScimClient, scim_server: ScimServer
) -> None:
    scim_server.inject(answer(201, {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                    "id": 12, "displayName": "eng", "members": [{"value": 3}]}))  # fmt: skip
    group = client.create_group("eng", ["3"])
    assert (group.id, group.member_ids) == ("12", frozenset({"3"}))


@pytest.mark.parametrize(
    ("status", "scim_type"), [(501, None), (405, None), (400, "invalidPath"), (400, "noTarget")]
)
def test_a_form_the_application_does_not_implement_raises_unsupported(
    client: ScimClient, scim_server: ScimServer, status: int, scim_type: str | None
) -> None:
    created = client.create_user(ALICE)
    scim_server.inject(answer(status, scim_error(status, "not here", scim_type)))
    with pytest.raises(Unsupported) as caught:
        client.update_user(created.id, {"displayName": "x"}, {})
    assert caught.value.status == status and not isinstance(caught.value, Transient)
    scim_server.inject(None)


def test_an_empty_string_is_no_value(client: ScimClient, scim_server: ScimServer) -> None:
    scim_server.inject(answer(201, {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                    "id": "1", "userName": "a", "displayName": "",
                                    "emails": [{"value": "", "primary": True}]}))  # fmt: skip
    assert client.create_user({"userName": "a"}).attributes == {"userName": "a", "active": True}
    scim_server.inject(None)
