"""Prometheus metrics in one process: the receiver's counters by outcome and refusal reason,
the state gauges read from Redis, the causes' times for the sync lag, multiprocess counting
across forked children, and a worker's ``/healthz`` following its heartbeat."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producers.webhook import MAX_BODY, create_app
from tests.conftest import own_redis
from tests.support.clock import FakeClock
from tests.support.scimserver import ScimServer
from tests.test_webhook import NEW, encode, event, post, running, signed
from worker import config
from worker.apps import lifecycle
from worker.contract.events import parse_event
from worker.devstack.redis_server import RedisServer, free_port
from worker.queue import metrics, metrics_http
from worker.queue.publish import publish
from worker.queue.sweeper import beat
from worker.store import apps, keys, scripts
from worker.store.apps import AppConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """No worker: the state read here is the test's alone."""
    yield from own_redis(tmp_path_factory)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of an exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


# -- the receiver ----------------------------------------------------------------------------------
def test_the_receiver_counts_accepted_duplicate_and_refused_by_reason(
    r: redis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(secrets=[NEW], redis_url=redis_server.url)
    with running(app) as url:
        before = httpx.get(f"{url}/metrics").text
        first, second = event(1), event(2)
        body = encode([first, second])
        assert post(url, body, signed(body)).status_code == 202
        assert post(url, body, signed(body)).status_code == 202  # a retry: duplicates
        bad = {
            "content_type": (b"{}", {"Content-Type": "text/plain"}),
            "auth": (b"{}", {"Content-Type": "application/json"}),
            "too_large": (b"x" * (MAX_BODY + 1), {"Content-Type": "application/json"}),
            "bad_json": (b"{", signed(b"{")),
            "contract": (encode({"id": "x"}), signed(encode({"id": "x"}))),
        }
        for reason, (content, headers) in bad.items():
            response = httpx.post(f"{url}/v1/events", content=content, headers=headers)
            assert 400 <= response.status_code < 500, (reason, response.text)
        after = httpx.get(f"{url}/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def moved(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert moved("provisioner_events_received_total", outcome="accepted") == 2
    assert moved("provisioner_events_received_total", outcome="duplicate") == 2
    for reason in bad:
        assert moved("provisioner_events_refused_total", reason=reason) == 1, reason
    # the state gauges come with the receiver's counters
    assert value(text, "provisioner_journal_events") == 2
    assert value(text, "provisioner_pending_batches") == 1
    assert value(text, "provisioner_workers_alive") == 0


def test_the_receiver_counts_redis_outages_and_missing_replicas(
    r: redis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = encode(event(3))
    down = create_app(secrets=[NEW], redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with running(down) as url:
        assert post(url, body, signed(body)).status_code == 503
        text = httpx.get(f"{url}/metrics").text  # no state: Redis does not answer
    assert "provisioner_journal_events" not in text
    assert value(text, "provisioner_events_refused_total", reason="unavailable") >= 1
    monkeypatch.setenv("PROVISIONER_REDIS_MIN_REPLICAS", "1")  # and there is no replica
    monkeypatch.setenv("PROVISIONER_REDIS_WAIT_TIMEOUT", "0.2")
    config.settings.cache_clear()
    try:
        with running(create_app(secrets=[NEW], redis_url=redis_server.url)) as url:
            before = value(httpx.get(f"{url}/metrics").text, "provisioner_events_refused_total",
                           reason="replicas")  # fmt: skip
            assert post(url, body, signed(body)).status_code == 503
            text = httpx.get(f"{url}/metrics").text
    finally:
        monkeypatch.undo()
        config.settings.cache_clear()
    assert value(text, "provisioner_events_refused_total", reason="replicas") == before + 1


# -- state gauges --------------------------------------------------------------------------------
def test_the_state_gauges_read_redis(r: redis.Redis, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    apps.save(r, AppConfig("zs", "https://zs.example", str(token), active=True))
    apps.save(r, AppConfig("gh", "https://gh.example", str(token), profile="github-emu",
                           active=True, paused="401", rate=2.0, burst=3))  # fmt: skip
    r.zadd(keys.WQ_DIRTY, {"zs user a": 1, "zs user b": 1})
    r.hset(keys.WQ_OWNER, "zs user c", "1")
    r.zadd(keys.WQ_DELAYED, {"zs user d": 1})
    r.hset(keys.WQ_PARKED, mapping={"zs user e": "bad", "zs user f": "bad", "zs user g": "x"})
    r.hset(keys.WQ_DEFERRED, "zs group g1", 1)
    r.hset(metrics.held_key("zs"), "zs user h", "deactivate")
    r.set(metrics.breaker_key("gh"), "open")
    r.xadd(keys.JOURNAL, {"e": "{}"})
    r.zadd(keys.PENDING_BATCHES, {"b1": 1, "b2": 2})
    beat(r, "w1")
    beat(r, "w2")

    def rate_of(app: AppConfig) -> tuple[float, int]:
        return (app.rate or 5.0, app.burst or 5)

    client = redis.Redis.from_url(config.redis_url())
    text = metrics.exposition(metrics.StateCollector(lambda: client, rate_of)).decode()
    assert value(text, "provisioner_journal_events") == 1
    assert value(text, "provisioner_pending_batches") == 2
    expected = {"dirty": 2, "in_flight": 1, "delayed": 1, "parked": 3, "held": 1, "deferred": 1}
    for state, count in expected.items():
        assert value(text, "provisioner_reconcile_keys", state=state) == count, state
    assert value(text, "provisioner_apps_quarantined") == 1
    assert value(text, "provisioner_breaker_open", app="gh") == 1
    assert ("provisioner_breaker_open", frozenset({("app", "zs")})) in samples(text)
    assert value(text, "provisioner_breaker_open", app="zs") == 0
    assert value(text, "provisioner_app_rate_limit_requests_per_second", app="zs") == 5
    assert value(text, "provisioner_app_rate_limit_requests_per_second", app="gh") == 2
    assert value(text, "provisioner_app_pace_requests_per_second", app="gh") == 2
    assert value(text, "provisioner_workers_alive") == 2


# -- the causes' times ---------------------------------------------------------------------------
def test_ingest_remembers_when_each_cause_occurred_and_was_accepted(
    r: redis.Redis, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    apps.save(r, AppConfig("zs", "https://zs.example", str(token), active=True))
    user = {"id": "u1", "username": "u1@example.com", "email": "u1@example.com",
            "firstname": "U", "lastname": "One", "state": "active"}  # fmt: skip
    documents = [
        ("e-group", "group.created", 1, {"group": {"id": "g1", "name": "G1"}}),
        ("e-user", "user.created", 2, {"user": user}),
        ("e-member", "group.member_added", 3, {"group_id": "g1", "user_id": "u1"}),
        ("e-assoc", "app.group_associated", 4, {"app_id": "zs", "group_id": "g1"}),
    ]
    occurred = {i: 1767323040.0 + n + 0.25 for i, _, n, _ in documents}
    publish(r, [parse_event({"id": i, "type": t, "data": d, "occurred_at":
                             datetime.fromtimestamp(occurred[i], UTC).isoformat()})
                for i, t, _, d in documents])  # fmt: skip
    (batch,) = r.zrange(keys.PENDING_BATCHES, 0, -1, withscores=True)
    scripts.run(r, "ingest", batch[0].decode())
    stored = [c.decode() for k in r.keys(f"{keys.PREFIX}wq:cause:*") for c in r.lrange(k, 0, -1)]
    causes = metrics.parse_causes(stored)
    assert "e-assoc" in {c.id for c in causes}, stored
    for cause in causes:
        assert cause.accepted == pytest.approx(batch[1] / 1000, abs=1e-6), stored
        assert cause.occurred == pytest.approx(occurred[cause.id], abs=1e-6), stored


def test_a_cause_without_times_counts_no_lag() -> None:
    assert metrics.Cause.parse("e1") == metrics.Cause("e1")
    before = value(metrics.exposition().decode(), "provisioner_sync_lag_seconds_count",
                   app="lagtest", since="occurred")  # fmt: skip
    causes = metrics.parse_causes(["e1", "e2 01767323046000000 1767323050000", "e2 x y"])
    metrics.observe_lag("lagtest", causes, 1767323056.0)
    text = metrics.exposition().decode()
    assert value(text, "provisioner_sync_lag_seconds_count", app="lagtest",
                 since="occurred") == before + 1  # fmt: skip
    assert value(text, "provisioner_sync_lag_seconds_sum", app="lagtest", since="occurred") == 10
    assert value(text, "provisioner_sync_lag_seconds_sum", app="lagtest", since="accepted") == 6


# -- multiprocess counting -------------------------------------------------------------------------
FORKED = """
import multiprocessing, sys
from worker.queue import metrics
metrics.enable_multiprocess()
def child(n):
    for _ in range(n):
        metrics.applied(1, 0, 0)
    metrics.scim_recorder("zs")(type("R", (), {"method": "GET", "status": 200, "elapsed": 0.01})())
if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    metrics.applied(1, 0, 0)
    for n in (3, 5):
        p = multiprocessing.Process(target=child, args=(n,))
        p.start(); p.join()
        metrics.process_dead(p.pid)
    sys.stdout.write(metrics.exposition().decode())
"""


def test_forked_children_are_counted_by_the_parent() -> None:
    """A Celery prefork child counts in a file of its own, which the main process adds up."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FORKED)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env={**os.environ,
                          "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert value(done.stdout, "provisioner_events_applied_total", outcome="applied") == 9
    assert value(done.stdout, "provisioner_scim_requests_total", app="zs", method="GET",
                 status="200") == 2  # fmt: skip


# -- a worker's listener -------------------------------------------------------------------------
def test_healthz_follows_the_workers_own_heartbeat(r: redis.Redis, clock: FakeClock) -> None:
    client = redis.Redis.from_url(config.redis_url())
    healthy = metrics_http.health_check(lambda: client, "w1@host")
    state = metrics.StateCollector(lambda: client)
    server = metrics_http.start_listener("127.0.0.1", free_port(), state, healthy)
    assert server is not None
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(f"{url}/healthz").status_code == 503  # never beat
        beat(r, "w1@host")
        beat(r, "w2@host")
        assert httpx.get(f"{url}/healthz").status_code == 200
        text = httpx.get(f"{url}/metrics").text
        assert value(text, "provisioner_workers_alive") == 2
        clock.advance(20)  # past the heartbeat's 15 s: the sweeper thread stopped beating
        response = httpx.get(f"{url}/healthz")
        assert response.status_code == 503, response.text
        beat(r, "w1@host")
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/nothing").status_code == 404
    finally:
        server.stop()
    assert metrics_http.start_listener("127.0.0.1", 0, state, healthy) is None  # port 0: off


def test_healthz_is_503_when_redis_does_not_answer() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    healthy = metrics_http.health_check(lambda: client, "w1@host")
    server = metrics_http.start_listener("127.0.0.1", free_port(), None, healthy)
    assert server is not None
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 503
    finally:
        server.stop()


def test_a_taken_port_leaves_the_worker_running(caplog: pytest.LogCaptureFixture) -> None:
    server = metrics_http.start_listener("127.0.0.1", free_port(), None, lambda: True)
    assert server is not None
    try:
        assert metrics_http.start_listener("127.0.0.1", server.port, None, lambda: True) is None
    finally:
        server.stop()
    assert "metrics listener not started" in caplog.text


# -- PROVISIONER_METRICS=off ---------------------------------------------------------------------
COUNT_ALL = """
import os, sys
from worker.queue import metrics
made = metrics.enable_multiprocess()
sys.stderr.write(f"{made} {os.environ.get('PROMETHEUS_MULTIPROC_DIR')}")
request = type("R", (), {"method": "GET", "status": 200, "elapsed": 0.01})()
metrics.received(3, 1)
metrics.refused("auth")
metrics.applied(5, 1, 1)
metrics.reconciled("zs", "done", 0.1)
metrics.ratelimit_wait("zs", 0.5)
metrics.scim_recorder("zs")(request)
metrics.throttled("zs")
metrics.retry_after_pause("zs")
causes = metrics.parse_causes(["e1 01767323046000000 1767323050000"])
metrics.observe_lag("zs", causes, 1767323056.0)
sys.stdout.write(metrics.exposition().decode())
"""


@pytest.mark.parametrize("setting", ["off", "on"])
def test_with_metrics_off_nothing_is_counted(setting: str) -> None:
    """Every counting function, in a process of its own with ``PROVISIONER_METRICS`` off (and,
    to show the script counts at all, on)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROVISIONER_METRICS": setting}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(COUNT_ALL)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    counted = {name for (name, _), v in samples(done.stdout).items()
               if v and name.startswith("provisioner_")}  # fmt: skip
    if setting == "off":
        assert counted == set()
        assert done.stderr == "None None"  # no multiprocess directory
    else:
        assert {f"provisioner_{name}_total" for name in ("events_received", "events_refused",
                "events_applied", "reconciles", "ratelimit_waits", "scim_requests",
                "scim_throttled", "scim_retry_after_pauses")} <= counted  # fmt: skip
        assert "provisioner_sync_lag_seconds_count" in counted
        assert "provisioner-metrics-" in done.stderr


def test_with_metrics_off_the_listener_serves_healthz_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_enabled", False)
    server = metrics_http.start_listener("127.0.0.1", free_port(), None, lambda: True)
    assert server is not None
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{url}/metrics").status_code == 404
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        server.stop()


# -- the activation's SCIM requests ---------------------------------------------------------------
def test_an_activations_checks_and_listing_are_counted(
    r: redis.Redis, scim_server: ScimServer, tmp_path: Path
) -> None:
    """``apps activate`` verifies the app and lists it (users in scope): each of its requests
    is counted under the app, as the runner's are."""
    token = tmp_path / "token"
    token.write_text(scim_server.token)
    documents = []
    for i in range(3):
        user = {"id": f"u{i}", "username": f"u{i}@example.com", "email": f"u{i}@example.com",
                "firstname": "U", "lastname": str(i), "state": "active"}  # fmt: skip
        documents += [(f"e-u{i}", "user.created", {"user": user}),
                      (f"e-a{i}", "app.user_associated", {"app_id": "mlist", "user_id": f"u{i}"})]  # fmt: skip
    publish(r, [parse_event({"id": i, "type": t, "data": d, "occurred_at": "2026-01-02T03:04:05Z"})
                for i, t, d in documents])  # fmt: skip
    (batch,) = r.zrange(keys.PENDING_BATCHES, 0, -1)
    scripts.run(r, "ingest", batch.decode())
    before = samples(metrics.exposition().decode())
    scim_server.clear_requests()

    activation = lifecycle.activate(r, "mlist", base_url=scim_server.base_url,
                                    token_file=str(token), rate=10000, burst=100)  # fmt: skip

    assert activation.listing is not None and activation.listing.users.requests >= 1
    after = samples(metrics.exposition().decode())
    counted = Counter()
    for (name, labels), v in after.items():
        if name == "provisioner_scim_requests_total" and dict(labels)["app"] == "mlist":
            counted[dict(labels)["method"]] += int(v - before.get((name, labels), 0))
    sent = Counter(method for method, _ in scim_server.requests)
    assert counted == sent  # the checks (ServiceProviderConfig, a read) and the listing pages
    assert sent["GET"] >= 3
