"""The same scenarios against SCIM servers written by others (issue #10): scim2-server (the
reference of the other e2e tests), django-scim2 and django-scim2-server, both with their stock
adapters (``tests/support/django_scim/``, whose wrapper modules list each server's quirks).

Events go through the product's real path (published, applied, reconciled by real workers
with the ``generic`` profile, which reads each server's ``ServiceProviderConfig``); the
assertions are on what the server holds, read over SCIM. Where a server cannot do something,
the test expects the product to have coped: learned another request form, or learned that an
attribute is not stored (``learned`` of ``apps list --json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.django_scim.django_scim2 import DjangoScim2
from tests.support.django_scim.django_scim2_server import DjangoScim2Server
from tests.support.django_scim.process import DjangoScimServer
from tests.support.harness import Harness, WorkerPool, shuffled
from tests.support.scimserver import ScimServer
from tests.test_rules_e2e import deleted_user_setup, two_groups

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
U1, U2, U3 = "u1@example.com", "u2@example.com", "u3@example.com"

DJANGO: dict[str, type[DjangoScimServer]] = {
    "django-scim2": DjangoScim2,
    "django-scim2-server": DjangoScim2Server,
}
SERVERS = ("scim2-server", *DJANGO)
# DELETE /Users/{id}: django-scim2-server only deactivates (the user stays, active false)
DELETES_USERS = {"scim2-server": True, "django-scim2": True, "django-scim2-server": False}

# the request forms (``worker.scim.compat``) each server makes the product learn, beyond the
# ones the generic profile starts with
FORMS: dict[str, dict[str, str]] = {
    "scim2-server": {},
    "django-scim2": {"group_rename": "put", "member_remove": "value"},
    "django-scim2-server": {},
}


def servers() -> pytest.MarkDecorator:
    """Run the test on every server of the matrix."""
    params = [pytest.param(name, id=name) for name in SERVERS]
    return pytest.mark.parametrize("server_kind", params, indirect=True)


@pytest.fixture(scope="module")
def server_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def django_server(server_kind: str) -> Iterator[DjangoScimServer | None]:
    """A Django server runs for all the tests of its kind (reset before each)."""
    if server_kind not in DJANGO:
        yield None
        return
    with DJANGO[server_kind]() as server:
        yield server


@pytest.fixture
def scim_server(django_server: DjangoScimServer | None) -> Iterator[Any]:
    if django_server is None:
        with ScimServer() as server:
            yield server
        return
    django_server.reset()
    yield django_server
    # shown when the test fails: what the server refused (everything with INTEROP_TRACE=1)
    trace = os.environ.get("INTEROP_TRACE") == "1"
    for e in django_server.exchanges():
        if e["status"] >= 400 or (trace and e["method"] != "GET"):
            print(f"{e['method']} {e['path']}?{e['query']} {json.dumps(e['request'])}")
            print(f"  -> {e['status']} {json.dumps(e['response'])}")


@pytest.fixture
def harness(r: redis.Redis, worker_pool: WorkerPool, scim_server: Any, tmp_path) -> Harness:  # noqa: ANN001
    return Harness(r, scim_server, tmp_path, activate_options=("--profile", "generic"))


def assert_learned_forms(h: Harness, server_kind: str, *operations: str) -> None:
    """The product learned the forms ``FORMS`` expects of this server for ``operations``."""
    learned = h.learned()
    assert learned is not None, "apps list --json says nothing of what was learned"
    expected = FORMS[server_kind]
    assert {op: learned["forms"].get(op) for op in operations} == {
        op: expected.get(op) for op in operations
    }


def base_path(h: Harness) -> str:
    """The path part of the app's base URL (``/v2``, ``/scim/v2``), as the request log has it."""
    return "/" + h.scim.base_url.split("/", 3)[3]


def active(h: Harness) -> dict[str, bool]:
    """userName -> active, of every user the server holds."""
    return {name: user["active"] for name, user in h.users().items()}


# -- the scenarios ------------------------------------------------------------------------------
@servers()
def test_activation_reads_the_service_provider_config_and_refuses_a_wrong_token(harness):
    h = harness
    h.token_file.write_text("not-the-token")
    refused = h.cli("apps", "activate", "zs", "--base-url", h.scim.base_url, "--token-file",
                    str(h.token_file), "--profile", "generic", check=False)  # fmt: skip
    assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout
    h.token_file.write_text(h.scim.token)
    h.scim.clear_requests()
    h.activate("zs")
    assert ("GET", f"{base_path(h)}/ServiceProviderConfig") in h.scim.requests
    assert h.app_row()["profile"] == "generic"


@servers()
def test_users_are_provisioned_into_their_group(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1", firstname="Ada"), h.user("u2"), h.user("u3"), h.group("g1", "eng"),
           h.member("g1", "u1"), h.member("g1", "u2"), h.associate("zs", "g1"),
           h.group("g2", "ops"), h.member("g2", "u3"))  # fmt: skip
    assert active(h) == {U1: True, U2: True}  # u3's group is not associated
    assert h.users()[U1]["name"]["givenName"] == "Ada"
    assert set(h.groups()) == {"eng"}
    assert h.members("eng") == {U1, U2}
    assert h.parked() == {}
    # one POST a user: what the app fills in itself ("" values, a computed displayName) is
    # recorded as it holds it, not fought with an update
    assert [w[0] for w in h.writes() if "/Users" in w[1]] == ["POST", "POST"]
    # in step: the same facts again send nothing
    h.scim.clear_requests()
    h.send(h.event("user.updated", user={"id": "u1", "username": U1, "state": "active",
                                         "firstname": "Ada"}))  # fmt: skip
    assert h.writes() == []


@servers()
def test_takeover_of_an_existing_group_of_the_same_name(harness):
    h = harness
    user = h.seed("Users", {"schemas": [USER_SCHEMA], "userName": U1, "active": True})
    group = h.seed("Groups", {"schemas": [GROUP_SCHEMA], "displayName": "eng"})
    h.activate("zs")
    h.send(h.user("u1"), h.group("g1", "eng"), h.member("g1", "u1"), h.associate("zs", "g1"))
    users, groups = h.scim.users(), h.scim.groups()
    assert [(u["id"], u["userName"]) for u in users] == [(user["id"], U1)]
    assert [(g["id"], g["displayName"]) for g in groups] == [(group["id"], "eng")]
    assert h.members("eng") == {U1}
    assert h.parked() == {}


@servers()
def test_group_rename_keeps_the_group_and_its_members(harness, server_kind):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.group("g1", "eng"), h.member("g1", "u1"), h.associate("zs", "g1"))
    group_id = h.groups()["eng"]["id"]
    h.send(h.event("group.renamed", group_id="g1", name="engineering"))
    groups = h.groups()
    assert set(groups) == {"engineering"}
    assert groups["engineering"]["id"] == group_id
    assert h.members("engineering") == {U1}
    assert h.parked() == {}
    assert_learned_forms(h, server_kind, "group_rename")


@servers()
def test_disassociation_deactivates_the_members_no_other_group_covers(harness):
    h = harness
    two_groups(h)  # g1 (u1, u2) and g2 (u2)
    before = h.groups()["g1"]
    h.scim.clear_requests()
    h.send(h.associate("zs", "g1", associated=False))
    assert not any("/Groups" in path for _, path in h.writes())  # the group is left as is
    assert h.groups()["g1"]["id"] == before["id"]
    assert h.members("g1") == {U1, U2}
    assert active(h) == {U1: False, U2: True}  # u2 is still covered by g2
    assert h.parked() == {}


@servers()
def test_user_deletion_deactivates_and_leaves_the_group(harness, server_kind):
    h = harness
    remote_id = deleted_user_setup(h)  # u1 and u2 in g1, then u1 deleted in the directory
    user = h.users()[U1]
    assert user["id"] == remote_id and user["active"] is False
    assert h.members("g1") == {U2}
    assert h.parked() == {}
    assert_learned_forms(h, server_kind, "member_remove")


@servers()
def test_user_deletion_with_the_delete_policy(harness, server_kind):
    h = harness
    remote_id = deleted_user_setup(h, "--user-delete-policy", "delete")
    assert ("DELETE", f"{base_path(h)}/Users/{remote_id}") in h.scim.requests
    if DELETES_USERS[server_kind]:
        assert set(h.users()) == {U2}
    else:  # the server keeps the account, deactivated
        assert active(h) == {U1: False, U2: True}
    assert h.members("g1") == {U2}
    assert h.parked() == {}


@servers()
def test_suspension_and_reactivation(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.user("u2"), h.event("app.user_associated", app_id="zs", user_id="u1"),
           h.event("app.user_associated", app_id="zs", user_id="u2"))  # fmt: skip
    user_id = h.users()[U1]["id"]
    h.send(h.event("user.suspended", user_id="u1"))
    assert active(h) == {U1: False, U2: True}
    h.send(h.event("user.activated", user_id="u1"))
    assert active(h) == {U1: True, U2: True}
    assert h.users()[U1]["id"] == user_id
    assert h.parked() == {}


@servers()
def test_department_change(harness, server_kind):
    """A department change with a first-name change in the same update. A server that does not
    store the enterprise extension gets the first name all the same, and the product learns
    that ``department`` is unsupported instead of parking the user or retrying."""
    h = harness
    h.activate("zs")
    record = {"id": "u1", "username": U1, "state": "active", "firstname": "Ada",
              "department": "Eng"}  # fmt: skip
    h.send(h.event("user.created", user=record),
           h.event("app.user_associated", app_id="zs", user_id="u1"))  # fmt: skip
    user_id = h.users()[U1]["id"]
    h.send(h.event("user.updated", user={**record, "firstname": "Adah", "department": "Research"}))
    user = h.users()[U1]
    assert user["id"] == user_id and user["active"] is True
    assert user["name"]["givenName"] == "Adah"
    learned = h.learned("zs")
    assert learned is not None, "apps list --json says nothing of what was learned"
    if server_kind == "scim2-server":
        assert user[ENTERPRISE]["department"] == "Research"
        assert learned["unsupported_attributes"] == []
    else:
        assert ENTERPRISE not in user
        assert "department" in learned["unsupported_attributes"]
    assert h.parked() == {}


@servers()
def test_small_churn(harness, server_kind):
    """Joins, leaves, a move between groups, a suspension, a rename, a departure and an
    attribute change, published in one shuffled batch."""
    h = harness
    h.activate("zs")
    h.send(*(h.user(f"u{i}") for i in range(1, 7)), h.group("g1", "alpha"), h.group("g2", "beta"),
           *(h.member("g1", f"u{i}") for i in (1, 2, 3)), h.member("g2", "u4"),
           h.member("g2", "u5"), h.associate("zs", "g1"), h.associate("zs", "g2"))  # fmt: skip
    assert h.members("alpha") == {U1, U2, U3}
    assert h.members("beta") == {"u4@example.com", "u5@example.com"}
    u5 = {"id": "u5", "username": "u5@example.com", "state": "active", "firstname": "Eve"}
    churn = [
        h.member("g1", "u1", added=False),  # u1 is covered by no group any more
        h.member("g2", "u2"),  # u2 moves from alpha to beta
        h.member("g1", "u2", added=False),
        h.event("user.suspended", user_id="u3"),  # stays a member, inactive
        h.event("group.renamed", group_id="g2", name="beta-2"),
        h.event("user.deleted", user_id="u4"),  # deactivated, leaves beta
        h.member("g1", "u6"),  # u6 is provisioned with alpha
        h.event("user.updated", user=u5),
    ]
    h.send(*shuffled(churn, seed=10))
    assert active(h) == {
        U1: False, U2: True, U3: False, "u4@example.com": False, "u5@example.com": True,
        "u6@example.com": True,
    }  # fmt: skip
    assert set(h.groups()) == {"alpha", "beta-2"}
    assert h.members("alpha") == {U3, "u6@example.com"}
    assert h.members("beta-2") == {U2, "u5@example.com"}
    assert h.users()["u5@example.com"]["name"]["givenName"] == "Eve"
    assert h.parked() == {}
    assert_learned_forms(h, server_kind, "group_rename", "member_add", "member_remove")
