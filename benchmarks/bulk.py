"""Issue 15: SCIM Bulk, each run beside the same run with Bulk off (the app does not announce
Bulk in its ``/ServiceProviderConfig``), one after the other in one session.

- **Initial provisioning** of U users in U/50 groups at 5 requests/s, burst 5: the app (profile
  ``zscaler``) activated on the existing directory (``benchmarks.provisioning.run_activation``:
  listing, then the full sync). Every request from the activation's start to idle is counted.
  Targets for 1,000 users in 20 groups: at most 50 requests and 30 s.
- **The churn workload** of ``benchmarks.churn`` at 5 requests/s: requests sent, and against
  the minimal number of calls.
- **Idle latency**: from a ``user.updated``'s 202 to its write's arrival at the app, one at a
  time (``benchmarks.webhook.latency``); target p99 under 250 ms with Bulk on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import churn, provisioning, webhook
from benchmarks.common import PoolShape
from benchmarks.report import table

TARGET_REQUESTS, TARGET_SECONDS = 50, 30.0  # 1,000 users in 20 groups at 5/s
TARGET_P99_MS = 250.0
RATE = 5.0
ACTIVATION_COLUMNS = ["users / groups", "Bulk", "requests", "listing pages", "single writes",
                      "Bulk requests", "activate → idle", "requests / off", "time / off",
                      "target", "problems"]  # fmt: skip
CHURN_COLUMNS = ["Bulk", "requests", "writes (a Bulk request counts one)", "reads",
                 "minimal calls (one by one)", "replay → idle", "problems"]  # fmt: skip
LATENCY_COLUMNS = ["Bulk", "samples", "p50", "p99", "max", "missed",
                   f"p99 < {TARGET_P99_MS:g} ms"]  # fmt: skip


@dataclass
class BulkResult:
    activations: list[tuple[bool, provisioning.ActivationResult]]
    churns: list[tuple[bool, churn.ChurnResult]]
    latencies: list[tuple[bool, webhook.LatencyResult]]
    shape: str


def run(workdir: Path, shape: PoolShape, users: list[int], latency_samples: int = 200,
        with_churn: bool = True, off_up_to: int = 1000, log: Any = print) -> BulkResult:  # fmt: skip
    """``users``: the sizes of the initial provisioning, each with Bulk on, and with it off too
    up to ``off_up_to`` users (10,000 users one by one take 34 minutes at 5/s)."""
    activations = []
    for count in users:
        for bulk in (False, True):
            if not bulk and count > off_up_to:
                continue
            log(f"  initial provisioning of {count:,} users, Bulk {'on' if bulk else 'off'} ...")
            result = provisioning.run_activation(workdir, count, RATE, shape, listing=True,
                                                 log=log, bulk=bulk)  # fmt: skip
            log(f"    {len(result.calls):,} requests in {result.seconds:,.1f} s")
            activations.append((bulk, result))
    churns = []
    if with_churn:
        for bulk in (False, True):
            log(f"  churn at {RATE:g}/s, Bulk {'on' if bulk else 'off'} ...")
            churns.append((bulk, churn.run(workdir, shape, rate=RATE, bulk=bulk)))
    latencies = []
    for bulk in (False, True):
        log(f"  202 -> write at idle, Bulk {'on' if bulk else 'off'} ...")
        latencies.append((bulk, webhook.latency(workdir, latency_samples, shape, 0.075, bulk)))
    return BulkResult(activations, churns, latencies, str(shape))


def summary_rows(r: BulkResult) -> list[list[str]]:
    """The rows of the full run's summary table."""
    rows = []
    for bulk, res in r.activations:
        if not bulk or res.users != 1000:
            continue
        calls, seconds = len(res.calls), res.seconds
        rows += [
            ["Bulk: 1,000 users / 20 groups at 5/s, requests", f"**{calls:,}**",
             f"≤ {TARGET_REQUESTS}", f"{calls / TARGET_REQUESTS:.3f}",
             _met(calls <= TARGET_REQUESTS and not res.problems)],
            ["Bulk: 1,000 users / 20 groups at 5/s, activate → idle", f"**{seconds:.1f} s**",
             f"≤ {TARGET_SECONDS:g} s", f"{seconds / TARGET_SECONDS:.3f}",
             _met(seconds <= TARGET_SECONDS and not res.problems)],
        ]  # fmt: skip
    for bulk, lat in r.latencies:
        if bulk:
            p99 = lat.p(0.99)
            rows.append(["Bulk: 202 → write at idle, p99", f"**{p99:.1f} ms**",
                         f"< {TARGET_P99_MS:g} ms", f"{p99 / TARGET_P99_MS:.3f}",
                         _met(p99 < TARGET_P99_MS and not lat.missed)])  # fmt: skip
    return rows


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _bulk_requests(r: provisioning.ActivationResult) -> int:
    return sum(1 for _, m, p, _ in r.calls if m == "POST" and p.endswith("/Bulk"))


def _on_off(bulk: bool) -> str:
    return "**on**" if bulk else "off"


def report(r: BulkResult, command: str) -> list[str]:
    """The section of BENCHMARKS.md."""
    rows = []
    baseline = {res.users: res for bulk, res in r.activations if not bulk}
    for bulk, res in r.activations:
        off = baseline.get(res.users)
        bulks = _bulk_requests(res)
        target = ""
        if bulk and res.users == 1000:
            ok = len(res.calls) <= TARGET_REQUESTS and res.seconds <= TARGET_SECONDS
            target = f"{'met' if ok else 'NOT met'} (≤ {TARGET_REQUESTS}, ≤ {TARGET_SECONDS:g} s)"
        rows.append([
            f"{res.users:,} / {res.groups:,}", _on_off(bulk), f"**{len(res.calls):,}**",
            f"{res.pages}", f"{res.writes - bulks:,}", f"{bulks:,}",
            f"**{res.seconds:,.1f} s**",
            f"{len(res.calls) / len(off.calls):.3f}" if off and bulk else "",
            f"{res.seconds / off.seconds:.3f}" if off and bulk else "",
            target, "none" if not res.problems else "; ".join(res.problems),
        ])  # fmt: skip
    lines = [
        f"**Command:** `{command}`; pool {r.shape}; {RATE:g} requests/s, burst 5; scim2-server "
        "(maxOperations 1,000, maxPayloadSize 1 MiB).",
        "",
        "Initial provisioning (the app activated on the existing directory; every request from "
        "the activation's start to idle, its checks and listing included):",
        "",
        table(ACTIVATION_COLUMNS, rows),
        "",
    ]
    if r.churns:
        rows = []
        for bulk, c in r.churns:
            writes = sum(c.sent.values())
            rows.append([_on_off(bulk), f"{writes + c.reads:,}", f"{writes:,}", f"{c.reads:,}",
                         f"{c.minimal.total:,}", f"{c.seconds:,.1f} s",
                         "none" if not c.final_problems else "; ".join(c.final_problems)])  # fmt: skip
        lines += [
            "The churn workload (section 2) at 5 requests/s:",
            "",
            table(CHURN_COLUMNS, rows),
            "",
        ]
    rows = []
    for bulk, lat in r.latencies:
        p99 = lat.p(0.99)
        ok = "" if not bulk else ("met" if p99 < TARGET_P99_MS else "NOT met")
        rows.append([_on_off(bulk), f"{len(lat.ms)}", f"{lat.p(0.5):.1f}", f"{p99:.1f}",
                     f"{max(lat.ms):.1f}" if lat.ms else "-", f"{lat.missed}", ok])  # fmt: skip
    lines += [
        "202 → write at idle, one `user.updated` at a time (ms):",
        "",
        table(LATENCY_COLUMNS, rows),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bulk [--users 1000,10000] [--quick]``: issue 15's figures."""
    import argparse
    import shutil
    import sys
    import tempfile

    from benchmarks import common

    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk")
    p.add_argument("--users", default="1000,10000", help="initial provisioning sizes")
    p.add_argument("--off-up-to", type=int, default=1000, help="also with Bulk off up to N users")
    p.add_argument("--no-churn", action="store_true")
    p.add_argument("--samples", type=int, default=200, help="idle latency samples")
    p.add_argument("--quick", action="store_true", help="200 users, 50 samples, no churn")
    p.add_argument("--pool", default="2x4", type=PoolShape.parse)
    args = p.parse_args(argv)
    sizes = [200] if args.quick else [int(n) for n in args.users.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    try:
        result = run(workdir, args.pool, sizes, 50 if args.quick else args.samples,
                     with_churn=not (args.quick or args.no_churn), off_up_to=args.off_up_to,
                     log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["python -m benchmarks.bulk", *(argv if argv is not None else sys.argv[1:])])
    print(f"code: {common.code_version()}; machine: {common.machine()['cpu']}, "
          f"nproc {common.machine()['nproc']}\n")  # fmt: skip
    print("\n".join(report(result, command)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
