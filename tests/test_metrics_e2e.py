"""Metrics end to end: a real worker (``--pool prefork``: the tasks run in child processes),
a real scim2-server, the webhook receiver (``serve`` with two processes), and a real
Prometheus server scraping both and answering through its HTTP API.

The Prometheus test needs the ``prometheus`` binary (Debian's package ``prometheus``); it is
skipped, saying so, without it."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import own_redis
from tests.support.harness import Harness, WorkerPool, wait_until
from tests.support.scimserver import ScimServer
from tests.test_metrics import samples, value
from tests.test_webhook import NEW, encode, post, serve_env, signed, start_serve, stop, wait_healthy
from worker.devstack.redis_server import RedisServer, free_port

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Only this module's worker takes the events: its counters see them all."""
    yield from own_redis(tmp_path_factory)


def start_worker(redis_url: str, log: Path) -> tuple[WorkerPool, str]:
    """One ``provisioner worker --pool prefork`` serving its metrics on a free port."""
    port = free_port()
    env = {"PROVISIONER_METRICS_PORT": str(port), "PROVISIONER_METRICS_HOST": "127.0.0.1"}
    pool = WorkerPool(redis_url, processes=1, concurrency=2, pool="prefork", env=env,
                      log_file=log).start()  # fmt: skip
    return pool, f"http://127.0.0.1:{port}"


def answers(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


@pytest.fixture
def worker(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    pool, url = start_worker(redis_server.url, tmp_path / "worker.log")
    try:
        wait_until(lambda: pool.ready(r) and answers(f"{url}/healthz") == 200, timeout=60,
                   what="the worker's heartbeat and /healthz")  # fmt: skip
        yield url
    finally:
        pool.stop()


@pytest.fixture
def receiver(redis_server: RedisServer) -> Iterator[str]:
    port = free_port()
    process = start_serve(port, serve_env(redis_server, PROVISIONER_WEBHOOK_SECRET=NEW.decode()))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        stop(process)


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def send(receiver: str, documents: list[dict[str, Any]]) -> None:
    body = encode(documents)
    response = post(receiver, body, signed(body))
    assert response.status_code == 202, response.text


@pytest.fixture(params=[False, True], ids=["single-calls", "bulk"])
def app(request: pytest.FixtureRequest) -> Iterator[ScimServer]:
    """scim2-server, announcing SCIM Bulk or not."""
    with ScimServer(bulk=request.param) as server:
        yield server


def test_a_scenario_moves_the_metrics(
    r: redis.Redis,
    redis_server: RedisServer,
    app: ScimServer,
    tmp_path: Path,
    worker: str,
    receiver: str,
) -> None:
    h = Harness(r, app, tmp_path, redis_url=redis_server.url)
    h.activate("zs")
    h.clock = time.time() - 120  # the directory's changes happened two minutes ago
    documents = [h.user(f"u{i}") for i in range(3)] + [h.group("g1")]
    documents += [h.member("g1", f"u{i}") for i in range(3)] + [h.associate("zs", "g1")]
    send(receiver, documents)
    h.wait()
    send(receiver, documents)  # sent again: duplicates
    assert httpx.post(f"{receiver}/v1/events", content=b"{}").status_code == 415
    n = len(documents)

    text = scrape(receiver)  # either of its two processes: they count together
    assert value(text, "provisioner_events_received_total", outcome="accepted") == n
    assert value(text, "provisioner_events_received_total", outcome="duplicate") == n
    assert value(text, "provisioner_events_refused_total", reason="content_type") == 1
    assert value(text, "provisioner_journal_events") == n

    text = scrape(worker)  # ingest and reconciles ran in prefork children
    assert value(text, "provisioner_events_applied_total", outcome="applied") == n
    assert value(text, "provisioner_reconciles_total", app="zs", outcome="done") >= 4
    posts = sum(1 for method, _ in app.requests if method == "POST")
    if app.bulk:  # the writes went in Bulk requests (200), their operations counted apart
        assert posts == sum(1 for _, path in app.requests if path.endswith("/Bulk")) >= 1
        assert value(text, "provisioner_scim_requests_total", app="zs", method="POST",
                     status="200") == posts  # fmt: skip
        # three users and the group, and maybe a member the group stopped waiting for
        assert value(text, "provisioner_scim_bulk_operations_total", app="zs",
                     outcome="done") in (4, 5)  # fmt: skip
        assert value(text, "provisioner_scim_bulk_operations_total", app="zs",
                     outcome="failed") == 0  # fmt: skip
    else:
        assert posts == 4  # three users and the group
        assert value(text, "provisioner_scim_requests_total", app="zs", method="POST",
                     status="201") == 4  # fmt: skip
        assert value(text, "provisioner_scim_bulk_operations_total", app="zs",
                     outcome="done") == 0  # fmt: skip
    assert value(text, "provisioner_scim_request_duration_seconds_count", app="zs",
                 method="POST") == posts  # fmt: skip
    assert value(text, "provisioner_reconcile_duration_seconds_count", app="zs") >= 4
    lag = {since: (value(text, "provisioner_sync_lag_seconds_count", app="zs", since=since),
                   value(text, "provisioner_sync_lag_seconds_sum", app="zs", since=since))
           for since in ("occurred", "accepted")}  # fmt: skip
    assert lag["occurred"][0] >= 4 and lag["accepted"][0] == lag["occurred"][0], lag
    assert lag["occurred"][1] / lag["occurred"][0] > 100, lag  # minutes after they occurred
    assert lag["accepted"][1] / lag["accepted"][0] < 30, lag  # seconds after acceptance
    assert value(text, "provisioner_reconcile_keys", state="dirty") == 0
    assert value(text, "provisioner_workers_alive") == 1
    assert value(text, "provisioner_app_rate_limit_requests_per_second", app="zs") == 10000
    labels = {v for (_, pairs) in samples(text) for _, v in pairs}
    assert not labels & {"u0", "u1", "u2", "g1"}, labels  # no directory id in any label


def test_healthz_turns_503_when_the_worker_loses_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    pool, url = start_worker(server.url, tmp_path / "worker.log")
    try:
        client = redis.Redis.from_url(server.url)
        wait_until(lambda: pool.ready(client) and answers(f"{url}/healthz") == 200, timeout=60,
                   what="a fresh heartbeat")  # fmt: skip
        server.stop(kill=True)
        wait_until(lambda: answers(f"{url}/healthz") == 503, timeout=30, what="/healthz 503")
    finally:
        pool.stop()
        server.stop()


# -- a real Prometheus -------------------------------------------------------------------------
PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: worker
    static_configs: [{{targets: ["{worker}"]}}]
  - job_name: receiver
    static_configs: [{{targets: ["{receiver}"]}}]
"""


@pytest.fixture
def prometheus(tmp_path: Path, worker: str, receiver: str) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("no `prometheus` binary on PATH (Debian/Ubuntu: apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(worker=worker.removeprefix("http://"),
                                               receiver=receiver.removeprefix("http://")))  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, promql: str) -> float | None:
    """The value of a PromQL expression with one result, through ``/api/v1/query``."""
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.TransportError:
        return None
    result = answer.json()["data"]["result"] if answer.status_code == 200 else []
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_a_worker_and_the_receiver(
    r: redis.Redis, receiver: str, prometheus: str
) -> None:
    documents = [
        {"id": f"evt-{uuid.uuid4().hex}", "type": "group.created", "data": {"group": {"id": g,
         "name": g}}, "occurred_at": datetime.now(UTC).isoformat()} for g in ("g1", "g2")
    ]  # fmt: skip
    send(receiver, documents)  # applied to the projection: no app needed
    expected = {
        'provisioner_events_received_total{job="receiver",outcome="accepted"}': 2,
        'provisioner_events_applied_total{job="worker",outcome="applied"}': 2,
        "max without(instance, job) (provisioner_workers_alive)": 1,
        "max without(instance, job) (provisioner_journal_events)": 2,
        'up{job="worker"}': 1,
    }
    for promql, wanted in expected.items():
        wait_until(lambda q=promql, w=wanted: query(prometheus, q) == w, timeout=60,
                   what=f"Prometheus: {promql} == {wanted}")  # fmt: skip
