"""Ingest throughput: ``provisioner replay FILE`` + the ingest workers, into the projection.

The app the events associate groups and users with is NOT active, so no reconcile and no SCIM
call is involved: this measures validation + publish (``replay``) and the projection
(``lua/ingest.lua`` run by ``prov.ingest`` tasks).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks import common
from benchmarks.common import PoolShape
from worker.cli.status import idle

TARGET_EVENTS_PER_S = 20_000


def replay_command(path: Path, profile: Path | None = None) -> list[str]:
    if profile is not None:
        return [common.python(), "-m", "cProfile", "-o", str(profile), "-m", "worker.cli.main",
                "replay", str(path)]  # fmt: skip
    return [common.python(), "-m", "worker.cli.main", "replay", str(path)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _start_replay(url: str, path: Path, log: Path, profile: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(common.ROOT)}
    with open(log, "w") as out:
        return subprocess.Popen(replay_command(path, profile), env=env, cwd=common.ROOT,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _check_replay(proc: subprocess.Popen, log: Path) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"replay exited with {proc.returncode}: {log.read_text()[-2000:]}")


def _check_applied(client: redis.Redis, n: int) -> dict[str, int]:
    c = common.counters(client)
    handled = c.get("applied", 0) + c.get("stale", 0) + c.get("ignored", 0)
    if c.get("published") != n or handled != n:
        raise RuntimeError(f"expected {n} events published and handled, counters say {c}")
    return c


@dataclass
class PipelineResult:
    events: int
    shape: str
    seconds: float  # replay start -> every event applied
    replay_seconds: float  # replay start -> replay exit (workers ingesting meanwhile)
    replay_cpu: float
    workers_cpu: float
    redis_cpu: float
    counters: dict[str, int]
    replay_rss_mb: float = 0.0  # peak RSS of the replay process
    aof_mb: float = 0.0  # AOF size at the end
    forks: int = 0  # AOF rewrites during the run
    redis_memory_mb: float = 0.0  # used_memory at the end

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def pipeline(path: Path, n: int, workdir: Path, shape: PoolShape) -> PipelineResult:
    """Workers running; time ``replay`` start -> status idle with every event applied."""
    with common.redis_server(workdir, "pipeline") as (server, client):
        pool = common.start_pool(server.url, shape)
        try:
            common.wait_for(lambda: common.workers_ready(client, shape.processes), 60,
                            what="workers")  # fmt: skip
            cpu0, rcpu0 = common.tree_cpu([w.pid for w in pool.workers]), common.redis_cpu(client)
            children0 = _children_cpu()
            log = workdir / "replay-pipeline.log"
            t0 = time.monotonic()
            proc = _start_replay(server.url, path, log)
            t_replay = None
            while True:
                if t_replay is None and proc.poll() is not None:
                    t_replay = time.monotonic()
                    replay_cpu = _children_cpu() - children0
                    replay_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                    _check_replay(proc, log)
                if t_replay is not None and idle(client):
                    t1 = time.monotonic()
                    break
                if time.monotonic() - t0 > 3600:
                    raise TimeoutError("pipeline not idle after an hour")
                time.sleep(0.02)
            workers_cpu = common.tree_cpu([w.pid for w in pool.workers]) - cpu0
            redis_cpu = common.redis_cpu(client) - rcpu0
            counts = _check_applied(client, n)
            aof_mb, forks = common.aof(client)
            memory = common.used_memory_mb(client)
        finally:
            pool.stop()
    return PipelineResult(n, str(shape), t1 - t0, t_replay - t0, replay_cpu, workers_cpu,
                          redis_cpu, counts, replay_rss, aof_mb, forks, memory)  # fmt: skip


@dataclass
class SplitResult:
    events: int
    shape: str
    replay_seconds: float
    replay_cpu: float
    replay_redis_cpu: float
    publish_lua_ms_per_batch: float
    drain_seconds: float  # workers started -> idle (includes worker start-up)
    drain_startup_seconds: float  # workers started -> first batch applied
    drain_steady_seconds: float  # first batch applied -> idle
    drain_steady_events: int
    drain_workers_cpu: float
    drain_redis_cpu: float
    ingest_lua_ms_per_batch: float
    ingest_lua_p50_ms: float
    ingest_lua_max_ms: float
    evalsha_calls: int
    counters: dict[str, int] = field(default_factory=dict)
    commandstats_drain: dict[str, Any] = field(default_factory=dict)

    @property
    def replay_rate(self) -> float:
        return self.events / self.replay_seconds

    @property
    def drain_rate(self) -> float:
        """Events per second once the workers are up (the first applied batch to idle)."""
        return self.drain_steady_events / self.drain_steady_seconds

    @property
    def drain_rate_with_startup(self) -> float:
        return self.events / self.drain_seconds


def split(path: Path, n: int, workdir: Path, shape: PoolShape) -> SplitResult:
    """Publish with no worker running (replay only), then start the workers and time the drain."""
    batches = -(-n // 1000)
    with common.redis_server(workdir, f"split-{shape}") as (server, client):
        client.config_resetstat()
        rcpu0, children0 = common.redis_cpu(client), _children_cpu()
        log = workdir / f"replay-split-{shape}.log"
        t0 = time.monotonic()
        proc = _start_replay(server.url, path, log)
        proc.wait()
        replay_seconds = time.monotonic() - t0
        replay_cpu = _children_cpu() - children0
        _check_replay(proc, log)
        replay_redis_cpu = common.redis_cpu(client) - rcpu0
        stats = common.commandstats(client)
        publish_lua = stats.get("evalsha", {}).get("usec", 0) / 1000 / batches
        common.slow_evals(client)
        client.config_resetstat()

        rcpu0 = common.redis_cpu(client)
        t_start = time.monotonic()
        pool = common.start_pool(server.url, shape)
        try:
            t_first = first_applied = None
            while True:
                applied = int(client.hget("prov:counters", "applied") or 0)
                if t_first is None and applied > 0:
                    t_first, first_applied = time.monotonic(), applied
                if t_first is not None and idle(client):
                    t_end = time.monotonic()
                    break
                if time.monotonic() - t_start > 3600:
                    raise TimeoutError("drain not idle after an hour")
                time.sleep(0.01)
            workers_cpu = common.tree_cpu([w.pid for w in pool.workers])
        finally:
            pool.stop()
        drain_redis_cpu = common.redis_cpu(client) - rcpu0
        counts = _check_applied(client, n)
        stats = common.commandstats(client)
        durations = common.slow_evals(client)
    evalsha = stats.get("evalsha", {})
    handled = counts.get("applied", 0) + counts.get("stale", 0) + counts.get("ignored", 0)
    return SplitResult(
        events=n, shape=str(shape), replay_seconds=replay_seconds, replay_cpu=replay_cpu,
        replay_redis_cpu=replay_redis_cpu, publish_lua_ms_per_batch=publish_lua,
        drain_seconds=t_end - t_start, drain_startup_seconds=t_first - t_start,
        drain_steady_seconds=t_end - t_first, drain_steady_events=handled - first_applied,
        drain_workers_cpu=workers_cpu, drain_redis_cpu=drain_redis_cpu,
        ingest_lua_ms_per_batch=evalsha.get("usec", 0) / 1000 / batches,
        ingest_lua_p50_ms=common.percentile(durations, 0.5),
        ingest_lua_max_ms=max(durations, default=0.0), evalsha_calls=int(evalsha.get("calls", 0)),
        counters=counts,
        commandstats_drain={k: v for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]},
    )  # fmt: skip


@dataclass
class ProfileResult:
    seconds: float
    top: list[tuple[str, int, float, float]]  # function, calls, tottime, cumtime
    groups: dict[str, float]  # phase -> cumulative seconds


def profile_replay(
    path: Path, n: int, workdir: Path, shape: PoolShape | None = None
) -> ProfileResult:
    """``python -m cProfile -m worker.cli.main replay FILE``: where the replay's time goes, with no
    worker running, or with a pool of ``shape`` ingesting meanwhile."""
    import pstats

    prof = workdir / "replay.prof"
    with common.redis_server(workdir, "profile") as (server, client):
        pool = common.start_pool(server.url, shape) if shape else None
        try:
            if pool is not None:
                common.wait_for(lambda: common.workers_ready(client, shape.processes), 60,
                                what="workers")  # fmt: skip
            log = workdir / "replay-profile.log"
            t0 = time.monotonic()
            proc = _start_replay(server.url, path, log, profile=prof)
            proc.wait()
            seconds = time.monotonic() - t0
            _check_replay(proc, log)
        finally:
            if pool is not None:
                pool.stop()
    stats = pstats.Stats(str(prof))
    rows = []
    cumulative: dict[str, float] = {}
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(common.ROOT) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        label = f"{short}:{line}({name})"
        rows.append((label, calls, tottime, cumtime))
        cumulative[label] = max(cumulative.get(label, 0.0), cumtime)
    rows.sort(key=lambda r: -r[2])

    def cum(*fragments: str) -> float:
        return max((v for k, v in cumulative.items() if all(f in k for f in fragments)),
                   default=0.0)  # fmt: skip

    total = cum("worker/cli/main.py", "(main)")
    groups = {
        "read_events (read + decode + validate)": cum("producers/replay.py", "(read_events)"),
        "  json.loads": cum("json/__init__.py", "(loads)"),
        "  pydantic validate_python": cum("type_adapter.py", "(validate_python)"),
        "publish (all batches)": cum("worker/queue/publish.py", "(publish)"),
        "  wire(): dump_json + version": cum("worker/queue/publish.py", "(wire)"),
        "  EVALSHA store_batch (round trip)": cum("redis/commands/core.py", "(evalsha)"),
        "  wake-up messages (built for store_batch)": cum(
            "worker/queue/celery_app.py", "(ingest_message)"
        ),
        "interpreter start + imports (outside main)": max(0.0, seconds - total),
    }
    return ProfileResult(seconds, rows[:15], groups)
