"""Both Celery pools of ``provisioner worker`` provision end to end: ``threads`` (the default:
a reconcile mostly waits on Redis and the app) and ``prefork``."""

from pathlib import Path

import pytest
import redis

from tests.support.harness import Harness, WorkerPool
from tests.support.scimserver import ScimServer
from worker.devstack.redis_server import RedisServer


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_each_pool_provisions(pool: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    workers = WorkerPool(server.url, processes=1, concurrency=3, pool=pool).start()
    try:
        with ScimServer() as scim:
            h = Harness(redis.Redis.from_url(server.url), scim, tmp_path, redis_url=server.url)
            h.activate("zs")
            h.send(*(h.user(f"u{i}") for i in range(6)), h.group("g1", "eng"),
                   *(h.member("g1", f"u{i}") for i in range(6)), h.associate("zs", "g1"))  # fmt: skip
            assert h.members("eng") == {f"u{i}@example.com" for i in range(6)}
            # the option took effect: prefork hands tasks to 3 child processes, threads to none
            children = _children(workers.workers[0].pid)
            assert len(children) == (3 if pool == "prefork" else 0), children
    finally:
        workers.stop()
        server.stop()
