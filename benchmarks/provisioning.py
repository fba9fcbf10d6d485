"""Issue 5: initial provisioning against a rate-limited application.

A directory of U users in U/50 groups, each user a member of 3 distinct groups (drawn at
random), every group associated with the app. The app (profile ``zscaler``) is activated with
``--rate R --burst 5`` against a real scim2-server (in this process) and a worker pool is
running; then every event is published at once with ``provisioner replay`` and the pool
provisions until ``status`` is idle. Every request's arrival at the SCIM server is recorded.
This process's garbage collector is off meanwhile: a full collection over the server's growing
store stopped it for up to 130 ms, stamping requests late and in bunches, which the busiest
second then counted against the limiter.

The minimal plan, computed here from the directory alone: per user 1 lookup (GET) + 1 create
(POST); per non-empty group 1 lookup + 1 create carrying up to 100 members + ceil((members -
100) / 100) PATCHes (``members_per_patch`` of the zscaler profile).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import PoolShape
from benchmarks.report import table
from benchmarks.workload import Clock, user_record

APP = "zs"
USERS_PER_GROUP = 50
MEMBERSHIPS_PER_USER = 3
MEMBERS_PER_PATCH = 100  # the zscaler profile's members_per_patch
TARGET_RATIO = 1.05
TARGET_SHARE = 0.9
ENTRA_MINUTES_PER_OBJECT = (0.01, 0.08)


@dataclass
class Directory:
    users: list[str]
    members: dict[str, set[str]]  # group id -> user ids
    events: list[dict[str, Any]]

    @property
    def memberships(self) -> int:
        return sum(len(m) for m in self.members.values())

    @property
    def objects(self) -> int:
        """Entra's unit: users + groups + memberships."""
        return len(self.users) + len(self.members) + self.memberships


def directory(users: int, seed: int = 5) -> Directory:
    rng = random.Random(seed)
    clock = Clock()
    uids = [f"u-{i:05d}" for i in range(users)]
    gids = [f"g-{j:04d}" for j in range(max(MEMBERSHIPS_PER_USER, users // USERS_PER_GROUP))]
    members: dict[str, set[str]] = {g: set() for g in gids}
    docs: list[tuple[str, dict[str, Any]]] = [("user.created", {"user": user_record(u, rng)})
                                              for u in uids]  # fmt: skip
    docs += [("group.created", {"group": {"id": g, "name": f"team-{g[2:]}"}}) for g in gids]
    for u in uids:
        for g in rng.sample(gids, MEMBERSHIPS_PER_USER):
            members[g].add(u)
            docs.append(("group.member_added", {"group_id": g, "user_id": u}))
    docs += [("app.group_associated", {"app_id": APP, "group_id": g}) for g in gids]
    events = [{"id": f"evt-prov-{i}", "type": t, "occurred_at": clock.next(), "data": d}
              for i, (t, d) in enumerate(docs)]  # fmt: skip
    return Directory(uids, members, events)


def minimal_calls(d: Directory) -> tuple[int, int]:
    """(reads, writes) of the fewest calls that provision ``d`` (module doc)."""
    groups = [m for m in d.members.values() if m]
    patches = sum(math.ceil(max(0, len(m) - MEMBERS_PER_PATCH) / MEMBERS_PER_PATCH) for m in groups)
    return len(d.users) + len(groups), len(d.users) + len(groups) + patches


@dataclass
class ProvisioningResult:
    users: int
    groups: int
    memberships: int
    objects: int
    rate: float
    burst: int
    shape: str
    minimal_reads: int
    minimal_writes: int
    calls: list[tuple[float, str, str]]  # (s after the replay started, method, path)
    seconds: float  # replay started -> idle
    replay_seconds: float
    cpu: dict[str, float]  # process -> CPU s over the run
    scim_handler_cpu: float  # CPU s in scim2-server's handler (threads of this process)
    scim_handler_wall: float  # wall s summed over requests in scim2-server's handler
    problems: list[str] = field(default_factory=list)

    @property
    def reads(self) -> int:
        return sum(1 for _, m, _ in self.calls if m == "GET")

    @property
    def writes(self) -> int:
        return len(self.calls) - self.reads

    @property
    def ratio(self) -> float:
        return len(self.calls) / (self.minimal_reads + self.minimal_writes)

    @property
    def span(self) -> float:
        return self.calls[-1][0] - self.calls[0][0] if len(self.calls) > 1 else 0.0

    @property
    def achieved_rate(self) -> float:
        """Requests/s from the first request to the last, the initial burst set aside (the
        most a GCRA lets through in a span T is burst + R × T)."""
        return (len(self.calls) - self.burst) / self.span if self.span else 0.0

    @property
    def share(self) -> float:
        return self.achieved_rate / self.rate

    @property
    def steady_rate(self) -> float:
        """The median requests/s over the 5-second windows from the first request to the last,
        the first and the last window set aside (the ramp-up while events are still being
        published, and the groups, created once their members exist)."""
        if not self.calls:
            return 0.0
        first = self.calls[0][0]
        counts = Counter(int((t - first) // 5) for t, _, _ in self.calls)
        inner = sorted(counts[i] / 5 for i in range(1, max(counts)))
        return inner[len(inner) // 2] if inner else 0.0

    @property
    def busiest_second(self) -> int:
        """The most requests in any 1-second window (the limit allows rate + burst)."""
        return common.busiest_second(t for t, _, _ in self.calls)

    @property
    def entra_minutes(self) -> tuple[float, float]:
        low, high = ENTRA_MINUTES_PER_OBJECT
        return self.objects * low, self.objects * high


class _Recorder:
    """An ``inject`` hook logging each request's arrival, and a wrapper timing the handler."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[float, str, str]] = []
        self.cpu = self.wall = 0.0
        self.lock = threading.Lock()

    def hook(self, environ: dict[str, Any]) -> None:
        self.calls.append((time.monotonic(), environ["REQUEST_METHOD"], environ["PATH_INFO"]))

    def timed(self, environ: dict[str, Any], start_response: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            with self.lock:
                self.cpu += time.thread_time() - cpu
                self.wall += time.perf_counter() - wall


def run(workdir: Path, users: int, rate: float, shape: PoolShape, burst: int | None = None,
        log: Any = print) -> ProvisioningResult:  # fmt: skip
    from tests.support.scimserver import ScimServer
    from worker.cli.status import snapshot
    from worker.scim.profiles import ZSCALER

    burst = ZSCALER.burst if burst is None else burst
    d = directory(users)
    path = workdir / f"provisioning-{users}.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in d.events))
    reads, writes = minimal_calls(d)
    timeout = 600 + 5 * (reads + writes) / rate
    with (
        common.redis_server(workdir, f"provisioning-{users}") as (server, client),
        ScimServer() as scim,
    ):
        pool = common.start_pool(server.url, shape)
        try:
            common.activate_when_ready(server.url, client, shape.processes, scim, workdir, APP,
                                       "--rate", f"{rate:g}", "--burst", str(burst))  # fmt: skip
            common.settled(client, 60)
            rec = _Recorder(scim.app)
            scim.app = rec.timed
            scim.inject(rec.hook)
            roots = [w.pid for w in pool.workers]
            before = [common.process_cpu([pid]) for pid in roots]
            redis0, own0 = common.redis_cpu(client), time.process_time()
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            log(f"  publishing {len(d.events):,} events; minimal plan {reads + writes:,} calls, "
                f"{(reads + writes) / rate:,.0f} s at {rate:g}/s ...")  # fmt: skip
            gc.disable()
            try:
                t0 = time.monotonic()
                common.cli(server.url, "replay", str(path))
                replay_seconds = time.monotonic() - t0
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                t_idle = common.settled(client, timeout, interval=0.5)
            finally:
                gc.enable()
            cpu = {"`provisioner replay`": children.ru_utime + children.ru_stime
                   - children0.ru_utime - children0.ru_stime}  # fmt: skip
            for i, (pid, start) in enumerate(zip(roots, before, strict=True), 1):
                now = common.process_cpu([pid])
                name = f"worker {i}: main process" if len(now) > 1 else f"worker {i} (threads)"
                cpu[name] = now.pop(pid) - start.get(pid, 0.0)
                for k, (p, used) in enumerate(sorted(now.items()), 1):
                    cpu[f"worker {i}: pool process {k}"] = used - start.get(p, 0.0)
            cpu["Redis"] = common.redis_cpu(client) - redis0
            cpu["benchmark process (scim2-server threads, status polls)"] = (
                time.process_time() - own0
            )
            scim.inject(None)
            calls = [(t - t0, m, p) for t, m, p in rec.calls]
            problems = _check(scim, d, snapshot(client))
        finally:
            pool.stop()
    return ProvisioningResult(
        users=users, groups=len(d.members), memberships=d.memberships, objects=d.objects,
        rate=rate, burst=burst, shape=str(shape), minimal_reads=reads, minimal_writes=writes,
        calls=calls, seconds=t_idle - t0, replay_seconds=replay_seconds, cpu=cpu,
        scim_handler_cpu=rec.cpu, scim_handler_wall=rec.wall, problems=problems,
    )  # fmt: skip


def _check(scim: Any, d: Directory, state: dict[str, Any]) -> list[str]:
    """Differences between the app and the directory, and anything parked or held."""
    problems = [f"app {a}: {len(s['parked'])} parked, {len(s['held'])} held"
                for a, s in state["apps"].items() if s["parked"] or s["held"]]  # fmt: skip
    by_id = {u["id"]: u["userName"] for u in scim.users()}
    usernames = dict(zip(d.users, _usernames(d), strict=True))
    missing = set(usernames.values()) - set(by_id.values())
    if missing:
        problems.append(f"{len(missing)} users missing")
    remote = {g["displayName"]: g for g in scim.groups()}
    wrong = 0
    for g, members in d.members.items():
        got = remote.get(f"team-{g[2:]}")
        have = {by_id.get(m["value"]) for m in (got or {}).get("members") or []}
        wrong += have != {usernames[u] for u in members}
    if wrong:
        problems.append(f"{wrong} groups missing or with wrong members")
    return problems


def _usernames(d: Directory) -> list[str]:
    return [e["data"]["user"]["username"] for e in d.events if e["type"] == "user.created"]


# -- rendering ---------------------------------------------------------------------------------
def _label(r: ProvisioningResult) -> str:
    return f"{r.users:,} users / {r.groups:,} groups at {r.rate:g} requests/s"


def summary_rows(r: ProvisioningResult) -> list[list[str]]:
    low, high = r.entra_minutes
    minutes = r.seconds / 60
    return [
        [f"initial provisioning, {_label(r)}: calls sent / minimal plan",
         f"**{r.ratio:.3f}** ({len(r.calls):,} / {r.minimal_reads + r.minimal_writes:,})",
         f"≤ {TARGET_RATIO}", f"{r.ratio / TARGET_RATIO:.3f}",
         _met(r.ratio <= TARGET_RATIO and not r.problems)],
        [f"initial provisioning, {_label(r)}: share of the limit used while a backlog exists",
         f"**{r.share:.3f}** ({r.achieved_rate:,.1f} requests/s over {r.span:,.1f} s)",
         f"≥ {TARGET_SHARE}", f"{r.share / TARGET_SHARE:.3f}", _met(r.share >= TARGET_SHARE)],
        [f"initial provisioning, {_label(r)}: total time ({r.objects:,} objects) vs Entra's "
         "initial cycle (0.01–0.08 min per object)",
         f"**{minutes:,.1f} min** ({r.seconds / r.objects:.3f} s per object)",
         f"Entra: {low:,.0f}–{high:,.0f} min", f"{minutes / low:.3f} of Entra's fastest",
         _met(minutes <= low)],
    ]  # fmt: skip


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def details(results: list[ProvisioningResult]) -> list[str]:
    rows = []
    for r in results:
        kinds = Counter((p.strip("/").split("/")[1] if p.count("/") > 1 else p, m)
                        for _, m, p in r.calls)  # fmt: skip
        writes = ", ".join(
            f"{m} {res} {n:,}" for (res, m), n in sorted(kinds.items()) if m != "GET"
        )
        first, last = r.calls[0][0] if r.calls else 0, r.calls[-1][0] if r.calls else 0
        low, high = r.entra_minutes
        rows.append([
            f"{r.users:,} / {r.groups:,} / {r.memberships:,} ({r.objects:,})",
            f"{r.rate:g} (burst {r.burst})", r.shape,
            f"{r.reads:,} / {r.minimal_reads:,}", f"{r.writes:,} / {r.minimal_writes:,} ({writes})",
            f"{r.ratio:.3f}", f"{r.achieved_rate:,.1f} ({r.share:.1%})",
            f"{r.steady_rate:,.1f} ({r.steady_rate / r.rate:.1%})",
            f"{r.busiest_second} (≤ {r.rate + r.burst:g})",
            f"{r.seconds:,.1f} (replay {r.replay_seconds:.1f}; first call {first:.1f}, last "
            f"{last:,.1f})",
            f"{low:,.0f}–{high:,.0f}",
        ])  # fmt: skip
    out = [
        "### Initial provisioning under a rate limit (issue 5)",
        "",
        f"A directory of U users in U/{USERS_PER_GROUP} groups, {MEMBERSHIPS_PER_USER} distinct "
        "groups per user drawn at random, every group associated with the app (profile `zscaler`, "
        "`apps activate --rate R --burst 5`), a scim2-server in the benchmark process and a pool "
        "of `provisioner worker` processes; all events are published at once by `provisioner "
        "replay`, and the run ends when `status` is idle. Every request's arrival at the SCIM "
        "server is recorded. The minimal plan is computed by the benchmark from the directory: per "
        f"user 1 lookup + 1 create; per group 1 lookup + 1 create with up to {MEMBERS_PER_PATCH} "
        f"members + ceil((members − {MEMBERS_PER_PATCH}) / {MEMBERS_PER_PATCH}) PATCHes. The "
        "share of the limit is (requests − burst) / (last request − first request) / R; the steady "
        "rate is the median over the 5-second windows between the first and the last. Entra's "
        "anchor: its initial cycle takes 0.01–0.08 minutes per object (users + groups + "
        "memberships).",
        "",
        table(
            [
                "users / groups / memberships (objects)",
                "R/s",
                "pool",
                "reads sent / minimal",
                "writes sent / minimal",
                "calls ratio",
                "requests/s (share of R)",
                "steady requests/s (share of R)",
                "most in any 1 s",
                "wall s: replay start → idle",
                "Entra, min",
            ],
            rows,
        ),  # fmt: skip
    ]
    for r in results:
        wall = r.seconds
        busiest = max(r.cpu, key=lambda k: r.cpu[k])
        total = sum(r.cpu.values())
        out += [
            "",
            f"CPU over the run of {_label(r)} ({wall:,.1f} s from the replay's start to idle):",
            "",
            table(["process", "CPU s", "share of one core"],
                  [[k, f"{v:,.1f}", f"{v / wall:.0%}"] for k, v in r.cpu.items()]),  # fmt: skip
            "",
            f"Together {total:,.0f} CPU s, {total / wall / _cores():.0%} of the {_cores()} cores; the "
            f"busiest process: {busiest} ({r.cpu[busiest] / wall:.0%} of a core). scim2-server's "
            f"request handler itself used {r.scim_handler_cpu:,.1f} CPU s "
            f"({r.scim_handler_cpu / max(1, len(r.calls)) * 1000:.1f} ms per request; "
            f"{r.scim_handler_wall / max(1, len(r.calls)) * 1000:.1f} ms wall per request in the "
            "handler). "
            + ("The app ended as the directory says, nothing parked or held."
               if not r.problems else f"**Problems: {'; '.join(r.problems)}.**"),
        ]  # fmt: skip
    return out


def _cores() -> int:
    return os.cpu_count() or 1


# -- issue 10: an app activated on a directory that exists, listing vs lookups ------------------
TODAY_CALLS, TODAY_SECONDS = 2060, 411.6  # 1,000 users at 5/s, lookups (BENCHMARKS.md, issue 5)
TARGET_SHARE_OF_TODAY = 0.55


@dataclass
class ActivationResult:
    users: int
    groups: int
    rate: float
    listing: bool
    calls: list[tuple[float, str, str, str]]  # (s after activate started, method, path, query)
    activate_seconds: float  # `apps activate` (verify, listing, full sync marks)
    seconds: float  # activate started -> idle
    detail: str  # the activation's audit detail
    problems: list[str] = field(default_factory=list)

    @property
    def lookups(self) -> int:
        return sum(1 for _, m, _, q in self.calls if m == "GET" and "filter=" in q)

    @property
    def pages(self) -> int:
        """Listing pages (the activation's own check reads ``count=1``)."""
        return sum(1 for _, m, p, q in self.calls
                   if m == "GET" and "filter=" not in q and "count=" in q
                   and "count=1" not in q.split("&"))  # fmt: skip

    @property
    def writes(self) -> int:
        return sum(1 for _, m, _, _ in self.calls if m != "GET")

    @property
    def other_reads(self) -> int:
        return len(self.calls) - self.lookups - self.pages - self.writes


def run_activation(workdir: Path, users: int, rate: float, shape: PoolShape, listing: bool,
                   log: Any = print, bulk: bool = False) -> ActivationResult:  # fmt: skip
    """The directory is published while the app is not active (its reconciles are skipped),
    then ``apps activate`` (with or without ``--no-listing``) provisions it: every request
    from the activation's start to idle is counted, the activation's checks included. With
    ``bulk``, the SCIM server announces Bulk (issue 15)."""
    from tests.support.scimserver import ScimServer
    from worker.cli.status import snapshot
    from worker.store import audit

    d = directory(users)
    path = workdir / f"activation-{users}.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in d.events))
    reads, writes = minimal_calls(d)
    timeout = 600 + 5 * (reads + writes) / rate
    name = f"activation-{users}-{'listing' if listing else 'lookups'}{'-bulk' if bulk else ''}"
    with common.redis_server(workdir, name) as (server, client), ScimServer(bulk=bulk) as scim:
        pool = common.start_pool(server.url, shape)
        try:
            common.wait_for(lambda: common.workers_ready(client, shape.processes), 60,
                            what="workers")  # fmt: skip
            common.cli(server.url, "replay", str(path))
            common.settled(client, 300)
            calls: list[tuple[float, str, str, str]] = []
            scim.inject(lambda e: calls.append((time.monotonic(), e["REQUEST_METHOD"],
                                                e["PATH_INFO"], e.get("QUERY_STRING", ""))))  # fmt: skip
            options = ["--rate", f"{rate:g}", "--burst", "5"] + (
                [] if listing else ["--no-listing"]
            )
            log(f"  {users:,} users, {len(d.members)} groups published; activating "
                f"({'listing' if listing else 'lookups'}) at {rate:g}/s ...")  # fmt: skip
            gc.disable()
            try:
                t0 = time.monotonic()
                common.activate_when_ready(server.url, client, shape.processes, scim, workdir,
                                           APP, *options)  # fmt: skip
                activated = time.monotonic()
                t_idle = common.settled(client, timeout, interval=0.5)
            finally:
                gc.enable()
            scim.inject(None)
            detail = audit.read(client, app=APP, name="idm_integration_activate")[-1]["detail"]
            problems = _check(scim, d, snapshot(client))
        finally:
            pool.stop()
    return ActivationResult(
        users=users, groups=len(d.members), rate=rate, listing=listing,
        calls=[(t - t0, m, p, q) for t, m, p, q in calls], activate_seconds=activated - t0,
        seconds=t_idle - t0, detail=detail, problems=problems,
    )  # fmt: skip


def activation_table(results: list[ActivationResult]) -> str:
    rows = []
    for r in results:
        rows.append([
            "listing (`apps activate`)" if r.listing else "lookups (`apps activate --no-listing`)",
            f"{r.users:,} / {r.groups:,} at {r.rate:g}/s",
            f"**{len(r.calls):,}**", f"{r.pages:,}", f"{r.lookups:,}", f"{r.other_reads:,}",
            f"{r.writes:,}", f"{len(r.calls) / TODAY_CALLS:.3f}",
            f"**{r.seconds / 60:.1f} min** ({r.seconds:,.1f} s; the command {r.activate_seconds:.1f} s)",
            f"{r.seconds / TODAY_SECONDS:.3f}",
            "none" if not r.problems else "; ".join(r.problems),
        ])  # fmt: skip
    return table(["mode", "users / groups", "calls", "listing pages", "lookups",
                  "other reads", "writes", "calls / today's 2,060", "activate → idle",
                  "time / today's 6.9 min", "problems"], rows)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.provisioning [--users N] [--rate R] [--modes listing,lookups]``:
    initial provisioning of an app activated on an existing directory (issue 10)."""
    import argparse
    import shutil
    import sys
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.provisioning")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--modes", default="listing,lookups", help="listing, lookups, or both")
    p.add_argument("--quick", action="store_true", help="100 users at 20/s (a development check)")
    p.add_argument("--pool", default="2x6", type=PoolShape.parse)
    args = p.parse_args(argv)
    users, rate = (100, 20.0) if args.quick else (args.users, args.rate)
    workdir = Path(tempfile.mkdtemp(prefix="prov-activation-"))
    results = []
    try:
        for mode in args.modes.split(","):
            r = run_activation(workdir, users, rate, args.pool, listing=mode.strip() == "listing")
            print(f"  {mode}: {len(r.calls):,} calls ({r.pages} pages, {r.lookups} lookups, "
                  f"{r.writes:,} writes) in {r.seconds:,.1f} s; {r.detail}"
                  + (f"; PROBLEMS {r.problems}" if r.problems else ""), flush=True)  # fmt: skip
            results.append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["python -m benchmarks.provisioning", *(argv or sys.argv[1:])])
    print(f"\n**Command:** `{command}`; **code:** {common.code_version()}; machine: "
          f"{common.machine()['cpu']}, nproc {common.machine()['nproc']}\n")  # fmt: skip
    print(activation_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
