"""Fewest calls: nothing that changes nothing, membership changes batched per
group, no lookup once the remote id is known. Counted on the real SCIM application's log."""

from __future__ import annotations

import math

MEMBERS_PER_PATCH = 100  # the zscaler profile


def directory(h) -> list[dict]:  # noqa: ANN001
    """A small directory touching every kind of event."""
    return [
        h.user("u1", firstname="Ada", department="Eng"), h.user("u2"), h.user("u3"),
        h.group("g1", "eng"), h.group("g2", "ops"), h.group("g3", "gone"),
        h.member("g1", "u1"), h.member("g1", "u2"), h.member("g2", "u2"), h.member("g3", "u3"),
        h.associate("zs", "g1"), h.associate("zs", "g2"), h.associate("zs", "g3"),
        h.event("app.user_associated", app_id="zs", user_id="u3"),
        h.event("group.renamed", group_id="g1", name="engineering"),
        h.event("user.suspended", user_id="u2"),
        h.member("g1", "u2", added=False),
        h.event("group.deleted", group_id="g3"),
    ]  # fmt: skip


def test_replaying_the_same_events_sends_no_write_call(harness):
    h = harness
    h.activate("zs")
    events = directory(h)
    h.send(*events)
    assert h.members("engineering") == {"u1@example.com"}
    h.scim.clear_requests()

    h.send(*events)  # the same ids: duplicates
    assert h.writes() == []

    # New ids carrying the same facts at the same times: newer versions, no change.
    h.send(*({**e, "id": e["id"] + "-again"} for e in events))
    assert h.writes() == []


def test_membership_changes_to_one_group_cost_ceil_n_over_members_per_patch(harness):
    h = harness
    n = 250
    h.activate("zs")
    users = [f"m{i}" for i in range(n)]
    h.send(h.user("u0"), h.group("g1", "big"), h.member("g1", "u0"), h.associate("zs", "g1"),
           *(h.user(u) for u in users),
           *(h.event("app.user_associated", app_id="zs", user_id=u) for u in users))  # fmt: skip
    group_id = h.groups()["big"]["id"]
    h.scim.clear_requests()

    h.send(*(h.member("g1", u) for u in users))  # one batch, before the group reconciles
    patches = [r for r in h.scim.requests if r == ("PATCH", f"/v2/Groups/{group_id}")]
    assert len(patches) == math.ceil(n / MEMBERS_PER_PATCH)
    assert h.writes() == patches
    assert len(h.members("big")) == n + 1


def test_lookups_are_avoided_once_the_remote_id_is_known(harness):
    h = harness
    h.activate("zs")
    h.trust_bulk_writes()
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    remote_id = h.users()["u1@example.com"]["id"]
    h.scim.clear_requests()
    for department in ("Eng", "Research"):
        record = {"id": "u1", "username": "u1@example.com", "state": "active",
                  "department": department}  # fmt: skip
        h.send(h.event("user.updated", user=record))
    assert [r for r in h.scim.requests if r[0] == "GET"] == []
    assert [path for _, path in h.writes()] == [f"/v2/Users/{remote_id}"] * 2


def test_a_new_group_looks_itself_up_while_its_members_are_created_then_posts_them_at_once(
    harness,
):
    h = harness
    h.activate("zs", "--rate", "20", "--burst", "5")  # 30 users: 60 calls, 3 s
    users = [f"w{i}" for i in range(30)]
    h.send(*(h.user(u) for u in users), h.group("g1", "team"),
           *(h.member("g1", u) for u in users), h.associate("zs", "g1"))  # fmt: skip
    log = h.scim.requests
    user_posts = [i for i, r in enumerate(log) if r == ("POST", "/v2/Users")]
    group_lookups = [i for i, r in enumerate(log) if r == ("GET", "/v2/Groups")]
    group_writes = [(i, r) for i, r in enumerate(log) if r[0] != "GET" and "/Groups" in r[1]]
    assert len(user_posts) == 30 and len(group_lookups) == 1
    assert group_lookups[0] < user_posts[-1]  # sent while the members were on their way
    assert [r for _, r in group_writes] == [("POST", "/v2/Groups")]  # no PATCH after it
    assert group_writes[0][0] > user_posts[-1]
    assert len(h.members("team")) == 30
