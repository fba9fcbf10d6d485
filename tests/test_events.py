"""The v1 event contract: strict, and every error names the field."""

import json

import pytest

from worker.events import EventError, parse_events

OK = {
    "id": "e1",
    "type": "group.member_added",
    "occurred_at": "2026-11-28T17:50:51.123Z",
    "data": {"group_id": "g-42", "user_id": "u-7"},
}


def problems(document):
    with pytest.raises(EventError) as caught:
        parse_events(json.dumps(document))
    return caught.value.problems


def test_a_valid_event_and_an_array_parse():
    assert parse_events(json.dumps(OK))[0].data.user_id == "u-7"
    assert [e.id for e in parse_events(json.dumps([OK, {**OK, "id": "e2"}]))] == ["e1", "e2"]


@pytest.mark.parametrize(
    ("document", "pointer", "reason"),
    [
        ({**OK, "type": "group.member_add"}, "/type", "unknown event type"),
        ({k: v for k, v in OK.items() if k != "type"}, "/type", "missing field"),
        ({**OK, "extra": 1}, "/extra", "unknown field"),
        ({**OK, "data": {"group_id": "g", "user_id": "u", "x": 1}}, "/data/x", "unknown field"),
        ({**OK, "data": {"group_id": "g"}}, "/data/user_id", "Field required"),
        ({**OK, "occurred_at": "2026-11-28T17:50:51"}, "/occurred_at", "zone"),
        ({**OK, "occurred_at": "yesterday"}, "/occurred_at", "datetime"),
        ({**OK, "id": ""}, "/id", "at least 1"),
        ({**OK, "id": "x" * 129}, "/id", "at most 128"),
        ({**OK, "data": {"group_id": "g*", "user_id": "u"}}, "/data/group_id", "pattern"),
        ({**OK, "data": {"group_id": "g", "user_id": "u 1"}}, "/data/user_id", "pattern"),
        ({**OK, "data": {"group_id": 'g"', "user_id": "u"}}, "/data/group_id", "pattern"),
        ({**OK, "data": {"group_id": "{g}", "user_id": "u"}}, "/data/group_id", "pattern"),
        ({**OK, "data": {"group_id": 5, "user_id": "u"}}, "/data/group_id", "string"),
    ],
)
def test_bad_events_are_refused_naming_the_field(document, pointer, reason):
    found = problems(document)
    assert any(p["pointer"] == pointer and reason in p["reason"] for p in found), found


def test_user_records_are_strict():
    user = {"id": "u1", "username": "a@x", "state": "active"}
    event = {
        "id": "e",
        "type": "user.created",
        "occurred_at": "2026-01-01T00:00:00Z",
        "data": {"user": user},
    }
    assert parse_events(json.dumps(event))[0].data.user.username == "a@x"
    found = problems({**event, "data": {"user": {**user, "state": "gone"}}})
    assert found[0]["pointer"] == "/data/user/state"
    found = problems({**event, "data": {"user": {**user, "password": "x"}}})
    assert found[0]["pointer"] == "/data/user/password"


def test_an_array_with_one_bad_event_is_refused_whole_with_its_index():
    found = problems([OK, {**OK, "id": "e2", "data": {"group_id": "g"}}])
    assert found == [{"pointer": "/1/data/user_id", "reason": "Field required"}]


def test_malformed_json_is_refused():
    with pytest.raises(EventError) as caught:
        parse_events(b"{not json")
    assert "malformed JSON" in caught.value.problems[0]["reason"]
