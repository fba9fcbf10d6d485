"""Issue 10: initial provisioning against an application behind an exact token bucket.

The application (scim2-server, profile ``zscaler``, ``apps activate --rate 5 --burst 5``) sits
behind a gateway that enforces exactly 5 requests/s with a burst of 5, as many do: a token
bucket checked as each request arrives, before the application handles it, answering 429 with
``Retry-After: 1`` when it is empty (``ScimServer(rate_limit=(5, 5))``). The directory of
``benchmarks.provisioning`` (U users in U/50 groups, 3 groups per user) is published at once
with ``provisioner replay`` and a pool of worker processes provisions it until ``status`` is
idle. Every arrival at the gateway is recorded. Reported: the 429s as a share of the calls
(target < 1 %), the share of the limit used, (accepted − burst) / (last accepted − first
accepted) / rate (target ≥ 0.9), and the accepted calls against the minimal plan.

``baseline=REF`` runs the same with the workers and the CLI of commit REF (its ``worker/`` and
``producers/``, from ``git archive``), so that one run compares the code before a change with
the code as it is.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, provisioning
from benchmarks.common import ROOT, PoolShape
from benchmarks.report import table

APP = provisioning.APP
RATE = 5.0
BURST = 5
TARGET_REFUSED = 0.01
TARGET_SHARE = 0.9
TARGET_RATIO = 1.05


@dataclass
class PacingResult(common.GatewayArrivals):
    label: str  # "before" / "after"
    code: str  # what ran: a commit, or the working tree
    users: int
    groups: int
    rate: float
    burst: int
    shape: str
    minimal_reads: int
    minimal_writes: int
    arrivals: list[tuple[float, bool, str]]  # (s after the replay started, accepted, request)
    seconds: float  # replay started -> idle
    pace: dict[str, Any] | None  # `status --json`'s apps.<app>.pace at the end (None: no such)
    problems: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[tuple[float, str]]:
        return [(t, r) for t, ok, r in self.arrivals if ok]

    @property
    def minimal(self) -> int:
        return self.minimal_reads + self.minimal_writes

    @property
    def reads(self) -> int:
        return sum(1 for _, r in self.accepted if r.startswith("GET "))

    @property
    def writes(self) -> int:
        return len(self.accepted) - self.reads

    @property
    def ratio(self) -> float:
        """Calls the application handled (the gateway let through) against the plan."""
        return len(self.accepted) / self.minimal

    @property
    def span(self) -> float:
        return common.span([t for t, _ in self.accepted])

    @property
    def share(self) -> float:
        """Of the limit, from the first accepted request to the last (``limit_share``)."""
        return common.limit_share(len(self.accepted), self.burst, self.span, self.rate)

    @property
    def busiest_second(self) -> int:
        """The most accepted requests in any 1-second window (the bucket allows rate + burst)."""
        return common.busiest_second(t for t, _ in self.accepted)

    @property
    def refusal_times(self) -> list[float]:
        return [t for t, ok, _ in self.arrivals if not ok]


def baseline_code(workdir: Path, ref: str) -> tuple[Path, str]:
    """``worker/`` and ``producers/`` of commit ``ref`` in a directory of their own; returns
    it and the commit's short name."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    target = workdir / f"code-{sha}"
    if not target.exists():
        archive = subprocess.run(["git", "archive", "--format=tar", sha, "worker", "producers"],
                                 cwd=ROOT, check=True, capture_output=True).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target, sha


def _cli(root: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``provisioner ARGS`` run from the code in ``root``."""
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-m", "worker.cli.main", *args], env=env, cwd=root,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"provisioner {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
    return result


def _pool(url: str, shape: PoolShape, root: Path) -> Any:
    """``provisioner worker`` processes running the code in ``root`` (production delays)."""
    from tests.support.harness import TEST_ENV, WorkerPool

    class Pool(WorkerPool):
        def start_one(self) -> subprocess.Popen[bytes]:
            name = f"bench{next(self._names)}@%h"
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli.main", "worker", "--pool", self.pool,
                 "--concurrency", str(self.concurrency), "--loglevel", self.loglevel,
                 "--hostname", name],
                env=self.env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            self.workers.append(process)
            return process

    pool = Pool(url, processes=shape.processes, concurrency=shape.concurrency)
    for name in TEST_ENV:
        if name.startswith("PROVISIONER_"):
            pool.env.pop(name, None)
    pool.env["PYTHONPATH"] = str(root)
    return pool.start()


def run(workdir: Path, users: int, shape: PoolShape, label: str = "after", root: Path = ROOT,
        code: str = "", log: Any = print) -> PacingResult:  # fmt: skip
    """Provision ``users`` behind the token bucket with the workers and CLI of ``root``."""
    from tests.support.scimserver import ScimServer
    from worker.cli.status import snapshot

    d = provisioning.directory(users)
    path = workdir / f"pacing-{users}.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in d.events))
    reads, writes = provisioning.minimal_calls(d)
    with (
        common.redis_server(workdir, f"pacing-{label}") as (server, client),
        ScimServer(rate_limit=(RATE, BURST)) as scim,
    ):
        bucket = scim.bucket
        assert bucket is not None
        pool = _pool(server.url, shape, root)
        try:
            common.wait_for(lambda: common.workers_ready(client, shape.processes), 60,
                            what="workers")  # fmt: skip
            token = workdir / "scim.token"
            token.write_text(scim.token)
            _cli(root, server.url, "apps", "activate", APP, "--base-url", scim.base_url,
                 "--token-file", str(token), "--profile", "zscaler", "--rate", f"{RATE:g}",
                 "--burst", str(BURST))  # fmt: skip
            common.settled(client, 60)
            time.sleep(1.5)  # the activation's calls went through the bucket: let it fill up
            bucket.clear()
            log(f"  {label} ({code}): publishing {len(d.events):,} events; minimal plan "
                f"{reads + writes:,} calls, {(reads + writes) / RATE:,.0f} s at {RATE:g}/s ...")  # fmt: skip
            gc.disable()  # a collection would stall the gateway and bunch its arrivals
            try:
                t0 = time.monotonic()
                _cli(root, server.url, "replay", str(path))
                t_idle = common.settled(client, 600 + 5 * (reads + writes) / RATE, interval=0.5)
            finally:
                gc.enable()
            arrivals = [(t - t0, ok, r) for t, ok, r in bucket.arrivals]
            state = json.loads(_cli(ROOT, server.url, "status", "--json").stdout)
            pace = state["apps"].get(APP, {}).get("pace") if root == ROOT else None
            problems = provisioning._check(scim, d, snapshot(client))
        finally:
            pool.stop()
    return PacingResult(
        label=label, code=code, users=users, groups=len(d.members), rate=RATE, burst=BURST,
        shape=str(shape), minimal_reads=reads, minimal_writes=writes, arrivals=arrivals,
        seconds=t_idle - t0, pace=pace, problems=problems,
    )  # fmt: skip


# -- rendering ---------------------------------------------------------------------------------
def _label(r: PacingResult) -> str:
    return f"{r.users:,} users at {r.rate:g}/s burst {r.burst}, {r.label} ({r.code})"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summary_rows(r: PacingResult) -> list[list[str]]:
    return [
        [f"exact token bucket, {_label(r)}: 429s / calls",
         f"**{r.refused_share:.2%}** ({r.refused} / {r.calls:,})", f"< {TARGET_REFUSED:.0%}",
         f"{r.refused_share / TARGET_REFUSED:.3f}", _met(r.refused_share < TARGET_REFUSED)],
        [f"exact token bucket, {_label(r)}: share of the limit used",
         f"**{r.share:.3f}** ({len(r.accepted):,} accepted over {r.span:,.1f} s)",
         f"≥ {TARGET_SHARE}", f"{r.share / TARGET_SHARE:.3f}", _met(r.share >= TARGET_SHARE)],
        [f"exact token bucket, {_label(r)}: calls accepted / minimal plan",
         f"**{r.ratio:.3f}** ({len(r.accepted):,} / {r.minimal:,})", f"≤ {TARGET_RATIO}",
         f"{r.ratio / TARGET_RATIO:.3f}", _met(r.ratio <= TARGET_RATIO and not r.problems)],
    ]  # fmt: skip


def details(results: list[PacingResult]) -> list[str]:
    rows = []
    for r in results:
        refusals = r.refusal_times
        when = f"{refusals[0]:.1f}–{refusals[-1]:.1f} s" if refusals else "-"
        kinds = Counter(req.split("/")[0] + req.split("/")[2].split("?")[0]
                        for _, ok, req in r.arrivals if not ok and req.count("/") >= 2)  # fmt: skip
        pace = r.pace or {}
        learned = (f"{pace['requests_per_second']:g}/s ({pace['share']:.0%} of "
                   f"{pace['ceiling']:g}), {pace['refused']} 429s" if pace else "-")  # fmt: skip
        rows.append([
            r.label, r.code, f"{r.users:,} / {r.groups:,}", r.shape, f"{r.calls:,}",
            f"{r.refused} ({r.refused_share:.2%})", when,
            ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "-",
            f"{r.reads:,} / {r.minimal_reads:,}", f"{r.writes:,} / {r.minimal_writes:,}",
            f"{r.ratio:.3f}", f"{r.share:.3f}", f"{r.busiest_second} (≤ {r.rate + r.burst:g})",
            f"{r.seconds:,.1f}", learned,
        ])  # fmt: skip
    problems = [f"{r.label}: {'; '.join(r.problems)}" for r in results if r.problems]
    return [*_header(), *_table(rows), "", *_comparison(results),
            ("The app ended as the directory says, nothing parked or held, in every run."
             if not problems else f"**Problems: {' / '.join(problems)}.**")]  # fmt: skip


def _comparison(results: list[PacingResult]) -> list[str]:
    """After against before, from the same run, when both ran."""
    by = {r.label: r for r in results}
    if "before" not in by or "after" not in by:
        return []
    b, a = by["before"], by["after"]
    return [
        f"After against before, in this run: 429s {b.refused} → {a.refused} "
        f"({b.refused_share:.2%} → {a.refused_share:.2%} of the calls), share of the limit "
        f"{b.share:.3f} → {a.share:.3f} ({a.share / b.share:.2f}×), calls the app handled per "
        f"call of the plan {b.ratio:.3f} → {a.ratio:.3f}, wall time {b.seconds:.1f} → "
        f"{a.seconds:.1f} s ({a.seconds / b.seconds:.2f}×). Before, the pool spent its burst "
        "and then sent a request every 200 ms into a bucket holding one token: a request a hair "
        "early was refused, and each 429 paused the pool for a second after which the slots "
        "that fell due in the pause went out together, into a bucket of 5. After, the first "
        "429 (if any) teaches the pool that the app counts exactly (see README, Resilience).",
        "",
    ]


def _header() -> list[str]:
    return [
        "### Initial provisioning against an exact token bucket (issue 10)",
        "",
        "The app (profile `zscaler`, `apps activate --rate 5 --burst 5`) behind a gateway that "
        "enforces exactly 5 requests/s with a burst of 5: a token bucket checked on arrival, "
        "before the app handles the request, answering 429 with `Retry-After: 1` when empty "
        "(`ScimServer(rate_limit=(5, 5))`). The directory of the provisioning benchmark (U users "
        "in U/50 groups, 3 groups per user) is published at once; the run ends when `status` is "
        "idle. Calls: every arrival at the gateway; accepted reads and writes against the "
        "minimal plan; the share of the limit is (accepted − burst) / (last accepted − first "
        "accepted) / rate. *before* runs the workers and the CLI of the commit named, *after* "
        "the code as it is, in the same run.",
        "",
    ]


def _table(rows: list[list[str]]) -> list[str]:
    return [
        table(
            [
                "code",
                "commit",
                "users / groups",
                "pool",
                "calls",
                "429s (share)",
                "429s from–to",
                "429s by call",
                "reads accepted / minimal",
                "writes accepted / minimal",
                "accepted / minimal",
                "share of the limit",
                "most accepted in any 1 s",
                "wall s: replay start → idle",
                "learned pace at the end",
            ],
            rows,
        ),  # fmt: skip
    ]
