"""One integration test per group-management rule (README): events published as a producer does, real Celery
workers, a real SCIM application (scim2-server); the application's state is read over SCIM."""

from __future__ import annotations

import json

import httpx

from tests.support.scimserver import ignore_filters

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
U1, U2 = "u1@example.com", "u2@example.com"


def scim_post(h, endpoint: str, body: dict) -> dict:  # noqa: ANN001
    """Create a resource in the application directly, as its administrator would."""
    headers = {"Authorization": f"Bearer {h.scim.token}"}
    resp = httpx.post(f"{h.scim.base_url}/{endpoint}", json=body, headers=headers, timeout=10)
    resp.raise_for_status()
    return resp.json()


def two_groups(h) -> None:  # noqa: ANN001
    """g1 (u1, u2) and g2 (u2), both associated with zs: u2 is covered twice."""
    h.activate("zs")
    h.send(h.user("u1"), h.user("u2"), h.group("g1"), h.group("g2"), h.member("g1", "u1"),
           h.member("g1", "u2"), h.member("g2", "u2"), h.associate("zs", "g1"),
           h.associate("zs", "g2"))  # fmt: skip
    assert h.members("g1") == {U1, U2} and h.members("g2") == {U2}


def test_implicit_deny(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.user("u2"), h.group("g1"), h.member("g1", "u1"),
           h.associate("zs", "g1"), h.group("g2"), h.member("g2", "u2"))  # fmt: skip
    assert set(h.users()) == {U1}  # u2's group is not associated, u2 is not directly
    assert set(h.groups()) == {"g1"}


def test_empty_group_not_created(harness):
    h = harness
    h.activate("zs")
    h.send(h.group("g1"), h.associate("zs", "g1"))
    assert h.groups() == {}
    assert ("POST", "/v2/Groups") not in h.scim.requests


def test_takeover_of_existing_group_and_user_without_duplicates(harness):
    h = harness
    user = scim_post(h, "Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                  "userName": U1, "active": True})  # fmt: skip
    group = scim_post(h, "Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                    "displayName": "eng"})  # fmt: skip
    h.activate("zs")
    h.send(h.user("u1", department="Eng"), h.group("g1", "eng"), h.member("g1", "u1"),
           h.associate("zs", "g1"))  # fmt: skip
    users, groups = h.scim.users(), h.scim.groups()
    assert [(u["id"], u["userName"]) for u in users] == [(user["id"], U1)]
    assert [(g["id"], g["displayName"]) for g in groups] == [(group["id"], "eng")]
    assert users[0][ENTERPRISE]["department"] == "Eng"
    assert h.members("eng") == {U1}


def test_a_lookup_answered_with_other_accounts_takes_none_of_them(harness):
    """An application that ignores the lookup's filter answers with its accounts: none of
    them is taken over (and overwritten) for a user or group of another name."""
    h = harness
    other = scim_post(h, "Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                   "userName": "someone@example.com", "active": True})  # fmt: skip
    scim_post(h, "Groups", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                            "displayName": "theirs", "members": [{"value": other["id"]}]})  # fmt: skip
    h.activate("zs")
    h.scim.inject(ignore_filters)
    h.send(h.user("u1", department="Eng"), h.group("g1", "eng"), h.member("g1", "u1"),
           h.associate("zs", "g1"))  # fmt: skip
    users = {u["userName"]: u for u in h.scim.users()}
    assert set(users) == {"someone@example.com", U1}
    someone = users["someone@example.com"]
    assert someone["id"] == other["id"] and ENTERPRISE not in someone  # not overwritten
    assert set(h.groups()) == {"theirs", "eng"}
    assert h.members("theirs") == {"someone@example.com"} and h.members("eng") == {U1}


def test_rename_keeps_the_group_id(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.group("g1", "eng"), h.member("g1", "u1"), h.associate("zs", "g1"))
    group_id = h.groups()["eng"]["id"]
    h.send(h.event("group.renamed", group_id="g1", name="engineering"))
    groups = h.groups()
    assert set(groups) == {"engineering"}
    assert groups["engineering"]["id"] == group_id
    assert h.members("engineering") == {U1}


def test_disassociation_leaves_the_group_as_is_and_deactivates_only_uncovered_members(harness):
    h = harness
    two_groups(h)
    before = h.groups()["g1"]
    h.scim.clear_requests()
    h.send(h.associate("zs", "g1", associated=False))
    assert not any("/Groups" in path for _, path in h.writes())
    assert h.groups()["g1"]["id"] == before["id"]
    assert h.members("g1") == {U1, U2}
    users = h.users()
    assert users[U1]["active"] is False
    assert users[U2]["active"] is True  # still covered by g2


def test_deletion_deletes_the_group_and_deactivates_uncovered_members(harness):
    h = harness
    two_groups(h)
    h.send(h.event("group.deleted", group_id="g1"))
    assert set(h.groups()) == {"g2"}
    users = h.users()
    assert users[U1]["active"] is False
    assert users[U2]["active"] is True  # still covered by g2


def test_removal_from_two_covering_groups_at_once_deactivates(harness):
    h = harness
    two_groups(h)
    h.send(h.member("g1", "u2", added=False), h.member("g2", "u2", added=False))
    assert h.users()[U2]["active"] is False
    assert h.users()[U1]["active"] is True
    assert h.members("g1") == {U1} and h.members("g2") == set()


def test_disabled_group_management_sends_no_group_call_and_still_manages_users(harness):
    h = harness
    h.activate("zs", "--no-group-management")
    h.send(h.user("u1"), h.user("u2"), h.group("g1"), h.member("g1", "u1"),
           h.member("g1", "u2"), h.associate("zs", "g1"))  # fmt: skip
    h.send(h.member("g1", "u2", added=False), h.event("group.renamed", group_id="g1", name="x"))
    assert not any("/Groups" in path for _, path in h.scim.requests)
    users = h.users()
    assert users[U1]["active"] is True
    assert users[U2]["active"] is False  # no longer covered
    assert h.groups() == {}


def test_suspension_and_reactivation(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.group("g1"), h.member("g1", "u1"), h.associate("zs", "g1"))
    h.send(h.event("user.suspended", user_id="u1"))
    assert h.users()[U1]["active"] is False
    assert h.members("g1") == {U1}
    h.send(h.event("user.activated", user_id="u1"))
    assert h.users()[U1]["active"] is True
    assert h.members("g1") == {U1}


def test_attribute_update_including_department(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1", firstname="Ada", department="Eng"), h.group("g1"),
           h.member("g1", "u1"), h.associate("zs", "g1"))  # fmt: skip
    user_id = h.users()[U1]["id"]
    h.scim.clear_requests()
    record = {"id": "u1", "username": U1, "state": "active", "firstname": "Ada",
              "department": "Research"}  # fmt: skip
    h.send(h.event("user.updated", user=record))
    assert [path for _, path in h.writes()] == [f"/v2/Users/{user_id}"]
    assert all(method in ("PUT", "PATCH") for method, _ in h.writes())
    user = h.users()[U1]
    assert user["id"] == user_id
    assert user[ENTERPRISE]["department"] == "Research"
    assert user["name"]["givenName"] == "Ada"


def test_direct_association(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    assert h.users()[U1]["active"] is True
    h.send(h.event("app.user_disassociated", app_id="zs", user_id="u1"))
    assert h.users()[U1]["active"] is False


def deleted_user_setup(h, *options: str) -> str:  # noqa: ANN001
    """u1 and u2 provisioned through g1; then u1 is deleted in the directory. Returns u1's id."""
    h.activate("zs", *options)
    h.send(h.user("u1"), h.user("u2"), h.group("g1"), h.member("g1", "u1"),
           h.member("g1", "u2"), h.associate("zs", "g1"))  # fmt: skip
    remote_id = h.users()[U1]["id"]
    h.send(h.event("user.deleted", user_id="u1"))
    return remote_id


def test_user_deletion_deactivates_and_removes_from_groups(harness):
    h = harness
    remote_id = deleted_user_setup(h)
    user = h.users()[U1]
    assert user["id"] == remote_id and user["active"] is False
    assert h.members("g1") == {U2}


def test_user_deletion_with_delete_policy_deletes(harness):
    h = harness
    deleted_user_setup(h, "--user-delete-policy", "delete")
    assert set(h.users()) == {U2}
    assert h.members("g1") == {U2}


def test_user_deletion_falls_back_to_deactivation_on_409(harness):
    h = harness

    def refuse_user_delete(environ):  # noqa: ANN001, ANN202
        if environ["REQUEST_METHOD"] == "DELETE" and "/Users/" in environ["PATH_INFO"]:
            body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                    "status": "409", "detail": "user is linked to an admin"}  # fmt: skip
            return 409, {"Content-Type": "application/scim+json"}, json.dumps(body).encode()
        return None

    h.scim.inject(refuse_user_delete)
    remote_id = deleted_user_setup(h, "--user-delete-policy", "delete")
    assert ("DELETE", f"/v2/Users/{remote_id}") in h.scim.requests
    user = h.users()[U1]
    assert user["id"] == remote_id and user["active"] is False
    assert h.members("g1") == {U2}


def test_membership_before_user_record_is_synced_once_the_user_exists(harness):
    """A user's groups are re-checked once the user gets its remote id."""
    h = harness
    h.activate("zs")
    h.send(h.group("g1"), h.member("g1", "u1"), h.associate("zs", "g1"))
    assert h.users() == {} and h.groups() == {}
    h.send(h.user("u1"))
    assert h.users()[U1]["active"] is True
    assert h.members("g1") == {U1}
