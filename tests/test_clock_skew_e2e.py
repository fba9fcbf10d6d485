"""One clock (issue 13): worker processes whose clocks are five minutes slow, right and five
minutes fast (libfaketime) share one Redis, under churn, with workers killed mid-reconcile.
Every lease, backoff, dirty time and heartbeat is stamped with Redis's clock, so the workers'
clocks do not matter: no key is ever reconciled by two workers at once (each run's interval is
logged on Redis's clock, ``tests.support.run_log``), no object is duplicated in the
application, and it ends as the reference model predicts."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from tests.reference_model import check, predict
from tests.support import run_log
from tests.support.harness import ROOT, Harness, WorkerPool
from tests.support.scimserver import ScimServer
from tests.test_chaos_e2e import kill_mid_reconcile, wait_for
from worker.devstack.redis_server import RedisServer
from worker.store import audit, keys

FAKETIME = shutil.which("faketime")
pytestmark = pytest.mark.skipif(
    FAKETIME is None, reason="needs the faketime binary (Debian package faketime) to skew clocks"
)

SKEWS = ("-5m", "+0", "+5m")  # each worker's clock, in turn (a replacement takes the next)
USERS, GROUPS, EVENTS = 40, 6, 1200
ENV = {
    "PROVISIONER_LEASE_SECONDS": "10",  # runs take milliseconds; a killed worker's keys return
    "PROVISIONER_GUARD_MINIMUM": "1000000",  # churn deactivates a lot: no deletion guard here
}


class SkewedPool(WorkerPool):
    """Workers whose wall clocks are off by ``SKEWS`` in turn, each run logged."""

    def __init__(self, redis_url: str, processes: int, concurrency: int) -> None:
        super().__init__(redis_url, processes=processes, concurrency=concurrency, env=ENV)
        self.module = "tests.support.run_log"
        self._skews = itertools.cycle(SKEWS)
        self.skew: dict[str, str] = {}  # worker name -> its clock's offset

    def start_one(self) -> subprocess.Popen[bytes]:
        skew = next(self._skews)
        self.names.append(f"test{next(self._names)}")
        self.skew[self.names[-1]] = skew
        process = subprocess.Popen(
            [FAKETIME or "faketime", "-m", "--exclude-monotonic", "-f", skew, sys.executable,
             "-m", self.module, "worker", "--pool", self.pool, "--concurrency",
             str(self.concurrency), "--loglevel", self.loglevel, "--hostname",
             f"{self.names[-1]}@%h"],
            env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.workers.append(process)
        return process


def churn(h: Harness, rng: random.Random) -> list[dict[str, Any]]:
    """Users and groups, then membership, associations, suspensions and updates at random."""
    events = [h.group(f"g{i}", f"group {i}") for i in range(GROUPS)]
    events += [h.user(f"u{i}", department=rng.choice(["Eng", "Ops"])) for i in range(USERS)]
    events += [h.associate("zs", f"g{i}") for i in range(0, GROUPS, 2)]
    while len(events) < EVENTS:
        u, g, roll = f"u{rng.randrange(USERS)}", f"g{rng.randrange(GROUPS)}", rng.random()
        if roll < 0.5:
            events.append(h.member(g, u, added=rng.random() < 0.7))
        elif roll < 0.6:
            events.append(h.associate("zs", g, associated=rng.random() < 0.6))
        elif roll < 0.75:
            kind = "user.suspended" if rng.random() < 0.5 else "user.activated"
            events.append(h.event(kind, user_id=u))
        elif roll < 0.9:
            update = h.user(u, department=rng.choice(["Eng", "Ops", "Sales"]))
            events.append(update | {"type": "user.updated"})
        else:
            events.append(h.event("group.renamed", group_id=g, name=f"group {g} v{len(events)}"))
    return events


def slow_writes(environ: dict[str, Any]) -> None:
    """A fault hook: each write takes 20 ms at the application, as a real one's would."""
    if environ["REQUEST_METHOD"] != "GET":
        time.sleep(0.02)


def test_workers_with_skewed_clocks_never_reconcile_a_key_together(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    pool = SkewedPool(server.url, processes=len(SKEWS), concurrency=2).start()
    try:
        with ScimServer() as scim:
            h = Harness(client, scim, tmp_path, redis_url=server.url)
            h.activate("zs")
            scim.inject(slow_writes)
            events = churn(h, random.Random(13))
            rng = random.Random(5)
            waves = [events[i : i + 150] for i in range(0, len(events), 150)]
            kills = 0
            for n, wave in enumerate(waves):
                h.send(*rng.sample(wave, len(wave)), wait=False)
                time.sleep(0.3)
                # the pool's sweeper moves to another worker, as when its own dies
                client.delete(keys.WQ_SWEEP_LOCK)
                if n in (2, 5):
                    kills += kill_mid_reconcile(pool, client)
            h.wait(timeout=300)
            seen_alive = wait_for(lambda: pool.ready(client), timeout=5)  # heartbeats
            problems = check(predict(events), scim.users(), scim.groups())
            assert problems == [], problems[:20]
    finally:
        pool.stop()
    runs = run_log.runs(client)
    skews = {pool.skew[run.worker.split("@")[0]] for run in runs}
    server.stop()
    together = run_log.overlaps(runs)
    assert together == [], f"{len(together)} of {len(runs)} runs overlapped: {together[:3]}"
    assert skews == set(SKEWS), f"runs only on workers at {skews}"
    assert seen_alive, "a worker's heartbeat was not seen: its clock stamped it"
    assert kills >= 1, "no worker was killed mid-reconcile"


def test_faketime_skews_a_worker_s_clock():
    """The premise: a process under faketime sees its clock off by the offset."""
    shown = subprocess.run(
        [FAKETIME or "faketime", "-m", "--exclude-monotonic", "-f", "+5m", sys.executable, "-c",
         "import time; print(time.time())"],
        capture_output=True, text=True, check=True, env={**os.environ},
    ).stdout  # fmt: skip
    assert 290 < float(shown) - time.time() < 310


@pytest.mark.parametrize("skew", ["-2h", "+2h"])
def test_since_counts_back_from_redis_s_clock_not_the_host_s(harness, skew):
    """``audit --since 30m`` and ``replay --since -30m`` on a host whose clock is two hours off
    see the last 30 minutes as the pool stamped them (Redis's clock), not another window."""
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))

    def skewed(*args: str) -> str:
        done = subprocess.run(
            [FAKETIME or "faketime", "-m", "--exclude-monotonic", "-f", skew, sys.executable,
             "-m", "worker.cli.main", *args],
            env={**os.environ, **h.env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "user_create_provision" in skewed("audit", "--since", "30m", "--app", "zs")
    assert "2 valid journal events" in skewed("replay", "--since", "-30m", "--dry-run")
    # an instant is an instant, whatever the host's clock says
    assert skewed("audit", "--since", "2000-01-01T00:00:00Z", "--app", "zs").count("\n") >= 2


def test_an_import_on_a_skewed_host_is_stamped_with_redis_s_clock(harness, monkeypatch):
    """``import`` run on a host two hours fast: its job and the events it publishes carry the
    pool's time (an event from the future would make the directory's next change look stale).
    In this process, its clock moved on (libfaketime makes the command's sleeps fail)."""
    from tests.test_import_e2e import app_users
    from worker.apps import importer
    from worker.store import codec, scripts

    h = harness
    h.activate("zs")
    app_users(h, {"userName": "ann@example.com"})
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 7200)
    out = h.cli("import", "zs", "--all-new").stdout
    monkeypatch.undo()
    assert "imported 1 users" in out
    now = scripts.redis_now_ms(h.redis) / 1000
    [(job_id, created_ms)] = h.redis.zrange(importer.JOBS, 0, -1, withscores=True)
    job = {codec.text(k): codec.text(v)
           for k, v in h.redis.hgetall(importer.job_key(codec.text(job_id))).items()}  # fmt: skip
    for moment in (created_ms / 1000, *(float(job[f]) for f in ("created", "started", "finished"))):
        assert abs(now - moment) < 60, (now, job)
    [entry] = audit.read(h.redis, name="user_import")
    assert abs(now - entry["time"]) < 60
