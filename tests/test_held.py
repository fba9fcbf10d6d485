"""What of a write the app's copy does not show (``worker.scim.held``): the check behind the
read-back of Bulk writes answered without their resources."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.scim.held import not_held

pytestmark = pytest.mark.unit

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
USER = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
    "userName": "ann@example.com",
    "active": True,
    "name": {"givenName": "Ann", "familyName": "Lee"},
    "emails": [{"value": "ann@example.com", "type": "work", "primary": True}],
    ENTERPRISE: {"department": "Sales"},
}
GROUP = {"displayName": "sales", "members": [{"value": "id-1"}, {"value": "id-2"}]}


def read_of(sent: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The resource as an app would answer it: the write, with an id, meta and ``changes``."""
    read = copy.deepcopy(sent) | {"id": "r1", "meta": {"resourceType": "User"}}
    for name, value in changes.items():
        if value is None:
            read.pop(name, None)
        else:
            read[name] = value
    return read


def test_a_resource_held_as_sent_has_nothing_missing():
    assert not_held("POST", USER, read_of(USER)) == []
    assert not_held("PUT", GROUP, read_of(GROUP)) == []


def test_values_in_the_apps_own_form_are_held():
    """Presence, not equality: case, a formatted name, attribute names in another case."""
    read = read_of(USER, userName="ANN@EXAMPLE.COM",
                   emails=[{"value": "Ann@Example.com", "type": "work"}])  # fmt: skip
    read["NAME"] = read.pop("name") | {"formatted": "Ann Lee"}
    assert not_held("POST", USER, read) == []


def test_what_the_app_dropped_is_named():
    assert not_held("POST", GROUP, read_of(GROUP, members=None)) == ["members"]
    assert not_held("POST", GROUP, read_of(GROUP, members=[{"value": "id-1"}])) == ["members"]
    assert not_held("POST", USER, read_of(USER, **{ENTERPRISE: None})) == ["department"]
    read = read_of(USER, name={"givenName": "Ann"})
    assert not_held("PUT", USER, read) == ["name.familyName"]
    assert not_held("PUT", USER, read_of(USER, emails=[])) == ["emails"]


def test_a_boolean_is_compared_exactly():
    assert not_held("PUT", {**USER, "active": False}, read_of(USER)) == ["active"]


def test_a_patch_of_members():
    read = read_of(GROUP)  # holds id-1 and id-2
    add = {"Operations": [{"op": "add", "path": "members", "value": [{"value": "id-3"}]}]}
    assert not_held("PATCH", add, read) == ["members"]
    remove = {"Operations": [{"op": "remove", "path": "members", "value": [{"value": "id-1"}]}]}
    assert not_held("PATCH", remove, read) == ["members"]
    by_filter = {"Operations": [{"op": "remove", "path": 'members[value eq "id-2"]'}]}
    assert not_held("PATCH", by_filter, read) == ["members"]
    gone = {"Operations": [{"op": "remove", "path": 'members[value eq "id-9"]'},
                           {"op": "add", "path": "members", "value": [{"value": "id-1"}]}]}  # fmt: skip
    assert not_held("PATCH", gone, read) == []


def test_a_patch_of_user_attributes():
    read = read_of(USER)
    ops = [
        {"op": "replace", "path": "active", "value": True},
        {"op": "replace", "path": "name.givenName", "value": "Ann"},
        {"op": "replace", "path": f"{ENTERPRISE}:department", "value": "Sales"},
        {"op": "remove", "path": "displayName"},
    ]
    assert not_held("PATCH", {"Operations": ops}, read) == []
    ops = [
        {"op": "replace", "path": "active", "value": False},
        {"op": "replace", "path": f"{ENTERPRISE}:department", "value": "Ops"},
        {"op": "remove", "path": "userName"},
    ]
    # the department is there (its value in the app's own form is not compared)
    assert not_held("PATCH", {"Operations": ops}, read) == ["active", "userName"]
    ops = [{"op": "replace", "path": f"{ENTERPRISE}:department", "value": "Ops"}]
    assert not_held("PATCH", {"Operations": ops}, read_of(USER, **{ENTERPRISE: None})) == [
        "department"
    ]


scalars = st.one_of(st.booleans(), st.text(min_size=1, max_size=8), st.integers())
names = st.text("abcdefgh", min_size=1, max_size=6)
resources = st.recursive(
    st.dictionaries(names, scalars, min_size=1, max_size=4),
    lambda inner: st.dictionaries(
        names,
        st.one_of(
            scalars,
            inner,
            st.lists(
                st.builds(dict, value=st.text(min_size=1, max_size=6)), min_size=1, max_size=3
            ),
        ),  # fmt: skip
        min_size=1,
        max_size=4,
    ),
    max_leaves=12,
)


@given(resources)
def test_property_a_resource_read_back_as_sent_is_held(sent):
    assert not_held("PUT", sent, read_of(sent)) == []


@given(resources, st.data())
def test_property_an_attribute_dropped_by_the_app_is_named(sent, data):
    name = data.draw(st.sampled_from(sorted(sent)))
    read = read_of(sent)
    read.pop(name)
    assert name in {path.split(".")[0] for path in not_held("PUT", sent, read)}
