"""The webhook receiver over HTTP: a real uvicorn server, a real Redis, no worker.

Every refused request must leave Redis as it was: nothing journaled, nothing pending, no
wake-up message in the broker. A request sent again is a retry: 202, its events duplicates.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from standardwebhooks.webhooks import Webhook

from producers import signing, webhook
from producers.webhook import MAX_BODY, create_app
from tests.conftest import own_redis
from worker.devstack.redis_server import RedisServer, free_port
from worker.queue.sweeper import beat
from worker.store import keys


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no worker of the session pool touches it."""
    yield from own_redis(tmp_path_factory)


NEW = b"new-secret-0123456789"
OLD = b"old-secret-9876543210"
WHEN = "2026-11-28T17:50:51.123Z"
INGEST_QUEUE = "prov.ingest"


# --- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def event(n: int = 0, **changes: Any) -> dict[str, Any]:
    document = {"id": f"evt-{uuid.uuid4().hex}-{n}", "type": "group.member_added",
                "occurred_at": WHEN, "data": {"group_id": "g-1", "user_id": f"u-{n}"}}  # fmt: skip
    document.update(changes)
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def signed(body: bytes, secret: bytes = NEW, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": "application/json",
            signing.HEADER: signing.sign(secret, body, stamp)}  # fmt: skip


def standard(body: bytes, secret: str | bytes = NEW, msg_id: str | None = None,
             timestamp: int | None = None) -> dict[str, str]:  # fmt: skip
    """Headers signed by the ``standardwebhooks`` package, as a Standard Webhooks sender sends."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body.decode())
    return {"Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(stamp), "webhook-signature": signature}  # fmt: skip


def post(base: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base}/v1/events", content=body, headers=headers, timeout=30)


def broker_length(r: redis.Redis) -> int:
    return int(r.llen(INGEST_QUEUE))


def assert_nothing_stored(r: redis.Redis, broker_before: int) -> None:
    assert r.xlen(keys.JOURNAL) == 0
    assert r.zcard(keys.PENDING_BATCHES) == 0
    assert r.zcard(keys.RECENT_EVENTS) == 0
    assert list(r.scan_iter(match=keys.batch("*"))) == []
    assert broker_length(r) == broker_before


def assert_refused(response: httpx.Response, status: int, error: str,
                   reason: str = "", pointer: str | None = None) -> dict[str, Any]:  # fmt: skip
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert reason.lower() in body["detail"].lower() or any(
        reason.lower() in p["reason"].lower() for p in body["problems"]
    ), body
    assert body["problems"] and all({"pointer", "reason"} <= set(p) for p in body["problems"])
    if pointer is not None:
        assert pointer in [p["pointer"] for p in body["problems"]], body
    return body


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def base(app_url: str) -> Iterator[str]:
    """The receiver with two secrets (a rotation in progress), bearer disabled."""
    with running(create_app(secrets=[NEW, OLD], allow_bearer=False,
                            redis_url=app_url)) as url:  # fmt: skip
        yield url


@pytest.fixture
def before(r: redis.Redis) -> int:
    """The broker's ingest queue length before the test (the broker keys are not wiped)."""
    return broker_length(r)


# --- accepted requests -------------------------------------------------------------------------


def test_a_single_event_is_accepted_once_durable(base: str, r: redis.Redis, before: int) -> None:
    document = event()
    body = encode(document)
    response = post(base, body, signed(body))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": [document["id"]], "duplicates": []}
    assert r.xlen(keys.JOURNAL) == 1
    assert r.zcard(keys.PENDING_BATCHES) == 1
    assert broker_length(r) == before + 1  # the wake-up message (no worker runs here)


def test_scripts_lost_by_redis_are_loaded_again(base: str, r: redis.Redis) -> None:
    """After a Redis restart (its script cache empty) the receiver loads its script again."""
    body = encode(event())
    assert post(base, body, signed(body)).status_code == 202
    r.script_flush()
    body = encode(event(1))
    assert post(base, body, signed(body)).status_code == 202
    assert r.xlen(keys.JOURNAL) == 2


def test_a_batch_is_accepted_whole(base: str, r: redis.Redis) -> None:
    documents = [event(n) for n in range(1000)]
    body = encode(documents)
    response = post(base, body, signed(body))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == [d["id"] for d in documents]
    assert r.xlen(keys.JOURNAL) == 1000


def test_the_same_event_again_is_a_duplicate(base: str, r: redis.Redis) -> None:
    document = event()
    body = encode(document)
    assert post(base, body, signed(body)).status_code == 202
    body_again = encode([document, event(1)])  # another request, hence another signature
    response = post(base, body_again, signed(body_again))
    assert response.status_code == 202
    assert response.json()["duplicates"] == [document["id"]]
    assert r.xlen(keys.JOURNAL) == 2
    woken = broker_length(r)
    body_last = encode([document])  # nothing new: stored nowhere, and no wake-up
    response = post(base, body_last, signed(body_last))
    assert response.json() == {"accepted": [], "duplicates": [document["id"]]}
    assert r.xlen(keys.JOURNAL) == 2 and broker_length(r) == woken


def test_content_type_with_charset_is_accepted(base: str) -> None:
    body = encode(event())
    headers = signed(body) | {"Content-Type": "application/json; charset=utf-8"}
    assert post(base, body, headers).status_code == 202


def test_rotation_old_and_new_secrets_are_both_accepted(base: str, r: redis.Redis) -> None:
    for secret in (OLD, NEW):
        body = encode(event())
        assert post(base, body, signed(body, secret)).status_code == 202
    assert r.xlen(keys.JOURNAL) == 2


# --- the bad-input table -----------------------------------------------------------------------


def bad_type() -> bytes:
    return encode(event(type="user.exploded"))


def unknown_field() -> bytes:
    return encode([event(0), event(1, color="blue")])


def missing_field() -> bytes:
    return encode([event(0), event(1, data={"group_id": "g-1"})])


def bad_timestamp() -> bytes:
    return encode(event(occurred_at="2026-11-28T17:50:51"))


def one_good_one_bad() -> bytes:
    return encode([event(0), event(1, id="")])


def bad_email() -> bytes:
    user = {"id": "u-1", "username": "ann", "email": "not-an-email", "state": "active"}
    return encode([event(0), event(1, type="user.created", data={"user": user})])


def nested(depth: int) -> bytes:
    """A valid event whose ``data`` holds an unknown field nested ``depth`` levels deep."""
    return encode(event()).replace(
        b'"data": {', b'"data": {"x": ' + b"[" * depth + b"]" * depth + b", ", 1
    )


@pytest.mark.parametrize(("make", "status", "error", "pointer", "reason"), [
    (lambda: b'{"id": "evt-1", "type": ', 400, "malformed_json", "", "malformed JSON"),
    (lambda: b"\xff\xfe{", 400, "malformed_json", "", "malformed JSON"),
    (bad_type, 422, "invalid_events", "/type", "unknown event type"),
    (unknown_field, 422, "invalid_events", "/1/color", "unknown field"),
    (missing_field, 422, "invalid_events", "/1/data/user_id", "required"),
    (bad_timestamp, 422, "invalid_events", "/occurred_at", "zone"),
    (one_good_one_bad, 422, "invalid_events", "/1/id", ""),
    (lambda: encode([event(n) for n in range(1001)]), 413, "too_many_events", "", "1001 events"),
    (bad_email, 422, "invalid_events", "/1/data/user/email", "not a valid email address"),
    (lambda: nested(5_000), 400, "malformed_json", "", "nested too deep"),
    (lambda: b"[" * 100_000 + b"]" * 100_000, 400, "malformed_json", "", "nested too deep"),
    (lambda: b'{"a":' * 5_000 + b"1" + b"}" * 5_000, 400, "malformed_json", "", "nested too deep"),
    (lambda: nested(500), 422, "invalid_events", "/data/x", "unknown field"),
    (lambda: encode(event()).replace(b'"g-1"', b"1" * 5000), 400, "malformed_json", "",
     "more than 4300 digits"),
    (lambda: encode(event()).replace(b'"g-1"', b"NaN"), 400, "malformed_json", "", "NaN"),
    (lambda: encode(event()).replace(b'"g-1"', b"-Infinity"), 400, "malformed_json", "",
     "-Infinity"),
    (lambda: json.dumps(event(id="evt-é"), ensure_ascii=False).encode("utf-16"), 400, "malformed_json", "",
     "not UTF-8"),
    (lambda: json.dumps(event(id="evt-é"), ensure_ascii=False).encode("latin-1"), 400, "malformed_json", "",
     "not UTF-8"),
    (lambda: encode(event(occurred_at="9999-12-31T23:59:59-05:00")), 422, "invalid_events",
     "/occurred_at", "out of range"),
    (lambda: encode(event(id="evt-\ud800")), 422, "invalid_events", "/id", "unicode"),
])  # fmt: skip
def test_bad_content_is_refused_and_changes_nothing(
    base: str,
    r: redis.Redis,
    before: int,
    make: Any,
    status: int,
    error: str,
    pointer: str,
    reason: str,
) -> None:
    body = make()
    assert_refused(post(base, body, signed(body)), status, error, reason, pointer)
    assert_nothing_stored(r, before)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(base: str, r: redis.Redis, before: int,
                            content_type: str | None) -> None:  # fmt: skip
    body = encode(event())
    headers = signed(body)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    assert_refused(post(base, body, headers), 415, "unsupported_media_type", "application/json")
    assert_nothing_stored(r, before)


def test_body_over_the_limit_by_content_length(base: str, r: redis.Redis, before: int) -> None:
    body = b"[" + b" " * MAX_BODY + b"]"
    response = post(base, body, signed(body))
    assert_refused(response, 413, "body_too_large", f"1 MiB) (Content-Length: {MAX_BODY + 2})")
    assert_nothing_stored(r, before)


def test_body_over_the_limit_while_reading(base: str, r: redis.Redis, before: int) -> None:
    body = b"[" + b" " * MAX_BODY + b"]"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = signed(body)
    response = httpx.post(f"{base}/v1/events", content=chunks(), headers=headers, timeout=30)
    body_json = assert_refused(response, 413, "body_too_large", "1 MiB")
    assert "Content-Length" not in body_json["detail"]  # refused while reading
    assert_nothing_stored(r, before)


def test_a_body_at_the_limit_is_read(base: str, r: redis.Redis) -> None:
    document = event()
    raw = encode(document)
    body = raw + b" " * (MAX_BODY - len(raw))
    assert post(base, body, signed(body)).status_code == 202


# --- authentication ----------------------------------------------------------------------------


def test_missing_signature(base: str, r: redis.Redis, before: int) -> None:
    response = post(base, encode(event()), {"Content-Type": "application/json"})
    assert_refused(response, 401, "unauthorized", "missing signature")
    assert "HMAC-SHA256" in response.headers["www-authenticate"]
    assert_nothing_stored(r, before)


@pytest.mark.parametrize("header", ["nonsense", "t=now,v1=abc", "v1=" + "0" * 64, "t=123"])
def test_malformed_signature(base: str, r: redis.Redis, before: int, header: str) -> None:
    headers = {"Content-Type": "application/json", signing.HEADER: header}
    response = post(base, encode(event()), headers)
    assert_refused(response, 401, "unauthorized", "malformed")
    assert response.headers["www-authenticate"]
    assert_nothing_stored(r, before)


def test_wrong_secret(base: str, r: redis.Redis, before: int) -> None:
    body = encode(event())
    response = post(base, body, signed(body, b"not-a-configured-secret"))
    assert_refused(response, 401, "unauthorized", "does not match")
    assert_nothing_stored(r, before)


def test_tampered_body(base: str, r: redis.Redis, before: int) -> None:
    body = encode(event())
    tampered = body.replace(b"u-0", b"u-9")
    assert_refused(post(base, tampered, signed(body)), 401, "unauthorized", "does not match")
    assert_nothing_stored(r, before)


@pytest.mark.parametrize("offset", [-301, 305, -3600])  # ahead: int() floors the time
def test_expired_signature(base: str, r: redis.Redis, before: int, offset: int) -> None:
    """A request replayed after its window (or stamped far ahead) is refused."""
    body = encode(event())
    response = post(base, body, signed(body, timestamp=int(time.time()) + offset))
    assert_refused(response, 401, "unauthorized", "expired")
    assert_nothing_stored(r, before)


def assert_stored_once(r: redis.Redis, ids: list[str], broker_before: int) -> None:
    """The events were journaled once, in one pending batch, with one wake-up."""
    journaled = [json.loads(fields[b"e"])["id"] for _, fields in r.xrange(keys.JOURNAL)]
    assert journaled == ids
    assert r.zcard(keys.PENDING_BATCHES) == 1
    assert broker_length(r) == broker_before + 1
    assert int(r.hget(keys.COUNTERS, "published") or 0) == len(ids)


def test_a_request_sent_again_is_a_retry(base: str, r: redis.Redis, before: int) -> None:
    """At-least-once delivery: the same signed request again (same body, same signature,
    inside the window) is answered 202 with its events as duplicates; nothing twice."""
    documents = [event(0), event(1)]
    ids = [d["id"] for d in documents]
    body = encode(documents)
    headers = signed(body)
    first = post(base, body, headers)
    assert first.status_code == 202 and first.json() == {"accepted": ids, "duplicates": []}
    for _ in range(2):
        again = post(base, body, headers)
        assert again.status_code == 202, again.text
        assert again.json() == {"accepted": [], "duplicates": ids}
    assert_stored_once(r, ids, before)


def test_a_retry_with_a_reshuffled_header_is_a_retry(
    base: str, r: redis.Redis, before: int
) -> None:
    document = event()
    body = encode(document)
    headers = signed(body)
    assert post(base, body, headers).status_code == 202
    timestamp, digest = headers[signing.HEADER].split(",")
    reshuffled = f"v1={'0' * 64},v1={digest[3:].upper()},{timestamp}"
    response = post(base, body, headers | {signing.HEADER: reshuffled})
    assert response.status_code == 202
    assert response.json() == {"accepted": [], "duplicates": [document["id"]]}
    assert_stored_once(r, [document["id"]], before)


def test_concurrent_copies_of_a_request_store_it_once(
    base: str, r: redis.Redis, before: int
) -> None:
    """Copies that arrive together (one group commit, or several) are stored once."""
    document = event()
    body = encode(document)
    headers = signed(body)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(base, body, headers), range(16)))
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    assert sorted(len(a.json()["accepted"]) for a in answers) == [0] * 15 + [1]
    assert_stored_once(r, [document["id"]], before)


def test_a_signature_with_another_body_is_refused(base: str, r: redis.Redis, before: int) -> None:
    """What replay protection is still for: a captured signature carries its body only."""
    body = encode(event())
    assert post(base, body, signed(body)).status_code == 202
    broker = broker_length(r)
    other = encode(event(1))
    response = post(base, other, signed(body))
    assert_refused(response, 401, "unauthorized", "does not match")
    assert r.xlen(keys.JOURNAL) == 1 and broker_length(r) == broker


# --- Standard Webhooks -------------------------------------------------------------------------


def test_standard_webhooks_signatures_are_accepted(base: str, r: redis.Redis) -> None:
    """Signed by the ``standardwebhooks`` package with the raw secrets the receiver has (the
    old one too: rotation), and with the same key written ``whsec_<base64>``."""
    whsec = "whsec_" + base64.b64encode(NEW).decode()
    for secret in (NEW, OLD, whsec):
        document = event()
        body = encode(document)
        response = post(base, body, standard(body, secret))
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": [document["id"]], "duplicates": []}
    assert r.xlen(keys.JOURNAL) == 3


def test_a_standard_webhooks_retry_is_a_retry(base: str, r: redis.Redis, before: int) -> None:
    """A retry keeps its ``webhook-id``: sent again as it was, or signed again at a later
    timestamp (as Standard Webhooks senders retry), it is answered with duplicates."""
    document = event()
    body = encode(document)
    headers = standard(body, msg_id="msg_retry_1", timestamp=int(time.time()) - 60)
    assert post(base, body, headers).json() == {"accepted": [document["id"]], "duplicates": []}
    for again in (headers, standard(body, msg_id="msg_retry_1")):
        response = post(base, body, again)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": [], "duplicates": [document["id"]]}
    assert_stored_once(r, [document["id"]], before)


def test_standard_webhooks_with_a_whsec_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, app_url: str, r: redis.Redis
) -> None:
    key = bytes(range(32))
    whsec = "whsec_" + base64.b64encode(key).decode()
    monkeypatch.setenv(signing.SECRET_ENV, f"{whsec},{OLD.decode()}")
    monkeypatch.delenv(signing.SECRET_FILE_ENV, raising=False)
    senders = [lambda b: standard(b, whsec), lambda b: standard(b, key), lambda b: signed(b, key),
               lambda b: standard(b, OLD)]  # fmt: skip
    with running(create_app(redis_url=app_url)) as url:
        for sender in senders:
            body = encode(event())
            assert post(url, body, sender(body)).status_code == 202
        body = encode(event())
        refused = post(url, body, standard(body, NEW))  # not configured here
        assert_refused(refused, 401, "unauthorized", "does not match")
    assert r.xlen(keys.JOURNAL) == 4


@pytest.mark.parametrize(("change", "header", "reason"), [
    ({"webhook-id": None}, "webhook-id", "missing webhook-id"),
    ({"webhook-timestamp": None}, "webhook-timestamp", "missing webhook-timestamp"),
    ({"webhook-signature": None}, "webhook-signature", "missing webhook-signature"),
    ({"webhook-signature": "v1"}, "webhook-signature", "malformed"),
    ({"webhook-timestamp": "soon"}, "webhook-timestamp", "malformed"),
    ({"webhook-id": "msg_other"}, "webhook-signature", "does not match"),
    ({"webhook-timestamp": str(int(time.time()) - 301)}, "webhook-signature", "does not match"),
])  # fmt: skip
def test_bad_standard_webhooks_headers_name_the_header(
    base: str, r: redis.Redis, before: int, change: dict[str, str | None], header: str, reason: str
) -> None:
    body = encode(event())
    headers = {k: v for k, v in (standard(body) | change).items() if v is not None}
    response = post(base, body, headers)
    refused = assert_refused(response, 401, "unauthorized", reason)
    assert refused["problems"][0]["header"] == header
    assert_nothing_stored(r, before)


def test_an_expired_standard_webhooks_signature(base: str, r: redis.Redis, before: int) -> None:
    body = encode(event())
    headers = standard(body, timestamp=int(time.time()) - 301)
    refused = assert_refused(post(base, body, headers), 401, "unauthorized", "expired")
    assert refused["problems"][0]["header"] == "webhook-timestamp"
    assert_nothing_stored(r, before)


def test_x_provisioner_signature_is_checked_when_both_are_sent(
    base: str, r: redis.Redis, before: int
) -> None:
    body = encode(event())
    both = standard(body) | {signing.HEADER: signing.sign(b"wrong", body, int(time.time()))}
    assert_refused(post(base, body, both), 401, "unauthorized", "does not match")
    assert_nothing_stored(r, before)


def test_bearer_is_refused_unless_enabled(base: str, r: redis.Redis, before: int) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {NEW.decode()}"}
    assert_refused(post(base, encode(event()), headers), 401, "unauthorized", "not enabled")
    assert_nothing_stored(r, before)


def test_bearer_when_enabled(app_url: str, r: redis.Redis, before: int) -> None:
    app = create_app(secrets=[NEW, OLD], allow_bearer=True, redis_url=app_url)
    with running(app) as url:
        json_type = {"Content-Type": "application/json"}
        wrong = post(url, encode(event()), json_type | {"Authorization": "Bearer nope"})
        assert_refused(wrong, 401, "unauthorized", "wrong bearer secret")
        assert "Bearer" in wrong.headers["www-authenticate"]
        basic = post(url, encode(event()), json_type | {"Authorization": "Basic eDp5"})
        assert_refused(basic, 401, "unauthorized", "unsupported")
        assert_refused(post(url, encode(event()), json_type), 401, "unauthorized", "missing")
        assert_nothing_stored(r, before)
        for secret in (NEW, OLD):
            bearer = json_type | {"Authorization": f"Bearer {secret.decode()}"}
            assert post(url, encode(event()), bearer).status_code == 202
        body = encode(event())  # a signature still works
        assert post(url, body, signed(body)).status_code == 202
    assert r.xlen(keys.JOURNAL) == 3


def test_bearer_flag_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(webhook.ALLOW_BEARER_ENV, "1")
    monkeypatch.setenv(signing.SECRET_ENV, NEW.decode())
    monkeypatch.delenv(signing.SECRET_FILE_ENV, raising=False)
    app = create_app()
    with running(app) as url:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer nope"}
        assert post(url, encode(event()), headers).json()["detail"] == "wrong bearer secret"


def test_no_secret_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.SECRET_ENV, raising=False)
    monkeypatch.delenv(signing.SECRET_FILE_ENV, raising=False)
    with pytest.raises(webhook.ConfigurationError, match="no webhook secret"):
        create_app()
    with pytest.raises(webhook.ConfigurationError, match="no webhook secret"):
        create_app(secrets=[])


def test_insecure_mode_accepts_unauthenticated_requests(
    app_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="provisioner.webhook"):
        app = create_app(secrets=[], insecure=True, redis_url=app_url)
    assert "INSECURE" in caplog.text
    with running(app) as url:
        document = event()
        response = post(url, encode(document), {"Content-Type": "application/json"})
        assert response.status_code == 202
        assert response.json()["accepted"] == [document["id"]]
        refused = post(url, b"{", {"Content-Type": "application/json"})
        assert_refused(refused, 400, "malformed_json", "malformed")
    assert r.xlen(keys.JOURNAL) == 1


# --- failures of Redis ---------------------------------------------------------------------------


def test_redis_outage_answers_503(r: redis.Redis, before: int) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with running(create_app(secrets=[NEW], redis_url=dead)) as url:
        body = encode(event())
        response = post(url, body, signed(body))
        assert_refused(response, 503, "unavailable", "Redis is unavailable")
        assert response.headers["retry-after"]
        started = time.monotonic()
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        assert time.monotonic() - started < webhook.READY_TIMEOUT + 1
        assert ready.json()["checks"]["redis"].startswith(("unreachable", "no answer"))
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert_nothing_stored(r, before)


def test_a_request_sent_again_after_a_503_is_answered(
    base: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 503 the same request can be sent again as it is. The fault: Redis stored the
    request but the answer was lost on the way back; the retry is told its events are in."""
    real_publish = webhook.publish_requests_async

    async def answer_lost(*args: Any, **kwargs: Any) -> Any:
        await real_publish(*args, **kwargs)
        raise redis.ConnectionError("connection lost")

    document = event()
    body = encode(document)
    headers = signed(body)
    monkeypatch.setattr(webhook, "publish_requests_async", answer_lost)
    assert_refused(post(base, body, headers), 503, "unavailable", "retry")
    assert r.xlen(keys.JOURNAL) == 1  # stored, unbeknown to the sender
    monkeypatch.setattr(webhook, "publish_requests_async", real_publish)
    again = post(base, body, headers)
    assert again.status_code == 202
    assert again.json() == {"accepted": [], "duplicates": [document["id"]]}
    assert r.xlen(keys.JOURNAL) == 1


# --- probes, errors, logs ----------------------------------------------------------------------


def test_healthz_and_readyz(base: str, r: redis.Redis) -> None:
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"redis": "ok", "workers": "no worker heartbeat"}
    beat(r, "test")
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"redis": "ok", "workers": "ok"}}


def test_unknown_paths_and_methods_answer_json(base: str) -> None:
    missing = httpx.get(f"{base}/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = httpx.get(f"{base}/v1/events")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_one_log_line_per_request_without_body_or_secret(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = encode([event(0), event(1)])
    headers = signed(body)

    def lines() -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.name == "provisioner.webhook"]

    with caplog.at_level(logging.INFO, logger="provisioner.webhook"):
        assert post(base, body, headers).status_code == 202
        post(base, body, signed(body, b"wrong-secret"))
        deadline = time.monotonic() + 5  # the line is written once the response is sent
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    messages = sorted(lines())  # 202 then 401
    assert len(messages) == 2
    assert messages[0].startswith("POST /v1/events 202 events=2 duration_ms=")
    assert messages[1].startswith("POST /v1/events 401 events=0")
    assert "unauthorized" in messages[1]
    digest = headers[signing.HEADER].split("v1=")[1]
    for line in messages:
        assert digest not in line and NEW.decode() not in line and "u-1" not in line


# --- the real serve() path in a subprocess ------------------------------------------------------


def start_serve(port: int, env: dict[str, str], workers: int = 2,
                insecure: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    code = ("from producers.webhook import serve; "
            f"serve('127.0.0.1', {port}, {workers}, {insecure})")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else b""
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the receiver did not become healthy")


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    output, _ = process.communicate(timeout=20)
    return output.decode(errors="replace")


def serve_env(redis_server: RedisServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_WEBHOOK")}
    return env | {"REDIS_URL": redis_server.url} | extra


def test_serve_with_several_workers(redis_server: RedisServer, r: redis.Redis) -> None:
    port = free_port()
    env = serve_env(redis_server, PROVISIONER_WEBHOOK_SECRET=f"{NEW.decode()},{OLD.decode()}")
    process = start_serve(port, env, workers=2)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        bodies = [encode(event(n)) for n in range(8)]
        for n, body in enumerate(bodies):
            response = post(url, body, signed(body, OLD if n % 2 else NEW))
            assert response.status_code == 202, response.text
        body = encode(event())
        assert_refused(post(url, body, signed(body, b"wrong")), 401, "unauthorized", "match")
        assert_refused(post(url, b"{", signed(b"{")), 400, "malformed_json", "malformed")
    finally:
        output = stop(process)
    assert r.xlen(keys.JOURNAL) == 8
    assert "POST /v1/events 202 events=1" in output
    assert NEW.decode() not in output and OLD.decode() not in output


def test_serve_refuses_to_start_without_a_secret(redis_server: RedisServer) -> None:
    process = start_serve(free_port(), serve_env(redis_server), workers=1)
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert b"no webhook secret" in output and b"--insecure" in output


def test_serve_insecure(redis_server: RedisServer, r: redis.Redis) -> None:
    port = free_port()
    process = start_serve(port, serve_env(redis_server), workers=1, insecure=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        response = post(url, encode(event()), {"Content-Type": "application/json"})
        assert response.status_code == 202
    finally:
        output = stop(process)
    assert "INSECURE" in output
    assert r.xlen(keys.JOURNAL) == 1


def test_sign_command_output_is_accepted(base: str, r: redis.Redis, tmp_path: Any) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(OLD.decode())
    body = encode(event())
    command = [sys.executable, "-m", "producers.signing", "--secret-file", str(secret_file)]
    done = subprocess.run(command, input=body, capture_output=True, check=True)
    name, _, value = done.stdout.decode().strip().partition(": ")
    response = post(base, body, {"Content-Type": "application/json", name: value})
    assert response.status_code == 202
    assert r.xlen(keys.JOURNAL) == 1
