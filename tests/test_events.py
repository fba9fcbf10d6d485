"""The v1 event contract: strict, and every error names the field."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scim2_models import Email

from producers.replay import ReplayError, read_events
from worker.contract import events
from worker.contract.events import EventError, MalformedJSON, load_json, parse_events

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
        ({**OK, "occurred_at": "yesterday"}, "/occurred_at", "RFC 3339"),
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


# -- a user's email: what SCIM applications accept ---------------------------------------------

USER_EVENT = {
    "id": "e",
    "type": "user.created",
    "occurred_at": "2026-01-01T00:00:00Z",
    "data": {"user": {"id": "u1", "username": "ann", "state": "active"}},
}
ADDRESSES = [  # (address, whether scim2-models accepts it)
    ("ann@example.com", True),
    ("Ann.Lee+tag@Example.COM", True),
    ("用户@例子.广告", True),
    ("not-an-email", False),
    ("ann@", False),
    ("@example.com", False),
    ("ann@localhost", False),
    ("ann@example..com", False),
    ("ann lee@example.com", False),
    ("ann@[127.0.0.1]", False),
    ("ann@example.com\n", False),
    ("ann@@example.com", False),
    ("Ann Lee <ann@example.com>", True),  # the client sends ann@example.com
]


def with_email(email):
    user = {**USER_EVENT["data"]["user"], "email": email}
    return {**USER_EVENT, "data": {"user": user}}


@pytest.mark.parametrize(("address", "valid"), ADDRESSES)
def test_the_door_accepts_an_email_exactly_when_the_scim_client_can_send_it(address, valid):
    """The client builds ``emails`` with scim2-models (``Email.value``); what it cannot build
    would park the user, so the door refuses exactly that, at ``/data/user/email``."""
    try:
        Email(value=address)
        sendable = True
    except ValidationError:
        sendable = False
    if sendable:
        assert parse_events(json.dumps(with_email(address)))[0].data.user.email == address
    else:
        found = problems(with_email(address))
        assert [p["pointer"] for p in found] == ["/data/user/email"], found
        assert "not a valid email address" in found[0]["reason"]
    assert sendable == valid


# Addresses near the edges of the fast path: few characters, so that "--" in labels (R-LDH,
# Punycode "xn--"), special-use TLDs and dots in odd places come up often.
NEAR_PLAIN = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join([*labels, tld])}",
    st.lists(st.text("aZ09_+=-", min_size=1, max_size=4), min_size=1, max_size=3).map(".".join),
    st.lists(
        st.builds(
            "{}{}{}".format,
            st.text("axn0", min_size=1, max_size=3),
            st.sampled_from(["", "-", "--"]),
            st.text("axn0", max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(["com", "io", "test", "local", "onion", "arpa", "invalid", "localhost"])
    | st.text("aXz0", min_size=1, max_size=4),
)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(address=st.from_regex(events._PLAIN_EMAIL, fullmatch=True) | NEAR_PLAIN)
def test_the_fast_path_for_plain_addresses_accepts_only_what_scim2_models_accepts(address):
    """The door checks plain ASCII addresses with a regex of its own (a microsecond, not 20):
    anything it lets through must be what scim2-models' ``Email`` accepts too."""
    if events.plainly_an_email(address):
        Email(value=address)


@pytest.mark.parametrize(
    "address",
    ["a@xn--nxa.com", "a@ab--c.com", "a@x.test", "a@x.LOCAL", "a@x.onion", "a@x.arpa",
     "a@x.invalid", "a@" + "b" * 250 + ".com", "a.@x.com", "a@x.c0m", "a@-x.com"],
)  # fmt: skip
def test_addresses_the_fast_path_leaves_to_email_validator(address):
    assert not events.plainly_an_email(address)


def test_an_empty_or_missing_email_means_none():
    assert parse_events(json.dumps(with_email("")))[0].data.user.email == ""
    assert parse_events(json.dumps(USER_EVENT))[0].data.user.email is None


def test_replay_refuses_a_bad_email_as_the_webhook_does(tmp_path):
    good = json.dumps({**USER_EVENT, "id": "e0"})
    lines = tmp_path / "events.jsonl"
    lines.write_text(good + "\n" + json.dumps(with_email("not-an-email")) + "\n")
    with pytest.raises(ReplayError) as caught:
        read_events(str(lines))
    assert caught.value.lines == [
        "line 2: /data/user/email: value is not a valid email address: "
        "An email address must have an @-sign."
    ]
    array = tmp_path / "events.json"
    array.write_text(json.dumps([json.loads(good), with_email("not-an-email")]))
    with pytest.raises(ReplayError) as caught:
        read_events(str(array))
    assert caught.value.lines[0].startswith("event #2 (index 1): /data/user/email: value is not")


# -- JSON that is not: every problem named ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "nested too deep"),
        (b"[NaN]", "NaN is not a JSON value"),
        (b"[-Infinity]", "-Infinity is not a JSON value"),
        (b"[" + b"9" * 5_000 + b"]", "more than 4300 digits"),
        (b'["\xff"]', "not UTF-8 (byte 2"),
        (b'["\xed\xa0\x80"]', "not UTF-8"),  # an encoded surrogate
        ('["é"]'.encode("utf-16"), "not UTF-8"),
        (b'["a\x01b"]', "Invalid control character"),
        (b'{"id": "e1"', "Expecting"),
    ],
)
def test_malformed_json_names_the_problem(raw, reason):
    with pytest.raises(MalformedJSON) as caught:
        load_json(raw)
    assert reason in str(caught.value)
    with pytest.raises(EventError) as caught:
        parse_events(raw)
    assert caught.value.problems[0]["reason"].startswith("malformed JSON: ")


def test_a_utf8_byte_order_mark_is_ignored():
    assert load_json(b"\xef\xbb\xbf" + json.dumps(OK).encode()) == OK
    assert parse_events("\ufeff" + json.dumps(OK))[0].id == "e1"


def test_replay_refuses_deep_nesting_on_its_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(OK) + "\n" + "[" * 5_000 + "]" * 5_000 + "\n")
    with pytest.raises(ReplayError) as caught:
        read_events(str(path))
    assert caught.value.lines == ["line 2: malformed JSON: JSON nested too deep "
                                  "(an event is 4 levels deep)"]  # fmt: skip


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_timestamp_beyond_the_calendar_in_utc_is_refused(when):
    found = problems({**OK, "occurred_at": when})
    assert found[0]["pointer"] == "/occurred_at" and "out of range" in found[0]["reason"]


@pytest.mark.parametrize(
    "when", ["1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "5138-11-16T09:46:40Z"]
)
def test_a_timestamp_the_version_cannot_order_is_refused(when: str) -> None:
    """``v`` holds 17 digits of µs since 1970: outside that span it would sort wrongly."""
    found = problems({**OK, "occurred_at": when})
    assert found[0]["pointer"] == "/occurred_at" and "out of range" in found[0]["reason"]


@pytest.mark.parametrize(
    "when", ["1700000000", "2026-11-28", "2026-11-28T17:50Z", "2026-11-28T17:50:51+0100", "now"]
)
def test_a_timestamp_that_is_not_rfc_3339_is_refused(when: str) -> None:
    found = problems({**OK, "occurred_at": when})
    assert found[0]["pointer"] == "/occurred_at" and "RFC 3339" in found[0]["reason"]


@pytest.mark.parametrize("stamp", [1700000000, 1700000000.5])
def test_a_number_is_not_a_timestamp(stamp: float) -> None:
    event = {"id": "e1", "type": "user.deleted", "occurred_at": stamp, "data": {"user_id": "u1"}}
    with pytest.raises(EventError) as caught:
        parse_events(json.dumps(event))
    assert "RFC 3339" in str(caught.value.problems)
