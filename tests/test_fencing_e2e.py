"""Fenced writes (issue 13): a worker stopped mid-reconcile for longer than its lease wakes up
to find its key taken over and finished by another worker. The write it had sent lands late in
the application; when it comes to record that write, the fence refuses the record (its token is
no longer the key's): the object is left in doubt and the key dirty, so the pool reads the
application back and puts it right. The mirror, the audit log and the application end as the
directory says."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.reference_model import check, predict
from tests.support import run_log
from tests.support.harness import Harness, WorkerPool, wait_until
from tests.support.scimserver import ScimServer
from worker.devstack.redis_server import RedisServer
from worker.store import audit
from worker.store.mirror import Mirror

LEASE = {"PROVISIONER_LEASE_SECONDS": "2"}  # a stop of a few seconds outlives the lease
KEY = "zs user u1"


class HoldFirstUserWrite:
    """A fault hook: the first PUT or PATCH of a user, once ``armed``, is held at the
    application (not yet applied) until ``release``; ``arrived`` is set when it comes."""

    def __init__(self) -> None:
        self.armed = False
        self.arrived = threading.Event()
        self.go = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any]) -> None:
        if environ["REQUEST_METHOD"] in ("PUT", "PATCH") and "/Users/" in environ["PATH_INFO"]:
            with self._lock:
                hold, self.armed = self.armed, False
            if hold:
                self.arrived.set()
                self.go.wait(120)
        return None  # then the application handles it

    def release(self) -> None:
        self.go.set()


@pytest.fixture(params=[False, True], ids=["single-calls", "bulk"])
def stack(request, tmp_path) -> Iterator[tuple[Harness, WorkerPool, redis.Redis]]:  # noqa: ANN001
    """With Bulk, the update held at the application is one operation of a Bulk request (the
    fault hook sees each operation as its single request), and the whole request is held."""
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    pool = WorkerPool(server.url, processes=1, concurrency=1, env=LEASE)
    pool.module = "tests.support.run_log"  # each run's interval logged (Redis's clock)
    try:
        with ScimServer(bulk=request.param, split_bulk=request.param) as scim:
            yield Harness(client, scim, tmp_path, redis_url=server.url), pool.start(), client
    finally:
        for worker in pool.workers:  # a stopped worker cannot take its SIGTERM
            with_group(worker.pid, signal.SIGCONT)
        pool.stop()
        server.stop()


def with_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def department(h: Harness) -> str | None:
    user = h.users().get("u1@example.com", {})
    return user.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", {}).get(
        "department"
    )


def test_a_worker_stopped_past_its_lease_cannot_record_over_the_next_holder(stack):
    h, pool, client = stack
    h.activate("zs")
    events = [h.group("g1"), h.user("u1", department="Sales"), h.member("g1", "u1"),
              h.associate("zs", "g1")]  # fmt: skip
    h.send(*events)
    assert department(h) == "Sales"

    # Worker A sends the user's update; the application holds it, and A is stopped.
    hold = HoldFirstUserWrite()
    h.scim.inject(hold)
    hold.armed = True
    events.append(h.user("u1", department="Eng") | {"type": "user.updated"})
    h.send(events[-1], wait=False)
    assert hold.arrived.wait(30), "the update never reached the application"
    first = pool.workers[0]
    with_group(first.pid, signal.SIGSTOP)

    # Meanwhile the user moves on, and worker B, once A's lease is over, finishes the key.
    events.append(h.user("u1", department="Ops") | {"type": "user.updated"})
    pool.start_one()
    h.send(events[-1], wait=False)
    wait_until(lambda: department(h) == "Ops", timeout=60, what="B's update")
    h.wait(timeout=60)

    # A's update lands late, then A wakes up and comes to record it.
    hold.release()
    wait_until(lambda: department(h) == "Eng", timeout=30, what="A's late update applied")
    with_group(first.pid, signal.SIGCONT)
    a_name = pool.names[0]
    wait_until(lambda: any(r.worker.startswith(a_name) for r in run_log.runs(client)),
               timeout=60, what="A's run to end")  # fmt: skip
    wait_until(lambda: department(h) == "Ops", timeout=60, what="the application put right")
    h.wait(timeout=60)

    problems = check(predict(events), h.scim.users(), h.scim.groups())
    assert problems == []
    remote = h.users()["u1@example.com"]
    entry, _, in_doubt = Mirror(client, "zs").load_user("u1")
    assert entry is not None and not in_doubt
    assert entry.remote_id == remote["id"] and entry.attributes.get("department") == "Ops"
    # the audit log: each entry of the key from the lease that held the key when it was
    # written, so their tokens never go back (A's record, refused, is not there)
    tokens = [int(e["token"]) for e in audit.read(client, app="zs", object_id="user:u1")
              if e.get("token")]  # fmt: skip
    assert tokens == sorted(tokens), tokens
    # A's run did outlive its lease (B's run of the key began before it ended), and its
    # token wrote nothing
    overtaken = [pair for pair in run_log.overlaps(run_log.runs(client)) if pair[0].key == KEY]
    assert overtaken, run_log.runs(client)
    stale = overtaken[0][0]
    assert stale.worker.startswith(a_name) and int(stale.token) not in tokens
    if h.scim.bulk:  # the writes did travel in Bulk requests
        entries = audit.read(client, app="zs", object_id="user:u1")
        assert any("in Bulk request" in e["detail"] for e in entries), entries
