"""Issue 3: the webhook receiver's throughput, and the latency from its 202 to the SCIM write.

A real receiver process (``provisioner webhook --workers 2``, uvicorn) on an embedded Redis
(AOF on, ``appendfsync everysec``), signed requests (``X-Provisioner-Signature``):

- throughput: ``benchmarks.loadgen`` in a process of its own (raw keep-alive connections, its
  CPU measured apart), ``concurrency`` requests in flight, each a fresh body of unique event
  ids (``user.updated``), signed when sent; only 202s count. No worker runs during these phases: this measures the receiver
  (validate, sign check, journal, enqueue) and Redis, not the ingest that follows;
- latency: an active app (profile ``zscaler``, rate limit lifted) on a real scim2-server, a
  worker pool, users already provisioned; then one request at a time, a ``user.updated``
  changing a user's department, from the 202's arrival at the client to the arrival of that
  user's PUT at the SCIM server (both clocks are this process's ``time.monotonic``).
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks import common
from benchmarks.common import PoolShape
from benchmarks.report import table
from benchmarks.workload import Clock
from producers import signing

TARGET_REQUESTS_PER_S = 2_000  # single-event requests
TARGET_EVENTS_PER_S = 20_000  # 1,000-event requests
TARGET_P99_MS = 250.0
SECRET = b"bench-webhook-secret"
APP = "zs"
RECEIVER_WORKERS = 2
LATENCY_USERS = 50


# -- the receiver ------------------------------------------------------------------------------
@contextmanager
def receiver(redis_url: str, log: Path, workers: int = RECEIVER_WORKERS) -> Iterator[
    tuple[subprocess.Popen[bytes], str]
]:  # fmt: skip
    """``provisioner webhook --port P --workers N``, until its /healthz answers; stopped after."""
    from worker.devstack.redis_server import free_port

    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(common.ROOT),
           "PROVISIONER_WEBHOOK_SECRET": SECRET.decode()}  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [common.python(), "-m", "worker.cli.main", "webhook", "--port", str(port),
             "--workers", str(workers)],
            env=env, cwd=common.ROOT, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_for(lambda: _healthy(url, proc), 60, 0.1, "the webhook receiver")
        yield proc, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the webhook receiver exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json",
            signing.HEADER: signing.sign(SECRET, body, int(time.time()))}  # fmt: skip


# -- throughput --------------------------------------------------------------------------------
_EVENT = ('{"id":"wh-%s-%d","type":"user.updated","occurred_at":"2026-11-28T12:00:00.000Z",'
          '"data":{"user":{"id":"wu-%d","username":"ada.lovelace.%d@example.com",'
          '"email":"ada.lovelace.%d@example.com","firstname":"Ada","lastname":"Lovelace",'
          '"displayname":"Ada Lovelace","employee_id":"E%07d","department":"Engineering",'
          '"state":"active"}}}')  # fmt: skip


def body(prefix: str, first: int, count: int) -> bytes:
    """One event (``count`` 1, a JSON object) or an array of ``count`` events, ids unique."""
    events = [_EVENT % (prefix, n, n % 10_000, n, n, n) for n in range(first, first + count)]
    return (events[0] if count == 1 else "[" + ",".join(events) + "]").encode()


@dataclass
class LoadResult:
    workers: int  # receiver processes
    events_per_request: int
    concurrency: int
    seconds: float
    statuses: Counter  # HTTP status (0: transport error) -> requests
    accepted: int  # events answered 202
    journaled: int  # events added to the journal meanwhile (a cross-check)
    request_ms: list[float]  # send -> response, 202s only
    sequential_ms: float  # p50 of requests sent one at a time on one keep-alive connection
    client_cpu: float  # CPU s of this process (the load generator) during the phase
    receiver_cpu: float  # CPU s of the receiver's processes (uvicorn and its workers)
    redis_cpu: float

    @property
    def requests(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def events_rate(self) -> float:
        return self.accepted / self.seconds

    @property
    def requests_rate(self) -> float:
        return self.requests / self.seconds


def _load(url: str, prefix: str, per_request: int, seconds: float, concurrency: int,
          secret_file: Path) -> tuple[float, Counter, int, list[float], float]:  # fmt: skip
    """Run ``benchmarks.loadgen`` in its own process; its figures and its CPU seconds."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [common.python(), "-m", "benchmarks.loadgen", url, prefix, str(per_request),
         str(seconds), str(concurrency), str(secret_file)],
        cwd=common.ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures = json.loads(out)
    statuses = Counter({int(k): v for k, v in figures["statuses"].items()})
    return figures["seconds"], statuses, figures["accepted"], figures["latencies_ms"], cpu


def throughput(redis_url: str, client: redis.Redis, log: Path, workers: int, prefix: str,
               per_request: int, seconds: float, concurrency: int) -> LoadResult:  # fmt: skip
    """One phase against a fresh receiver of ``workers`` processes."""
    secret_file = log.parent / "webhook.secret"
    secret_file.write_bytes(SECRET)
    with receiver(redis_url, log, workers) as (proc, url):
        return _throughput(url, proc, client, workers, prefix, per_request, seconds, concurrency,
                           secret_file)  # fmt: skip


def _throughput(url: str, proc: subprocess.Popen[bytes], client: redis.Redis, workers: int,
                prefix: str, per_request: int, seconds: float, concurrency: int,
                secret_file: Path) -> LoadResult:  # fmt: skip
    from worker.store import keys

    _load(url, f"{prefix}-warm", per_request, 1.0, concurrency, secret_file)  # caches
    journal0 = client.xlen(keys.JOURNAL)
    cpu0, rcpu0 = common.tree_cpu([proc.pid]), common.redis_cpu(client)
    elapsed, statuses, accepted, latencies, client_cpu = _load(
        url, prefix, per_request, seconds, concurrency, secret_file
    )
    cpu1, rcpu1 = common.tree_cpu([proc.pid]), common.redis_cpu(client)
    journaled = client.xlen(keys.JOURNAL) - journal0
    return LoadResult(
        workers=workers, events_per_request=per_request, concurrency=concurrency, seconds=elapsed,
        statuses=statuses, accepted=accepted, journaled=journaled, request_ms=latencies,
        sequential_ms=sequential(url, f"{prefix}-seq", per_request), client_cpu=client_cpu,
        receiver_cpu=cpu1 - cpu0, redis_cpu=rcpu1 - rcpu0,
    )  # fmt: skip


def sequential(url: str, prefix: str, per_request: int, n: int = 50) -> float:
    """p50 ms of ``n`` requests sent one at a time on one keep-alive connection."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(n):
            content = body(prefix, i * per_request, per_request)
            sent = time.perf_counter()
            http.post("/v1/events", content=content, headers=headers(content)).raise_for_status()
            times.append((time.perf_counter() - sent) * 1000)
    return common.percentile(times, 0.5)


# -- latency -----------------------------------------------------------------------------------
@dataclass
class LatencyResult:
    shape: str
    users: int
    interval_ms: float
    ms: list[float] = field(default_factory=list)  # 202 received -> the user's PUT arrives
    send_ms: list[float] = field(default_factory=list)  # request sent -> the PUT arrives
    answer_ms: list[float] = field(default_factory=list)  # request sent -> 202 received
    missed: int = 0  # 202s whose write did not arrive within 10 s
    methods: Counter = field(default_factory=Counter)

    def p(self, q: float) -> float:
        return common.percentile(self.ms, q)


def _user(uid: str, department: str) -> dict[str, Any]:
    n = uid.removeprefix("lat-")
    return {"id": uid, "username": f"lat.{n}@example.com", "email": f"lat.{n}@example.com",
            "firstname": "Grace", "lastname": "Hopper", "displayname": f"Grace Hopper {n}",
            "department": department, "state": "active"}  # fmt: skip


def latency(
    workdir: Path, samples: int, shape: PoolShape, interval: float, bulk: bool = False
) -> LatencyResult:
    """From a ``user.updated``'s 202 to its write at the app, one at a time; with ``bulk``,
    the app announces Bulk and the write arrives in a Bulk request (issue 15)."""
    from tests.support.scimserver import ScimServer

    clock = Clock(int(time.time()) - 600)

    def event(type_: str, **data: Any) -> dict[str, Any]:
        stamp = clock.next()
        return {"id": f"lat-evt-{clock.ms}", "type": type_, "occurred_at": stamp, "data": data}

    uids = [f"lat-{i:03d}" for i in range(LATENCY_USERS)]
    result = LatencyResult(str(shape), len(uids), interval * 1000)
    with (
        common.redis_server(workdir, "webhook-latency") as (server, client),
        ScimServer(bulk=bulk) as scim,
        receiver(server.url, workdir / "webhook-latency.log") as (_, url),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        pool = common.start_pool(server.url, shape)
        try:
            common.activate_when_ready(server.url, client, shape.processes, scim, workdir, APP,
                                       "--rate", "10000", "--burst", "1000")  # fmt: skip
            initial = [event("user.created", user=_user(u, "Engineering")) for u in uids]
            initial.append(event("group.created", group={"id": "lat-g", "name": "latency"}))
            initial += [event("group.member_added", group_id="lat-g", user_id=u) for u in uids]
            initial.append(event("app.group_associated", app_id=APP, group_id="lat-g"))
            content = json.dumps(initial).encode()
            resp = http.post("/v1/events", content=content, headers=headers(content))
            if resp.status_code != 202:
                raise RuntimeError(f"initial events refused: {resp.status_code} {resp.text}")
            common.settled(client, 120)
            remote = {u["userName"]: u["id"] for u in scim.users()}
            rid = {u: remote[f"lat.{u.removeprefix('lat-')}@example.com"] for u in uids}
            writes: queue.Queue[tuple[float, str, str]] = queue.Queue()

            def record(environ: dict[str, Any]) -> None:
                method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
                if method in ("PUT", "PATCH") and path.startswith("/v2/Users/"):
                    writes.put((time.monotonic(), method, path.rsplit("/", 1)[-1]))
                elif method == "POST" and path.endswith("/Bulk"):
                    at = time.monotonic()
                    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                    environ["wsgi.input"] = io.BytesIO(raw)
                    for op in json.loads(raw).get("Operations", []):
                        if op.get("method") in ("PUT", "PATCH"):
                            target = str(op.get("path", "")).rsplit("/", 1)[-1]
                            writes.put((at, f"{op['method']} in Bulk", target))

            scim.inject(record)
            for i in range(samples):
                uid = uids[i % len(uids)]
                content = json.dumps(event("user.updated", user=_user(uid, f"Dept {i}"))).encode()
                sent = time.monotonic()
                resp = http.post("/v1/events", content=content, headers=headers(content))
                answered = time.monotonic()
                if resp.status_code != 202:
                    raise RuntimeError(f"update refused: {resp.status_code} {resp.text}")
                deadline = answered + 10
                while True:
                    try:
                        at, method, target = writes.get(
                            timeout=max(0.0, deadline - time.monotonic())
                        )
                    except queue.Empty:
                        result.missed += 1
                        break
                    if target == rid[uid]:
                        result.ms.append((at - answered) * 1000)
                        result.send_ms.append((at - sent) * 1000)
                        result.answer_ms.append((answered - sent) * 1000)
                        result.methods[method] += 1
                        break
                time.sleep(interval)
            scim.inject(None)
        finally:
            pool.stop()
    return result


# -- the whole benchmark -----------------------------------------------------------------------
@dataclass
class WebhookResult:
    single: LoadResult
    batched: LoadResult
    single_one_worker: LoadResult  # a diagnostic: the same load on ``--workers 1``
    latency: LatencyResult
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)


def run(workdir: Path, seconds: float, concurrency: int, samples: int, shape: PoolShape,
        interval: float = 0.075, log: Any = print) -> WebhookResult:  # fmt: skip
    phases = {}
    with common.redis_server(workdir, "webhook") as (server, client):
        for name, workers, per_request in (("single", RECEIVER_WORKERS, 1),
                                           ("batched", RECEIVER_WORKERS, 1000),
                                           ("single_one_worker", 1, 1)):  # fmt: skip
            log(f"webhook: {per_request:,}-event requests for {seconds:g} s, {concurrency} in "
                f"flight, {workers} receiver workers ...")  # fmt: skip
            x = throughput(server.url, client, workdir / "webhook.log", workers, name,
                           per_request, seconds, concurrency)  # fmt: skip
            phases[name] = x
            log(f"  {x.requests_rate:,.0f} requests/s, {x.events_rate:,.0f} events/s accepted "
                f"({dict(x.statuses)}); request p50 {common.percentile(x.request_ms, 0.5):.1f} ms")  # fmt: skip
    log(f"webhook: latency 202 -> SCIM write, {samples} samples, pool {shape} ...")
    lat = latency(workdir, samples, shape, interval)
    log(f"  p50 {lat.p(0.5):.1f} ms, p99 {lat.p(0.99):.1f} ms, max {max(lat.ms, default=0):.1f} ms"
        f", {lat.missed} missed")  # fmt: skip
    return WebhookResult(latency=lat, **phases)


# -- rendering ---------------------------------------------------------------------------------
def summary_rows(r: WebhookResult) -> list[list[str]]:
    s, b, lat = r.single, r.batched, r.latency
    p99 = lat.p(0.99)
    ok = p99 < TARGET_P99_MS and not lat.missed
    return [
        [f"webhook, single-event requests ({RECEIVER_WORKERS} receiver workers)",
         f"**{s.requests_rate:,.0f} requests/s** ({s.requests:,} in {s.seconds:.1f} s)",
         f"≥ {TARGET_REQUESTS_PER_S:,} requests/s", f"{s.requests_rate / TARGET_REQUESTS_PER_S:.3f}",
         _met(s.requests_rate >= TARGET_REQUESTS_PER_S and s.accepted == s.journaled)],
        ["webhook, 1,000-event requests",
         f"**{b.events_rate:,.0f} events/s** ({b.accepted:,} in {b.seconds:.1f} s)",
         f"≥ {TARGET_EVENTS_PER_S:,} events/s", f"{b.events_rate / TARGET_EVENTS_PER_S:.3f}",
         _met(b.events_rate >= TARGET_EVENTS_PER_S and b.accepted == b.journaled)],
        [f"webhook 202 → SCIM write, idle pool {lat.shape}, p99",
         f"**{p99:.0f} ms** (p50 {lat.p(0.5):.0f} ms, max {max(lat.ms, default=0):.0f} ms, "
         f"{len(lat.ms)} samples)", f"< {TARGET_P99_MS:.0f} ms", f"{p99 / TARGET_P99_MS:.3f}",
         _met(ok)],
    ]  # fmt: skip


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def details(r: WebhookResult) -> list[str]:
    rows = []
    phases = (("single-event", r.single), ("1,000-event", r.batched),
              ("single-event (diagnostic)", r.single_one_worker))  # fmt: skip
    for label, x in phases:
        others = ", ".join(
            f"{k or 'error'}: {v}" for k, v in sorted(x.statuses.items()) if k != 202
        )
        rows.append([
            label, x.workers, x.concurrency, f"{x.seconds:.1f}",
            f"{x.requests:,}" + (f" (not 202: {others})" if others else ""),
            f"{x.requests_rate:,.0f}", f"{x.events_rate:,.0f}", f"{x.accepted:,} / {x.journaled:,}",
            f"{common.percentile(x.request_ms, 0.5):.1f} / {common.percentile(x.request_ms, 0.99):.1f}",
            f"{x.sequential_ms:.1f}",
            f"{x.client_cpu:.1f} ({x.client_cpu / x.seconds:.0%})",
            f"{x.receiver_cpu:.1f} ({x.receiver_cpu / x.seconds:.0%}; "
            f"{x.receiver_cpu / max(1, x.requests) * 1000:.2f} ms/request)",
            f"{x.redis_cpu:.1f} ({x.redis_cpu / x.seconds:.0%})",
        ])  # fmt: skip
    lat = r.latency
    two, one = r.single.sequential_ms, r.single_one_worker.sequential_ms
    out = [
        "### Webhook receiver (issue 3)",
        "",
        f"`provisioner webhook --workers N` (uvicorn) on an embedded Redis with AOF on and "
        "`appendfsync everysec`; HMAC-signed requests of fresh `user.updated` events (unique ids, "
        f"~0.3 KB each), {r.single.concurrency} in flight from `benchmarks/loadgen.py` in a "
        "process of its own (raw HTTP/1.1 on keep-alive connections, one per request in flight, "
        "about 0.1 ms of CPU per request; `httpx` took 1.3 ms), for the time shown after a 1 s "
        "warm-up; only 202s count. No worker runs during these phases (the batches wait in "
        "Redis): this is the receiver and Redis, not the ingest behind them. CPU: seconds used "
        "in the phase (share of one core). The last row is a diagnostic, not the target's "
        'configuration: the same single-event load on one receiver process. "One at a time": '
        "after each phase, 50 requests of the same size sent one after the other on one "
        "keep-alive connection (p50).",
        "",
        table(
            [
                "requests",
                "receiver workers",
                "in flight",
                "wall s",
                "202s",
                "requests/s",
                "events/s",
                "accepted / journaled",
                "request ms p50 / p99",
                "one at a time: ms p50",
                "CPU s: load generator",
                "CPU s: receiver",
                "CPU s: Redis",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"The machine has {r.cores} cores; the load generator runs on them too and competes "
        "with the receiver and Redis: its own CPU share is in the table (100% = one core), so "
        "the figures are a lower bound for a receiver with the machine to itself.",
    ]
    if two - one > 20:
        out += [
            "",
            f"One at a time, a single-event request takes {two:.0f} ms (p50) with "
            f"{r.single.workers} receiver workers against {one:.0f} ms with 1: uvicorn's multi-process mode binds the "
            "listening socket itself with `proto` 0, so asyncio does not set `TCP_NODELAY` on "
            "the accepted connections and each keep-alive response waits for the client's "
            "delayed ACK (Nagle; uvicorn issue #3149).",
        ]
    return [
        *out,
        "",
        f"**Latency from the 202 to the SCIM write** (idle pool {lat.shape} of `provisioner "
        f"worker`, app `{APP}` with the `zscaler` profile and the rate limit lifted, a "
        f"scim2-server in the benchmark process, a receiver of {RECEIVER_WORKERS} workers): "
        f"{lat.users} users provisioned through the webhook first; then "
        f"{len(lat.ms) + lat.missed} `user.updated` events changing a user's department, one "
        f"request at a time, {lat.interval_ms:.0f} ms apart; the time from the 202's arrival at "
        f"the client to the arrival of that user's {'/'.join(sorted(lat.methods)) or 'PUT'} at "
        "the SCIM server.",
        "",
        table(
            ["", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                ["202 received → SCIM write arrives", *_pcts(lat.ms)],
                ["request sent → SCIM write arrives", *_pcts(lat.send_ms)],
                ["request sent → 202 received", *_pcts(lat.answer_ms)],
            ],
        ),  # fmt: skip
        "",
        f"{lat.missed} of the 202s were not followed by the write within 10 s.",
    ]


def _pcts(values: list[float]) -> list[str]:
    return [f"{common.percentile(values, q):.1f}" for q in (0.5, 0.9, 0.99)] + [
        f"{max(values, default=0):.1f}"
    ]
