"""``PROVISIONER_REDIS_MIN_REPLICAS``: events are acknowledged only once that many replicas
confirm them (``WAIT``), against a real primary and replica. A replica that falls behind (here
SIGSTOPped) makes publishing raise ``NotReplicated``, the webhook answer 503 with
``Retry-After`` and ``replay`` fail; the same request sent again once the replica is back is
answered 202, its events duplicates that the replica now holds."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producers.replay import replay
from producers.webhook import create_app
from tests.support.harness import run_cli
from tests.test_webhook import NEW, encode, event, post, running, signed
from worker import config
from worker.contract.events import parse_events
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import NotReplicated, publish
from worker.store import keys


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, of this module's own."""
    primary = RedisServer(tmp_path_factory.mktemp("primary")).start()
    replica = RedisServer(tmp_path_factory.mktemp("replica")).start()
    client = redis.Redis(port=replica.port)
    client.replicaof("127.0.0.1", primary.port)
    deadline = time.monotonic() + 20
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    yield primary, replica
    replica.stop()
    primary.stop()


@pytest.fixture
def primary(
    servers: tuple[RedisServer, RedisServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[redis.Redis]:
    """A client of the primary, with one replica required and a short wait for it."""
    monkeypatch.setenv("REDIS_URL", servers[0].url)
    monkeypatch.setenv("PROVISIONER_REDIS_MIN_REPLICAS", "1")
    monkeypatch.setenv("PROVISIONER_REDIS_WAIT_TIMEOUT", "0.3")
    config.settings.cache_clear()
    client = redis.Redis(port=servers[0].port)
    yield client
    client.close()
    monkeypatch.undo()
    config.settings.cache_clear()


@contextlib.contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP), as a replica that falls behind."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def replica_holds(servers: tuple[RedisServer, RedisServer], event_id: str) -> bool:
    return redis.Redis(port=servers[1].port).zscore(keys.RECENT_EVENTS, event_id) is not None


def test_publishing_waits_for_the_replica(
    servers: tuple[RedisServer, RedisServer], primary: redis.Redis
) -> None:
    document = event()
    result = publish(primary, parse_events(encode([document])))
    assert result.accepted == [document["id"]]
    assert replica_holds(servers, document["id"])  # confirmed before publish returned


def test_without_the_replica_nothing_is_acknowledged(
    servers: tuple[RedisServer, RedisServer], primary: redis.Redis, tmp_path: Path
) -> None:
    documents = [event(n) for n in range(3)]
    with stalled(servers[1]):
        with pytest.raises(NotReplicated, match="confirmed by 0 of the 1 replicas"):
            publish(primary, parse_events(encode(documents[:1])))
        with pytest.raises(NotReplicated, match="replay stopped, 0 of 1 events published"):
            replay(primary, parse_events(encode(documents[1:2])))
        (tmp_path / "events.jsonl").write_text(encode(documents[2]).decode())
        done = run_cli(["replay", str(tmp_path / "events.jsonl")], {})
        assert done.returncode == 1 and "not acknowledged" in done.stderr, done.stderr
        assert "published" not in done.stdout
    # Stored on the primary all the same: published again, they are duplicates, now confirmed.
    again = publish(primary, parse_events(encode(documents)))
    assert again.duplicates == [d["id"] for d in documents] and not again.accepted
    assert all(replica_holds(servers, d["id"]) for d in documents)


def test_the_webhook_answers_503_until_the_replica_confirms(
    servers: tuple[RedisServer, RedisServer], primary: redis.Redis
) -> None:
    document = event()
    body = encode(document)
    with running(create_app(secrets=[NEW], redis_url=servers[0].url)) as url:
        with stalled(servers[1]):
            refused = post(url, body, signed(body))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and refused.json()["error"] == "unavailable"
        assert "replicas" in refused.json()["detail"]
        answered = post(url, body, signed(body))  # the sender's retry
    assert answered.status_code == 202, answered.text
    assert answered.json() == {"accepted": [], "duplicates": [document["id"]]}
    assert replica_holds(servers, document["id"])
