"""Issue 14: the pool scaled out, and the cost of its metrics.

**Scale-out.** For each pool size P (1, 2, 4, 8 ``provisioner worker`` processes of C threads
each; every process has its own Redis and HTTP connections, as separate hosts would) a fresh
Redis, a scim2-server in a process of its own (``benchmarks.scimserver``, so that its CPU is
read apart) and the directory of ``benchmarks.provisioning`` (U users in U/50 groups, 3 groups
per user) published at once with ``provisioner replay`` for an app activated with the rate
limit lifted (``--rate 10000``). From the replay's start to ``status`` idle: the SCIM calls the
server received, the write calls (POST, PUT, PATCH, DELETE) per second and the reconcile keys
(users + groups) per second from the first write to the last, and the CPU of the workers, of
Redis, of the server and of the rest (the replay, the benchmark's polls), read from /proc.

Then, in the same pool, M users are associated with a second app behind an exact token bucket
of R requests/s, burst B (``ScimServer(rate_limit=(R, B))``, the app activated with ``--rate R
--burst B``): the 429s as a share of the calls, and the share of R used, (accepted − B) / (last
accepted − first accepted) / R, as ``benchmarks.pacing`` reports them.

**Metrics overhead.** The unthrottled drain above, pool P x C, run with ``PROVISIONER_METRICS``
on and off alternately (on, off, on, off, ...), each run with its own Redis and server: the
workers' CPU per SCIM call of each, their means and the ratio (target ≤ 1.03). The metrics
listener is off in both (``PROVISIONER_METRICS_PORT=0``): what is compared is the counting,
which every SCIM call, reconcile and batch pays; a scrape costs per scrape, not per call.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, provisioning
from benchmarks.common import PoolShape
from benchmarks.report import table
from benchmarks.scimserver import ScimProcess
from benchmarks.workload import BASE_EPOCH, Clock

APP, LIMITED = provisioning.APP, "rl"
SIZES = (1, 2, 4, 8)
THREADS = 2  # per worker process
FULL_USERS, QUICK_USERS = 2000, 500  # the unthrottled backlog
FULL_LIMITED, QUICK_LIMITED = 300, 100  # users of the rate-limited app
RATE, BURST = 50.0, 5
OVERHEAD_POOL = PoolShape(2, THREADS)
FULL_ROUNDS, QUICK_ROUNDS = 3, 2  # on/off pairs of the metrics overhead
TARGET_OVERHEAD = 1.03
TARGET_REFUSED = 0.01
WRITES = ("POST", "PUT", "PATCH", "DELETE")
Log = Callable[[str], None]


@dataclass
class Drain:
    """The unthrottled backlog drained by one pool."""

    shape: str
    metrics: bool
    users: int
    keys: int  # reconcile keys of the directory: users + groups
    arrivals: list[tuple[float, str, str]]  # (s after the replay started, method, path)
    seconds: float  # replay started -> idle
    cpu: dict[str, float]  # "workers", "redis", "scim", "other" -> CPU s over the drain
    samples: list[Sample] = field(default_factory=list)  # CPU so far, every SAMPLE_EVERY s
    problems: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    @property
    def write_times(self) -> list[float]:
        return [t for t, m, _ in self.arrivals if m in WRITES]

    @property
    def writes(self) -> int:
        return len(self.write_times)

    @property
    def span(self) -> float:
        return common.span(self.write_times)

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.span if self.span else 0.0

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.span if self.span else 0.0

    def per_call_ms(self, part: str) -> float:
        return self.cpu[part] / self.calls * 1000 if self.calls else 0.0

    @property
    def cores_busy(self) -> float:
        """CPU of every process of the run over its wall time: cores kept busy."""
        return sum(self.cpu.values()) / self.seconds if self.seconds else 0.0

    @property
    def steady(self) -> Steady | None:
        """The samples around the bulk of the writes (the 10th to the 80th percentile: past
        the ramp-up while events are published, before the groups' tail)."""
        times = self.write_times
        if len(times) < 20:
            return None
        lo, hi = times[len(times) // 10], times[len(times) * 8 // 10]
        inside = [s for s in self.samples if lo <= s.t <= hi]
        if len(inside) < 2 or inside[-1].t - inside[0].t < 1.0:
            return None
        a, b = inside[0], inside[-1]
        writes = sum(1 for t in times if a.t <= t <= b.t)
        calls = sum(1 for t, _, _ in self.arrivals if a.t <= t <= b.t)
        return Steady(b.t - a.t, writes, calls, b.minus(a), b.machine - a.machine)


@dataclass(frozen=True)
class Sample:
    """CPU seconds used so far, ``t`` s after the replay started."""

    t: float
    workers: float
    redis: float
    scim: float
    bench: float  # this process: its polls and the sampling
    machine: float  # every process of the machine, the benchmark's or not (/proc/stat)

    def minus(self, other: Sample) -> dict[str, float]:
        return {"workers": self.workers - other.workers, "redis": self.redis - other.redis,
                "scim": self.scim - other.scim, "bench": self.bench - other.bench}  # fmt: skip


@dataclass(frozen=True)
class Steady:
    """The bulk of a drain: its write rate and the cores each part kept busy meanwhile."""

    seconds: float
    writes: int
    calls: int
    cpu: dict[str, float]  # CPU s over the window, as ``Sample.minus``
    machine: float  # CPU s of the whole machine over the window

    @property
    def machine_cores(self) -> float:
        return self.machine / self.seconds

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds

    def cores(self, part: str | None = None) -> float:
        return (self.cpu[part] if part else sum(self.cpu.values())) / self.seconds

    def per_call_ms(self, part: str) -> float:
        return self.cpu[part] / self.calls * 1000 if self.calls else 0.0


SAMPLE_EVERY = 0.25


class _Sampler(threading.Thread):
    """Reads the CPU of the workers, Redis, the server and this process every SAMPLE_EVERY s."""

    def __init__(self, roots: list[int], client: Any, scim: ScimProcess, t0: float) -> None:
        super().__init__(daemon=True)
        self.roots, self.client, self.scim, self.t0 = roots, client, scim, t0
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def sample(self) -> Sample:
        return Sample(time.monotonic() - self.t0, common.tree_cpu(self.roots),
                      common.redis_cpu(self.client), self.scim.cpu(), time.process_time(),
                      machine_cpu())  # fmt: skip

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            self.samples.append(self.sample())

    def stop(self) -> list[Sample]:
        self.done.set()
        self.join()
        return self.samples


def machine_cpu() -> float:
    """CPU seconds the machine's cores spent busy so far (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Limited(common.GatewayArrivals):
    """The rate-limited app's users, provisioned by the same pool."""

    users: int
    rate: float
    burst: int
    arrivals: list[tuple[float, bool, str]]  # (s after the publish, accepted, request)

    @property
    def accepted(self) -> list[float]:
        return [t for t, ok, _ in self.arrivals if ok]

    @property
    def span(self) -> float:
        return common.span(self.accepted)

    @property
    def share(self) -> float:
        return common.limit_share(len(self.accepted), self.burst, self.span, self.rate)

    @property
    def busiest_second(self) -> int:
        """The most requests sent (accepted or not) in any 1-second window."""
        return common.busiest_second(t for t, _, _ in self.arrivals)


@dataclass
class SizeResult:
    processes: int
    threads: int
    drain: Drain
    limited: Limited


@dataclass
class OverheadResult:
    shape: str
    users: int
    runs: list[Drain]  # in the order run
    counting_us: dict[bool, float] = field(default_factory=dict)  # on/off -> µs per SCIM call

    def of(self, on: bool) -> list[Drain]:
        return [r for r in self.runs if r.metrics is on]

    def mean_ms(self, on: bool) -> float:
        return statistics.mean(r.per_call_ms("workers") for r in self.of(on))

    @property
    def ratio(self) -> float:
        return self.mean_ms(True) / self.mean_ms(False)

    @property
    def counting_share(self) -> float:
        """The counting's own CPU (on − off) against the workers' CPU per call with it off."""
        if not self.counting_us:
            return 0.0
        return (self.counting_us[True] - self.counting_us[False]) / (self.mean_ms(False) * 1000)


# -- workloads ---------------------------------------------------------------------------------
def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    return path


def directory_file(workdir: Path, users: int) -> tuple[Path, provisioning.Directory]:
    d = provisioning.directory(users)
    return _write(workdir / f"scaleout-{users}.jsonl", d.events), d


def limited_file(workdir: Path, users: int) -> Path:
    """``app.user_associated`` of the first ``users`` users of the directory with ``LIMITED``."""
    clock = Clock(BASE_EPOCH + 86_400)  # after the directory's events
    events = [{"id": f"evt-rl-{i}", "type": "app.user_associated", "occurred_at": clock.next(),
               "data": {"app_id": LIMITED, "user_id": f"u-{i:05d}"}} for i in range(users)]  # fmt: skip
    return _write(workdir / f"scaleout-limited-{users}.jsonl", events)


# -- one pool ----------------------------------------------------------------------------------
def drain(url: str, client: Any, pool: Any, scim: ScimProcess, path: Path,
          d: provisioning.Directory, shape: PoolShape, metrics: bool) -> Drain:  # fmt: skip
    """Publish the directory at once for the active app ``APP`` and wait for idle."""
    from worker.cli.status import snapshot

    roots = [w.pid for w in pool.workers]
    scim.arrivals()  # the activation's
    workers0, redis0, scim0 = (common.tree_cpu(roots), common.redis_cpu(client), scim.cpu())
    children0, own0 = os.times(), time.process_time()
    gc.disable()
    t0 = time.monotonic()
    sampler = _Sampler(roots, client, scim, t0)
    sampler.start()
    try:
        common.cli(url, "replay", str(path))
        t_idle = common.settled(client, 600, interval=0.25)
    finally:
        samples = sampler.stop()
        gc.enable()
    children = os.times()
    cpu = {
        "workers": common.tree_cpu(roots) - workers0,
        "redis": common.redis_cpu(client) - redis0,
        "scim": scim.cpu() - scim0,
        "other": _children_cpu(children) - _children_cpu(children0) + time.process_time() - own0,
    }
    arrivals = [(t - t0, m, p) for t, m, p in scim.arrivals()]
    state = snapshot(client)
    problems = [f"app {a}: {len(s['parked'])} parked, {len(s['held'])} held"
                for a, s in state["apps"].items() if s["parked"] or s["held"]]  # fmt: skip
    stored = scim.stored()
    if stored.get("User", 0) != len(d.users) or stored.get("Group", 0) != len(d.members):
        problems.append(
            f"the app holds {stored}, not {len(d.users)} users, {len(d.members)} groups"
        )
    if problems:  # kept for a look (``--keep``)
        (path.parent / f"arrivals-{shape}-{'on' if metrics else 'off'}.json").write_text(
            json.dumps(arrivals)
        )
    return Drain(shape=str(shape), metrics=metrics, users=len(d.users),
                 keys=len(d.users) + len(d.members), arrivals=arrivals, seconds=t_idle - t0,
                 cpu=cpu, samples=samples, problems=problems)  # fmt: skip


def _children_cpu(times: os.times_result) -> float:
    """CPU of this process's finished children (the replays, the CLI's commands)."""
    return times.children_user + times.children_system


def limited(url: str, client: Any, workdir: Path, processes: int, users: int) -> Limited:
    """Activate ``LIMITED`` behind the token bucket, then associate ``users`` users with it."""
    from tests.support.scimserver import ScimServer

    with ScimServer(rate_limit=(RATE, BURST)) as gate:
        bucket = gate.bucket
        assert bucket is not None
        common.activate_when_ready(url, client, processes, gate, workdir, LIMITED, "--rate",
                                   f"{RATE:g}", "--burst", str(BURST))  # fmt: skip
        common.settled(client, 60)
        time.sleep(BURST / RATE + 0.5)  # the activation's calls went through the bucket
        bucket.clear()
        gc.disable()  # a collection would stall the gateway and bunch its arrivals
        try:
            t0 = time.monotonic()
            common.cli(url, "replay", str(limited_file(workdir, users)))
            common.settled(client, 120 + 5 * users / RATE, interval=0.25)
        finally:
            gc.enable()
        arrivals = [(t - t0, ok, r) for t, ok, r in bucket.arrivals]
    return Limited(users=users, rate=RATE, burst=BURST, arrivals=arrivals)


def one_pool(workdir: Path, shape: PoolShape, users: int, limited_users: int, metrics: bool = True,
             log: Log = print) -> tuple[Drain, Limited | None]:  # fmt: skip
    """A fresh Redis, server and pool of ``shape``: the drain, then (``limited_users`` > 0) the
    rate-limited app."""
    path, d = directory_file(workdir, users)
    env = {"PROVISIONER_METRICS_PORT": "0", "PROVISIONER_METRICS": "1" if metrics else "0"}
    name = f"scaleout-{shape}-{'on' if metrics else 'off'}"
    with common.redis_server(workdir, name) as (server, client), ScimProcess.start() as scim:
        pool = common.start_pool(server.url, shape, env)
        try:
            common.activate_when_ready(server.url, client, shape.processes, scim, workdir, APP,
                                       "--rate", "10000")  # fmt: skip
            common.settled(client, 60)
            result = drain(server.url, client, pool, scim, path, d, shape, metrics)
            log(f"  pool {shape}, metrics {'on' if metrics else 'off'}: {result.calls:,} calls, "
                f"{result.writes_per_s:,.0f} writes/s, workers "
                f"{result.per_call_ms('workers'):.2f} ms CPU per call, {result.cores_busy:.2f} "
                f"cores busy, {result.seconds:.1f} s"
                + (f"; PROBLEMS {result.problems}" if result.problems else ""))  # fmt: skip
            rl = None
            if limited_users:
                rl = limited(server.url, client, workdir, shape.processes, limited_users)
                log(f"  pool {shape}, app at {RATE:g}/s burst {BURST}: {rl.calls:,} calls, "
                    f"{rl.refused} refused ({rl.refused_share:.2%}), {rl.share:.3f} of the "
                    "limit")  # fmt: skip
        finally:
            pool.stop()
    return result, rl


def scaleout(workdir: Path, users: int, limited_users: int, sizes: tuple[int, ...] = SIZES,
             log: Log = print) -> list[SizeResult]:  # fmt: skip
    results = []
    for processes in sizes:
        shape = PoolShape(processes, THREADS)
        log(f"scaleout: pool {shape}, {users:,} users unthrottled, then {limited_users:,} at "
            f"{RATE:g}/s ...")  # fmt: skip
        d, rl = one_pool(workdir, shape, users, limited_users, log=log)
        assert rl is not None
        results.append(SizeResult(processes, THREADS, d, rl))
    return results


def overhead(workdir: Path, users: int, rounds: int, shape: PoolShape = OVERHEAD_POOL,
             log: Log = print) -> OverheadResult:  # fmt: skip
    runs = []
    for i in range(rounds):
        for on in (True, False):
            log(f"metrics overhead: round {i + 1} of {rounds}, metrics {'on' if on else 'off'}, "
                f"pool {shape}, {users:,} users ...")  # fmt: skip
            runs.append(one_pool(workdir, shape, users, 0, metrics=on, log=log)[0])
    counting = {on: counting_cost(on) for on in (True, False)}
    log(f"  the counting alone: {counting[True]:.1f} µs per SCIM call on, {counting[False]:.1f} "
        "off")  # fmt: skip
    return OverheadResult(str(shape), users, runs, counting)


# -- the counting alone, timed in a process of its own -------------------------------------------
COUNTING_CALLS = 20_000
REQUEST = type("Request", (), {"method": "POST", "status": 201, "elapsed": 0.004})()
CAUSES = [f"evt-{i} 01767323046000000 1767323050000" for i in range(3)]


def counting_loop(calls: int) -> float:
    """CPU µs per SCIM call of what the drain counts, in the proportions of a user's
    reconcile: two requests (a lookup, a create), one reconcile with its duration, the lag
    after its three causes, and a 1,000-event batch's ``applied`` per 250 reconciles."""
    from worker.queue import metrics

    metrics.enable_multiprocess()
    record = metrics.scim_recorder(APP)
    started = time.process_time()
    for i in range(calls // 2):
        record(REQUEST)
        record(REQUEST)
        metrics.reconciled(APP, "done", 0.01)
        metrics.observe_lag(APP, metrics.parse_causes(CAUSES), time.time())
        if i % 250 == 0:
            metrics.applied(1000, 0, 0)
    return (time.process_time() - started) / calls * 1e6


def counting_cost(on: bool, calls: int = COUNTING_CALLS) -> float:
    """``counting_loop`` in a fresh process with ``PROVISIONER_METRICS`` on or off."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(common.ROOT), "PROVISIONER_METRICS": "1" if on else "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([common.python(), "-m", "benchmarks.scaleout", "counting", str(calls)],
                          cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=True)  # fmt: skip
    return float(done.stdout.strip())


# -- rendering ---------------------------------------------------------------------------------
def _cores() -> int:
    return os.cpu_count() or 1


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def scaleout_summary(results: list[SizeResult]) -> list[list[str]]:
    rows = []
    for r in results:
        rl = r.limited
        rows.append([
            f"scale-out, pool {r.processes}x{r.threads}, app at {rl.rate:g}/s burst {rl.burst}: "
            "429s / calls", f"**{rl.refused_share:.2%}** ({rl.refused} / {rl.calls:,}); "
            f"{rl.share:.3f} of the limit", f"< {TARGET_REFUSED:.0%}",
            f"{rl.refused_share / TARGET_REFUSED:.3f}", _met(rl.refused_share < TARGET_REFUSED),
        ])  # fmt: skip
    return rows


def overhead_summary(o: OverheadResult) -> list[list[str]]:
    rows = [[
        f"metrics overhead, pool {o.shape}: worker CPU per SCIM call, on / off",
        f"**{o.ratio:.3f}** ({o.mean_ms(True):.2f} / {o.mean_ms(False):.2f} ms)",
        f"≤ {TARGET_OVERHEAD}", f"{o.ratio / TARGET_OVERHEAD:.3f}", _met(o.ratio <= TARGET_OVERHEAD),
    ]]  # fmt: skip
    if o.counting_us:
        share = 1 + o.counting_share
        rows.append([
            "metrics overhead: the counting alone (µs per SCIM call, on − off) over the workers' "
            "CPU per call with metrics off, + 1",
            f"**{share:.3f}** ({o.counting_us[True] - o.counting_us[False]:.1f} µs / "
            f"{o.mean_ms(False) * 1000:,.0f} µs)", f"≤ {TARGET_OVERHEAD}",
            f"{share / TARGET_OVERHEAD:.3f}", _met(share <= TARGET_OVERHEAD),
        ])  # fmt: skip
    return rows


def scaleout_details(results: list[SizeResult]) -> list[str]:
    first = results[0].drain
    return [
        "### Scale-out (issue 14)",
        "",
        f"Per pool size, {first.users:,} users in {first.keys - first.users:,} groups "
        f"({first.keys:,} reconcile keys) published at once for an app activated with the rate "
        "limit lifted (`--rate 10000`), against a scim2-server in a process of its own "
        "(`benchmarks/scimserver.py`); each pool is P `provisioner worker` processes of "
        f"{THREADS} threads (each its own Redis and HTTP connections), a fresh Redis and server "
        "per size. *First → last write*: the writes (and keys) over the span from the first SCIM "
        "write to the last, CPU from /proc over the replay's start to idle, per SCIM call (reads "
        "and writes). *Steady*: the window from the 10th to the 80th percentile of the writes "
        f"(past the ramp-up, before the groups' tail), CPU sampled every {SAMPLE_EVERY:g} s: the "
        f"cores each part kept busy there, and (machine) the cores busy on the whole machine from "
        "/proc/stat, the work of other users of this shared machine included. The machine has "
        f"{_cores()} cores.",
        "",
        table(
            [
                "pool",
                "calls (writes)",
                "first → last write: writes/s, keys/s",
                "workers' CPU ms / call",
                "Redis CPU ms / call (total s)",
                "scim2-server CPU ms / call",
                "steady writes/s (× 1 process)",
                "steady cores busy: workers + Redis + scim2-server + benchmark = all (machine)",
                "wall s",
                "problems",
            ],
            [_drain_row(r, first) for r in results],
        ),  # fmt: skip
        "",
        f"In the same pool, then: {results[0].limited.users:,} users associated with a second app "
        f"behind an exact token bucket of {RATE:g} requests/s, burst {BURST} (429 with "
        f"`Retry-After: 1` when empty; the app activated with `--rate {RATE:g} --burst {BURST}`). "
        "Share of the limit: (accepted − burst) / (last accepted − first accepted) / rate.",
        "",
        table(
            [
                "pool",
                "users",
                "calls",
                "429s (share)",
                "accepted",
                "share of the limit",
                "most sent in any 1 s",
            ],
            [_limited_row(r) for r in results],
        ),  # fmt: skip
        "",
        *bend(results),
    ]


def _drain_row(r: SizeResult, first: Drain) -> list[str]:
    d, st, base = r.drain, r.drain.steady, first.steady
    scale = st.writes_per_s / base.writes_per_s if st and base else 0.0
    cores = (f"{st.cores('workers'):.2f} + {st.cores('redis'):.2f} + {st.cores('scim'):.2f} + "
             f"{st.cores('bench'):.2f} = **{st.cores():.2f}** ({st.machine_cores:.2f})"
             if st else "-")  # fmt: skip
    return [
        f"{r.processes}x{r.threads}", f"{d.calls:,} ({d.writes:,})",
        f"{d.writes_per_s:,.0f}, {d.keys_per_s:,.0f}", f"{d.per_call_ms('workers'):.2f}",
        f"{d.per_call_ms('redis'):.2f} ({d.cpu['redis']:.1f})", f"{d.per_call_ms('scim'):.2f}",
        f"**{st.writes_per_s:,.0f}** ({scale:.2f})" if st else "-", cores, f"{d.seconds:.1f}",
        "none" if not d.problems else "; ".join(d.problems),
    ]  # fmt: skip


def _limited_row(r: SizeResult) -> list[str]:
    rl = r.limited
    return [f"{r.processes}x{r.threads}", f"{rl.users:,}", f"{rl.calls:,}",
            f"{rl.refused} ({rl.refused_share:.2%})", f"{len(rl.accepted):,} over {rl.span:.1f} s",
            f"**{rl.share:.3f}**", f"{rl.busiest_second} (bucket: ≤ {rl.rate + rl.burst:g})"]  # fmt: skip


def bend(results: list[SizeResult]) -> list[str]:
    """Per step of the pool: the steady throughput's gain, and what was saturated."""
    lines = []
    for prev, r in zip(results, results[1:], strict=False):
        a, b = prev.drain.steady, r.drain.steady
        if a is None or b is None:
            continue
        lines.append(
            f"{prev.processes} → {r.processes} processes: steady writes/s "
            f"×{b.writes_per_s / a.writes_per_s:.2f}; cores busy {a.cores():.2f} → "
            f"{b.cores():.2f} of {_cores()} (the machine's, others' work included: "
            f"{a.machine_cores:.2f} → {b.machine_cores:.2f}); scim2-server {a.cores('scim'):.0%} → "
            f"{b.cores('scim'):.0%} of a core; Redis {a.cores('redis'):.0%} → "
            f"{b.cores('redis'):.0%}; workers' CPU per call {a.per_call_ms('workers'):.2f} → "
            f"{b.per_call_ms('workers'):.2f} ms."
        )
    best = max(results, key=lambda r: r.drain.steady.writes_per_s if r.drain.steady else 0.0)
    return [f"Highest steady throughput: pool {best.processes}x{best.threads}. " + " ".join(lines)]


def overhead_details(o: OverheadResult) -> list[str]:
    rows = [[str(i), "on" if r.metrics else "off", f"{r.calls:,}", f"{r.writes_per_s:,.0f}",
             f"{r.cpu['workers']:.1f}", f"**{r.per_call_ms('workers'):.3f}**",
             f"{r.per_call_ms('redis'):.3f}", f"{r.seconds:.1f}",
             "none" if not r.problems else "; ".join(r.problems)]
            for i, r in enumerate(o.runs, 1)]  # fmt: skip
    on, off = ([r.per_call_ms("workers") for r in o.of(flag)] for flag in (True, False))
    return [
        "### Metrics overhead (issue 14)",
        "",
        f"The unthrottled drain of the scale-out ({o.users:,} users), pool {o.shape}, with "
        "`PROVISIONER_METRICS` on and off alternately, each run with a fresh Redis, server and "
        "pool; the listener off in both (`PROVISIONER_METRICS_PORT=0`), so what differs is the "
        "counting (SCIM requests, reconciles, lag, batches). Workers' CPU from /proc over the "
        "replay's start to idle, per SCIM call.",
        "",
        table(["run", "metrics", "calls", "writes/s", "workers' CPU s",
               "workers' CPU ms / call", "Redis CPU ms / call", "wall s", "problems"], rows),
        "",
        f"Mean workers' CPU per SCIM call: on {statistics.mean(on):.3f} ms (runs "
        f"{', '.join(f'{x:.3f}' for x in on)}), off {statistics.mean(off):.3f} ms (runs "
        f"{', '.join(f'{x:.3f}' for x in off)}); on / off **{o.ratio:.3f}** (target ≤ "
        f"{TARGET_OVERHEAD}); the runs of one setting spread over "
        f"{_spread(on):.1%} (on) and {_spread(off):.1%} (off) of their mean.",
        *_counting(o),
    ]  # fmt: skip


def _counting(o: OverheadResult) -> list[str]:
    if not o.counting_us:
        return []
    on, off = o.counting_us[True], o.counting_us[False]
    return [
        "",
        f"The counting alone, timed in a process of its own (`python -m benchmarks.scaleout "
        f"counting {COUNTING_CALLS}`: per SCIM call, what a user's reconcile counts, in "
        "multiprocess mode as a worker counts): "
        f"{on:.1f} µs of CPU with metrics on, {off:.1f} µs off (the causes are parsed either "
        f"way, for the audit): {on - off:.1f} µs per call, **{o.counting_share:.2%}** of the "
        f"workers' {o.mean_ms(False):.2f} ms per call with metrics off. Unlike the end-to-end "
        "runs, this does not depend on the machine's other load.",
    ]


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.mean(values) if values else 0.0


if __name__ == "__main__":  # ``counting CALLS``: counting_loop's µs per SCIM call, printed
    import sys

    if sys.argv[1:2] != ["counting"]:
        raise SystemExit("usage: python -m benchmarks.scaleout counting CALLS")
    print(f"{counting_loop(int(sys.argv[2])):.3f}")
