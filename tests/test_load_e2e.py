"""No loss under load and faults (issue 3), and durability across a Redis crash.

- 8 concurrent clients post 20,000 signed events (single and batched) to the real receiver
  process while a worker is SIGKILLed once; every event answered 202 ends applied and the
  application converges to the reference model's prediction.
- The journal and the unprocessed events survive a Redis crash (SIGKILL, AOF); a pool started
  afterwards applies every event.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from producers import signing
from tests import reference_model
from tests.support.harness import TEST_ENV, Harness, WorkerPool, receiver, run_cli
from tests.support.scimserver import ScimServer
from worker.cli.status import snapshot
from worker.contract.events import parse_events
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import publish
from worker.store import journal, keys

SECRET = "load-test-secret-0123456789"
CLIENTS, TOTAL, USERS, GROUPS = 8, 20_000, 200, 20
SINGLES_PER_CLIENT = 250  # events each client posts one per request; the rest go in batches


# -- the workload --------------------------------------------------------------------------------
def workload(seed: int = 3) -> list[dict[str, Any]]:
    """TOTAL events about USERS users and GROUPS groups, with shuffled timestamps (the arrival
    order is not the version order), a few deletions, and every kind of change."""
    rng = random.Random(seed)
    documents: list[dict[str, Any]] = []

    def add(type_: str, **data: Any) -> None:
        moment = 1_800_000_000 + rng.uniform(0, 3600)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        stamp += f".{int(moment % 1 * 1e6):06d}Z"
        documents.append(
            {"id": f"ld-{len(documents)}", "type": type_, "occurred_at": stamp, "data": data}
        )

    def record(u: int) -> dict[str, Any]:
        return {
            "id": f"u{u}",
            "username": f"u{u}@load.example",
            "firstname": rng.choice(["Ada", "Alan", "Grace", "Edsger"]),
            "department": rng.choice(["rd", "ops", "sales"]),
            "state": "suspended" if rng.random() < 0.15 else "active",
        }

    for g in range(GROUPS):
        add("group.created", group={"id": f"g{g}", "name": f"grp-{g}"})
        if g < 16:
            add("app.group_associated", app_id="zs", group_id=f"g{g}")
    for u in range(USERS):
        add("user.created", user=record(u))
    renames = 0
    while len(documents) < TOTAL - 6:
        u, g, roll = f"u{rng.randrange(USERS)}", f"g{rng.randrange(GROUPS)}", rng.random()
        if roll < 0.55:
            kind = "group.member_added" if rng.random() < 0.6 else "group.member_removed"
            add(kind, group_id=g, user_id=u)
        elif roll < 0.70:
            add(rng.choice(["user.created", "user.updated"]), user=record(int(u[1:])))
        elif roll < 0.80:
            add(rng.choice(["user.suspended", "user.activated"]), user_id=u)
        elif roll < 0.85:
            renames += 1
            add("group.renamed", group_id=g, name=f"grp-{g[1:]}-r{renames}")
        elif roll < 0.93:
            kind = "app.group_associated" if rng.random() < 0.7 else "app.group_disassociated"
            add(kind, app_id="zs", group_id=g)
        else:
            kind = "app.user_associated" if rng.random() < 0.5 else "app.user_disassociated"
            add(kind, app_id="zs", user_id=u)
    for u in rng.sample(range(USERS), 5):
        add("user.deleted", user_id=f"u{u}")
    add("group.deleted", group_id=f"g{rng.randrange(GROUPS)}")
    rng.shuffle(documents)
    return documents


def requests_of(documents: list[dict[str, Any]], rng: random.Random) -> list[bytes]:
    """One client's request bodies: SINGLES_PER_CLIENT single events, the rest in batches."""
    bodies = [json.dumps(d).encode() for d in documents[:SINGLES_PER_CLIENT]]
    rest = documents[SINGLES_PER_CLIENT:]
    while rest:
        size = rng.randint(20, 400)
        bodies.append(json.dumps(rest[:size]).encode())
        rest = rest[size:]
    rng.shuffle(bodies)
    return bodies


class Client(threading.Thread):
    """Posts its bodies signed, in order, on one keep-alive connection."""

    accepted_events = 0
    lock = threading.Lock()

    def __init__(self, base: str, bodies: list[bytes]):
        super().__init__(daemon=True)
        self.base, self.bodies = base, bodies
        self.accepted: list[str] = []
        self.duplicates: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as http:
            for body in self.bodies:
                response = post(http, body)
                if response.status_code != 202:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                answer = response.json()
                self.accepted += answer["accepted"]
                self.duplicates += answer["duplicates"]
                with Client.lock:
                    Client.accepted_events += len(answer["accepted"])


def post(http: httpx.Client, body: bytes) -> httpx.Response:
    signature = signing.sign(SECRET.encode(), body, int(time.time()))
    headers = {"Content-Type": "application/json", signing.HEADER: signature}
    return http.post("/v1/events", content=body, headers=headers)


def counters(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.COUNTERS).items()}


def assert_converged(documents: list[dict[str, Any]], scim: ScimServer) -> None:
    prediction = reference_model.predict(documents, app="zs")
    problems = reference_model.check(prediction, scim.users(), scim.groups())
    assert not problems, f"{len(problems)} problems, e.g.: " + "\n".join(problems[:20])


# -- the tests -----------------------------------------------------------------------------------
def test_no_event_answered_202_is_lost_under_load_and_a_killed_worker(
    harness: Harness, worker_pool: WorkerPool, tmp_path: Path
) -> None:
    h = harness
    h.activate("zs")
    h.cli("approve", "zs")  # many deactivations are expected: past the deletion guard
    documents = workload()
    rng = random.Random(7)
    shares = [documents[i::CLIENTS] for i in range(CLIENTS)]
    Client.accepted_events = 0
    redis_env = {"REDIS_URL": os.environ["REDIS_URL"]}
    with receiver(redis_env, tmp_path / "webhook.log", secret=SECRET) as (_, base):
        clients = [Client(base, requests_of(share, rng)) for share in shares]
        for client in clients:
            client.start()
        while Client.accepted_events < TOTAL // 2 and any(c.is_alive() for c in clients):
            time.sleep(0.05)
        worker_pool.kill_one()  # SIGKILL mid-way: main process and its children
        for client in clients:
            client.join(timeout=180)
            assert not client.is_alive(), "a client did not finish"
        with httpx.Client(base_url=base, timeout=60) as http:  # a producer resending a batch
            resent = rng.sample(documents, 300)
            response = post(http, json.dumps(resent).encode())
        assert response.status_code == 202
        assert response.json() == {"accepted": [], "duplicates": [d["id"] for d in resent]}

    assert [f for c in clients for f in c.failures] == []
    accepted = [i for c in clients for i in c.accepted]
    assert sorted(accepted) == sorted(d["id"] for d in documents)  # each accepted exactly once
    assert [i for c in clients for i in c.duplicates] == []
    h.wait(timeout=240)
    applied = counters(h.redis)
    assert applied["published"] == TOTAL == h.redis.xlen(keys.JOURNAL)
    assert applied["applied"] + applied.get("stale", 0) + applied.get("ignored", 0) == TOTAL
    assert h.redis.zcard(keys.PENDING_BATCHES) == 0 and h.redis.hlen(keys.PARKED_BATCHES) == 0
    state = snapshot(h.redis)
    assert state["queue"]["parked"] == 0 and not state["apps"]["zs"]["held"]
    assert_converged(documents, h.scim)


def test_the_journal_and_unprocessed_events_survive_a_redis_crash(
    scim_server: ScimServer, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    pool = WorkerPool(server.url, processes=1, concurrency=2)
    try:
        env = {**TEST_ENV, "REDIS_URL": server.url}
        token = tmp_path / "scim.token"
        token.write_text(scim_server.token)
        for args in (
            ["apps", "activate", "zs", "--base-url", scim_server.base_url, "--token-file",
             str(token), "--rate", "10000", "--burst", "1000"],
            ["approve", "zs"],  # many deactivations are expected: past the deletion guard
        ):  # fmt: skip
            done = run_cli(args, env)
            assert done.returncode == 0, done.stderr
        client = redis.Redis.from_url(server.url)
        documents = workload(seed=11)[:2000]
        # No wake-up messages (notify=False): the pool's sweeper must find the pending batches.
        for start in range(0, len(documents), 250):
            chunk = parse_events(json.dumps(documents[start : start + 250]))
            publish(client, chunk, notify=False)
        journaled = list(journal.read_range(client))
        pending = client.zrange(keys.PENDING_BATCHES, 0, -1)

        server.restart(kill=True)  # SIGKILL: no clean shutdown, only the AOF
        client = redis.Redis.from_url(server.url)
        assert list(journal.read_range(client)) == journaled and len(journaled) == 2000
        assert client.zrange(keys.PENDING_BATCHES, 0, -1) == pending and len(pending) == 8
        assert all(client.exists(keys.batch(b.decode())) for b in pending)

        pool.start()
        deadline = time.monotonic() + 180
        while not snapshot(client)["idle"]:
            assert time.monotonic() < deadline, f"not idle: {snapshot(client)['queue']}"
            time.sleep(0.1)
        applied = counters(client)
        assert applied["published"] == 2000
        assert applied["applied"] + applied.get("stale", 0) + applied.get("ignored", 0) == 2000
        assert not snapshot(client)["apps"]["zs"]["held"]
        assert_converged(documents, scim_server)
    finally:
        pool.stop()
        server.stop()
