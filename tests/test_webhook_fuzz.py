"""Bad bodies get a 4xx, never a 5xx: a fuzz test of the webhook receiver.

Each example is a valid request mutated one or two ways (deep nesting, huge numbers, wrong
types, unicode, duplicate keys, NaN and Infinity, control characters, big arrays, truncation,
byte order marks, other encodings, stray bytes, odd timestamps and emails), signed with either
scheme, and sent to a real receiver (uvicorn in a thread) over a real Redis. Every answer must
be 202 or a 4xx naming the problem; a refused request must leave Redis as it was, and an
accepted one must have stored exactly the events it lists as accepted.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers import signing
from producers.webhook import MAX_BODY, create_app
from tests.conftest import own_redis, reset_state
from tests.test_webhook import INGEST_QUEUE, NEW, OLD, WHEN, running
from worker.devstack.redis_server import RedisServer
from worker.store import keys

EXAMPLES = int(os.environ.get("WEBHOOK_FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of the session pool touches it."""
    yield from own_redis(tmp_path_factory)


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """One client for every example (hypothesis runs them all in one test call)."""
    r = redis.Redis.from_url(redis_server.url)
    reset_state(r)
    yield r
    r.close()


@pytest.fixture(scope="module")
def http(redis_server: RedisServer) -> Iterator[httpx.Client]:
    app = create_app(secrets=[NEW, OLD], allow_bearer=False, redis_url=redis_server.url)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as session:
        yield session


# --- valid requests ------------------------------------------------------------------------------


def fresh_id(kind: str = "evt") -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["user", "member", "rename", "association", "deleted"]))
    event: dict[str, Any] = {"id": fresh_id(), "occurred_at": WHEN}
    if kind == "user":
        user = {"id": fresh_id("u"), "username": "ann", "email": "ann@example.com",
                "firstname": "Ann", "department": "Eng", "state": "active"}  # fmt: skip
        event |= {"type": "user.created", "data": {"user": user}}
    elif kind == "member":
        event |= {"type": "group.member_added", "data": {"group_id": "g-1", "user_id": "u-1"}}
    elif kind == "rename":
        event |= {"type": "group.renamed", "data": {"group_id": "g-1", "name": "Sales"}}
    elif kind == "association":
        event |= {"type": "app.user_associated", "data": {"app_id": "a-1", "user_id": "u-1"}}
    else:
        event |= {"type": "user.deleted", "data": {"user_id": fresh_id("u")}}
    return event


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document where a value sits (dict keys and list indexes)."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def put(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    copy = list(document) if isinstance(document, list) else dict(document)
    copy[head] = put(document[head], tuple(rest), value)
    return copy


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)
ODD_TIMESTAMPS = ["2026-11-28T17:50:51", "2026-02-30T00:00:00Z", "9999-12-31T23:59:59-05:00",
                  "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                  "2026-11-28T17:50:51.123456789Z", "2026-11-28T17:50:51+99:00", "", "now",
                  "1970-01-01T00:00:00Z", "2026-11-28 17:50:51Z", "2026-W48-5T17:50:51Z"]  # fmt: skip
ODD_EMAILS = ["not-an-email", "a@b", "@x.com", "a@@x.com", "a@x.com\n", "a b@x.com", "",
              "Ann <ann@example.com>", "用户@例子.广告", "a@[127.0.0.1]", "x" * 300]  # fmt: skip
NUMBERS = [b"1" * 5000, b"1" * 4300, b"1e999", b"-1e400", b"123456789012345678901234567890",
           b"0." + b"0" * 5000 + b"1", b"-0", b"1E+2", b"NaN", b"Infinity", b"-Infinity"]  # fmt: skip


# --- mutations ------------------------------------------------------------------------------------
# Document-level mutations change the decoded document; byte-level ones the encoded body.


def mutate_document(data: st.DataObject, document: Any) -> Any:
    where = data.draw(st.sampled_from(paths(document)), label="path")
    how = data.draw(st.sampled_from(["type", "unicode", "timestamp", "email", "extra", "drop",
                                     "big array", "many events"]), label="document mutation")  # fmt: skip
    if how == "type":
        return put(document, where, data.draw(JSON_VALUES, label="value"))
    if how == "unicode":
        return put(document, where, data.draw(st.text(max_size=300), label="text"))
    if how == "timestamp":
        value = data.draw(st.sampled_from(ODD_TIMESTAMPS) | st.text(max_size=40), label="when")
        return walk_set(document, "occurred_at", value)
    if how == "email":
        value = data.draw(st.sampled_from(ODD_EMAILS) | st.text(max_size=40), label="email")
        return walk_set(document, "email", value)
    if how == "extra":
        key = data.draw(st.text(max_size=10), label="key")
        return walk_set(document, "occurred_at", None, extra={key: 1})
    if how == "drop":
        key = data.draw(st.sampled_from(["id", "type", "occurred_at", "data", "user_id", "state"]))
        return walk_set(document, key, None, drop=True)
    if how == "big array":
        size = data.draw(st.sampled_from([1000, 100_000]), label="size")
        return put(document, where, [0] * size)
    events = document if isinstance(document, list) else [document]
    events = [e for e in events if isinstance(e, dict)] or [{}]
    count = data.draw(st.sampled_from([0, 999, 1000, 1001, 3000]), label="events")
    return [dict(events[n % len(events)], id=fresh_id()) for n in range(count)]


def walk_set(
    document: Any, key: str, value: Any, *, drop: bool = False, extra: dict[str, Any] | None = None
) -> Any:
    """The document with every ``key`` set to ``value`` (or dropped, or ``extra`` added beside
    it); an email is added to user records that have none."""
    if isinstance(document, list):
        return [walk_set(item, key, value, drop=drop, extra=extra) for item in document]
    if not isinstance(document, dict):
        return document
    copy = {k: walk_set(v, key, value, drop=drop, extra=extra) for k, v in document.items()}
    if key in copy or (key == "email" and "username" in copy):
        if drop:
            del copy[key]
        elif extra is not None:
            copy |= extra
        else:
            copy[key] = value
    return copy


def mutate_bytes(data: st.DataObject, body: bytes) -> bytes:
    how = data.draw(st.sampled_from(["nest", "number", "duplicate key", "control", "lone surrogate",
                                     "truncate", "bom", "encoding", "stray byte", "delete",
                                     "whitespace", "oversize", "scalar"]), label="byte mutation")  # fmt: skip
    at = data.draw(st.integers(0, len(body)), label="at")
    if how == "nest":
        depth = data.draw(st.sampled_from([5, 100, 900, 1100, 5000, 100_000]), label="depth")
        opener, closer = data.draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nested = opener * depth + b"1" + closer * depth
        return body.replace(b'"g-1"', nested, 1) if b'"g-1"' in body else nested
    if how == "number":
        number = data.draw(st.sampled_from(NUMBERS), label="number")
        return body.replace(f'"{WHEN}"'.encode(), number, 1).replace(b'"g-1"', number, 1)
    if how == "duplicate key":
        return body.replace(b'{"id": ', b'{"id": "dup-id", "type": "user.exploded", "id": ', 1)
    if how == "control":
        char = bytes([data.draw(st.integers(0, 31), label="control")])
        return body.replace(b'"ann', b'"a' + char + b"nn", 1).replace(b"-1", b"-" + char, 1)
    if how == "lone surrogate":
        return body.replace(b'"g-1"', b'"g-\\udc00"', 1).replace(b'"ann', b'"\\ud800ann', 1)
    if how == "truncate":
        return body[:at]
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "encoding":
        codec = data.draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1"]))
        text = body.decode("utf-8", errors="replace").replace("ann", "änn")
        return text.encode(codec, errors="replace")
    if how == "stray byte":
        return body[:at] + bytes([data.draw(st.integers(0x80, 0xFF), label="byte")]) + body[at:]
    if how == "delete":
        return body[:at] + body[at + 1 :]
    if how == "whitespace":
        return b" \t\r\n" + body + b"\n \x0c"
    if how == "oversize":
        return body + b" " * (MAX_BODY + 1 - len(body))
    return data.draw(st.sampled_from([b"", b"null", b"true", b"1", b'"text"', b"[]", b"{}",
                                      b"[[]]", b"[null]", b"[1]", b"{}" * 2]), label="scalar")  # fmt: skip


def request_body(data: st.DataObject) -> bytes:
    """A valid body (one event or an array) mutated one or two ways."""
    events = data.draw(st.lists(valid_events(), min_size=1, max_size=3), label="events")
    document: Any = events if data.draw(st.booleans(), label="array") else events[0]
    body = json.dumps(document).encode()
    steps = st.lists(st.sampled_from(["document", "bytes"]), min_size=1, max_size=2)
    for step in data.draw(steps, label="mutations"):
        if step == "bytes":
            body = mutate_bytes(data, body)
            continue
        try:
            document = json.loads(body.decode("utf-8"))
        except ValueError:
            continue  # no longer JSON: only its bytes can be mutated
        body = json.dumps(mutate_document(data, document)).encode()
    return body


# --- the test ----------------------------------------------------------------------------------------


def snapshot(r: redis.Redis) -> dict[str, int]:
    """What a request can change in Redis."""
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.JOURNAL).zcard(keys.PENDING_BATCHES).zcard(keys.RECENT_EVENTS)
    pipe.llen(INGEST_QUEUE).hget(keys.COUNTERS, "published").dbsize()
    journal, pending, recent, queue, published, size = pipe.execute()
    return {"journal": journal, "pending": pending, "recent": recent, "queue": queue,
            "published": int(published or 0), "keys": size}  # fmt: skip


def headers_for(body: bytes, scheme: str) -> dict[str, str]:
    now = int(time.time())
    if scheme == "standard":
        signed = signing.standard_headers(OLD, body, now, f"msg_{uuid.uuid4().hex}")
    else:
        signed = {signing.HEADER: signing.sign(NEW, body, now)}
    return {"Content-Type": "application/json"} | signed


def ids_of(body: bytes) -> list[str]:
    """The event ids of a body the receiver accepted (decoded as it decodes)."""
    document = json.loads(body.decode("utf-8").removeprefix("\ufeff"))
    return [e["id"] for e in (document if isinstance(document, list) else [document])]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), scheme=st.sampled_from(["provisioner", "standard"]))
def test_every_bad_body_gets_a_4xx_and_stores_nothing(
    http: httpx.Client, client: redis.Redis, data: st.DataObject, scheme: str
) -> None:
    body = request_body(data)
    before = snapshot(client)
    response = http.post("/v1/events", content=body, headers=headers_for(body, scheme))
    after = snapshot(client)
    assert response.status_code == 202 or 400 <= response.status_code < 500, response.text
    answer = response.json()
    if response.status_code != 202:
        assert answer["error"] and answer["detail"] and answer["problems"], answer
        assert all(p["reason"] for p in answer["problems"]), answer
        assert after == before, (answer, before, after)
        return
    accepted, duplicates = answer["accepted"], answer["duplicates"]
    assert sorted(accepted + duplicates) == sorted(ids_of(body))
    stored = len(accepted)
    assert after["journal"] == before["journal"] + stored
    assert after["published"] == before["published"] + stored
    assert after["recent"] == before["recent"] + stored
    assert after["pending"] == before["pending"] + (1 if stored else 0)
    assert after["queue"] == before["queue"] + (1 if stored else 0)


def test_the_fuzzer_reaches_every_kind_of_answer(http: httpx.Client) -> None:
    """The mutations are not all refused alike: a guard against a fuzzer that tests nothing."""
    statuses: set[int] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(data=st.data())
    def probe(data: st.DataObject) -> None:
        body = request_body(data)
        statuses.add(
            http.post("/v1/events", content=body, headers=headers_for(body, "")).status_code
        )

    probe()
    assert {202, 400, 422} <= statuses, statuses
