"""``python -m benchmarks.run [--events N] [--quick] [--only ...]``: run the benchmarks, print
the results and record them in BENCHMARKS.md (see its header for the method)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    bulk,
    churn,
    common,
    ingest,
    pacing,
    provisioning,
    ratelimit,
    report,
    scaleout,
    verify,
    webhook,
)
from benchmarks import snapshot as snapshots
from benchmarks.common import PoolShape
from benchmarks.report import fmt_rate, table
from benchmarks.workload import ingest_events, write_jsonl

FULL_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
FULL_PROVISIONING = "1000@5,10000@200"  # users@requests/s
QUICK_PROVISIONING = "200@5,2000@200"
FULL_PACING, QUICK_PACING = 200, 60  # users behind the exact token bucket
FULL_VERIFY, QUICK_VERIFY = 10_000, 1_000  # users of the app verify reads (issue 10)
FULL_SNAPSHOT, QUICK_SNAPSHOT = 100_000, 10_000  # users of the snapshot benchmark (issue 11)
BENCHMARKS = ("ingest", "churn", "webhook", "provisioning", "pacing", "verify", "snapshot",
              "ratelimit", "scaleout", "metrics-overhead", "bulk")  # fmt: skip
FULL_BULK, QUICK_BULK = [1000, 10_000], [200]  # initial provisioning with SCIM Bulk (issue 15)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--events", type=int, help=f"ingest events (default {FULL_EVENTS:,})")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    p.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    p.add_argument("--pool", default="2x1", type=PoolShape.parse,
                   help="worker pool PROCESSESxCONCURRENCY for the ingest benchmark (2x1)")  # fmt: skip
    p.add_argument(
        "--variants",
        default="1x1,1x2,2x2",
        help="other pool shapes whose ingest drain is measured too ('' for none)",
    )
    p.add_argument(
        "--variant-events",
        type=int,
        default=QUICK_EVENTS,
        help="events for the pool-shape variants (default 100,000)",
    )
    p.add_argument(
        "--churn-pool",
        default="2x2",
        type=PoolShape.parse,
        help="worker pool for the churn benchmark (2x2, as the tests run)",
    )
    p.add_argument(
        "--churn-rate",
        type=float,
        help="the app's requests/s during the churn (default: the zscaler profile's)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile `provisioner replay` on the variant-size file",
    )
    p.add_argument("--webhook-seconds", type=float,
                   help="seconds per webhook throughput phase (default 8; --quick 5)")  # fmt: skip
    p.add_argument("--webhook-concurrency", type=int, default=32,
                   help="requests in flight from the webhook load generator (32)")  # fmt: skip
    p.add_argument("--latency-samples", type=int,
                   help="webhook 202 -> SCIM write samples (default 300; --quick 100)")  # fmt: skip
    p.add_argument("--latency-pool", default="2x2", type=PoolShape.parse,
                   help="worker pool for the webhook latency (2x2)")  # fmt: skip
    p.add_argument("--provisioning", metavar="U@R,...",
                   help=f"initial provisioning runs, users@requests/s (default {FULL_PROVISIONING}"
                        f"; --quick {QUICK_PROVISIONING})")  # fmt: skip
    p.add_argument("--provisioning-pool", default="2x6", type=PoolShape.parse,
                   help="worker pool for the initial provisioning (2x6: 2 workers of 6 threads; "
                        "a SCIM call mostly waits)")  # fmt: skip
    p.add_argument("--pacing", type=int, metavar="USERS",
                   help=f"users provisioned behind the exact token bucket (default {FULL_PACING}; "
                        f"--quick {QUICK_PACING})")  # fmt: skip
    p.add_argument("--pacing-baseline", metavar="REF",
                   help="also run the pacing benchmark with the workers and CLI of commit REF "
                        "(before / after in one run)")  # fmt: skip
    p.add_argument("--pacing-pool", default="2x6", type=PoolShape.parse,
                   help="worker pool for the pacing benchmark (2x6, as for provisioning)")  # fmt: skip
    p.add_argument("--verify", type=int, metavar="USERS",
                   help=f"users of the app `verify` reads, 1 %% drifted by hand (default "
                        f"{FULL_VERIFY:,}; --quick {QUICK_VERIFY:,})")  # fmt: skip
    p.add_argument(
        "--verify-rate",
        type=float,
        default=5.0,
        help="the app's requests/s while verify reads it (5, the zscaler profile's)",
    )
    p.add_argument("--snapshot-users", type=int, metavar="U",
                   help=f"users of the snapshot benchmark, also run at U/10 (default "
                        f"{FULL_SNAPSHOT:,}; --quick {QUICK_SNAPSHOT:,})")  # fmt: skip
    p.add_argument("--scaleout-users", type=int, metavar="U",
                   help=f"users of the scale-out's backlog, and of the metrics overhead's runs "
                        f"(default {scaleout.FULL_USERS:,}; --quick {scaleout.QUICK_USERS:,})")  # fmt: skip
    p.add_argument("--scaleout-sizes", default=",".join(map(str, scaleout.SIZES)),
                   help=f"worker processes of the scale-out's pools, {scaleout.THREADS} threads "
                        "each (1,2,4,8)")  # fmt: skip
    p.add_argument("--overhead-rounds", type=int,
                   help=f"on/off pairs of the metrics overhead (default {scaleout.FULL_ROUNDS}; "
                        f"--quick {scaleout.QUICK_ROUNDS})")  # fmt: skip
    p.add_argument("--workdir", help="where files and Redis data go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--output", default=str(common.ROOT / "BENCHMARKS.md"))
    return p.parse_args(argv)


def events_file(workdir: Path, n: int) -> Path:
    path = workdir / f"events-{n}.jsonl"
    if not path.exists():
        t0 = time.monotonic()
        write_jsonl(path, ingest_events(n))
        log(f"generated {n:,} events ({path.stat().st_size / 2**20:,.0f} MiB) "
            f"in {time.monotonic() - t0:.1f}s")  # fmt: skip
    return path


def run_ingest(args: argparse.Namespace, n: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"events": n, "pool": str(args.pool)}
    path = events_file(workdir, n)
    log(f"ingest: whole pipeline, pool {args.pool} ...")
    out["pipeline"] = p = ingest.pipeline(path, n, workdir, args.pool)
    log(f"  {fmt_rate(p.rate)}: {n:,} events applied {p.seconds:.1f}s after replay started "
        f"(replay exited at {p.replay_seconds:.1f}s)")  # fmt: skip
    log(f"ingest: replay with no worker, then the drain by pool {args.pool} ...")
    out["split"] = s = ingest.split(path, n, workdir, args.pool)
    log(f"  replay only {fmt_rate(s.replay_rate)} ({s.replay_seconds:.1f}s); ingest only "
        f"{fmt_rate(s.drain_rate)} ({s.drain_steady_seconds:.1f}s after the first batch; "
        f"{s.drain_seconds:.1f}s from the workers' start)")  # fmt: skip
    variants: list[ingest.SplitResult] = []
    shapes = [PoolShape.parse(v) for v in args.variants.split(",") if v.strip()]
    vn = min(n, args.variant_events)
    if vn == n:
        variants.append(s)
    for shape in shapes:
        if shape == args.pool and vn == n:
            continue
        log(f"ingest: drain of {vn:,} events by pool {shape} ...")
        v = ingest.split(events_file(workdir, vn), vn, workdir, shape)
        log(f"  {fmt_rate(v.drain_rate)} after start-up ({fmt_rate(v.drain_rate_with_startup)} "
            "with it)")  # fmt: skip
        variants.append(v)
    if vn != n and shapes:
        log(f"ingest: drain of {vn:,} events by pool {args.pool} (for comparison) ...")
        variants.insert(0, ingest.split(events_file(workdir, vn), vn, workdir, args.pool))
    out["variants"] = variants
    if args.profile:
        pn = min(n, args.variant_events)
        log(f"ingest: cProfile of `provisioner replay` on {pn:,} events ...")
        out["profile"] = ingest.profile_replay(events_file(workdir, pn), pn, workdir)
        log(f"ingest: cProfile of `provisioner replay` on {pn:,} events, pool {args.pool} "
            "ingesting ...")  # fmt: skip
        out["profile_pool"] = ingest.profile_replay(events_file(workdir, pn), pn, workdir,
                                                    args.pool)  # fmt: skip
    return out


def run_churn(args: argparse.Namespace, workdir: Path) -> churn.ChurnResult:
    log(f"churn: provisioning 200 users in 10 groups, then the churn, pool {args.churn_pool} ...")
    r = churn.run(workdir, args.churn_pool, rate=args.churn_rate)
    log(
        f"  {r.sent_total} write calls sent, {r.minimal.total} minimal: {r.ratio:.3f}; "
        f"final state {'matches' if not r.final_problems else 'DIFFERS from'} the model"
    )
    return r


def run_webhook(args: argparse.Namespace, workdir: Path) -> webhook.WebhookResult:
    seconds = args.webhook_seconds or (5.0 if args.quick else 8.0)
    samples = args.latency_samples or (100 if args.quick else 300)
    return webhook.run(workdir, seconds, args.webhook_concurrency, samples, args.latency_pool,
                       log=log)  # fmt: skip


def run_provisioning(
    args: argparse.Namespace, workdir: Path
) -> list[provisioning.ProvisioningResult]:
    spec = args.provisioning or (QUICK_PROVISIONING if args.quick else FULL_PROVISIONING)
    results = []
    for item in spec.split(","):
        users, _, rate = item.partition("@")
        log(f"provisioning: {int(users):,} users at {float(rate):g} requests/s, pool "
            f"{args.provisioning_pool} ...")  # fmt: skip
        r = provisioning.run(workdir, int(users), float(rate), args.provisioning_pool, log=log)
        log(f"  {len(r.calls):,} calls ({r.reads:,} reads, {r.writes:,} writes), minimal "
            f"{r.minimal_reads + r.minimal_writes:,}: {r.ratio:.3f}; {r.achieved_rate:,.1f} "
            f"requests/s ({r.share:.1%} of the limit); {r.seconds:,.1f} s"
            + (f"; PROBLEMS: {r.problems}" if r.problems else ""))  # fmt: skip
        results.append(r)
    return results


def run_pacing(args: argparse.Namespace, workdir: Path) -> list[pacing.PacingResult]:
    users = args.pacing or (QUICK_PACING if args.quick else FULL_PACING)
    variants = [("after", common.ROOT, common.code_version().removeprefix("commit "))]
    if args.pacing_baseline:
        root, sha = pacing.baseline_code(workdir, args.pacing_baseline)
        variants.insert(0, ("before", root, sha))
    results = []
    for label, root, code in variants:
        log(f"pacing: {users:,} users behind an exact token bucket of {pacing.RATE:g}/s burst "
            f"{pacing.BURST}, pool {args.pacing_pool}, {label} ({code}) ...")  # fmt: skip
        r = pacing.run(workdir, users, args.pacing_pool, label, root, code, log=log)
        log(f"  {r.calls:,} calls, {r.refused} refused ({r.refused_share:.2%}); "
            f"{r.share:.1%} of the limit; {len(r.accepted):,} accepted / {r.minimal:,} minimal; "
            f"{r.seconds:,.1f} s" + (f"; PROBLEMS: {r.problems}" if r.problems else ""))  # fmt: skip
        results.append(r)
    return results


def run_verify(args: argparse.Namespace, workdir: Path) -> verify.VerifyResult:
    users = args.verify or (QUICK_VERIFY if args.quick else FULL_VERIFY)
    log(f"verify: {users:,} users, 1 % drifted by hand, read at {args.verify_rate:g}/s, pool "
        f"{args.provisioning_pool} ...")  # fmt: skip
    r = verify.run(workdir, users, args.verify_rate, args.provisioning_pool, log=log)
    log(f"  {r.verify_calls:,} calls in {r.verify_seconds:.1f} s; {len(r.found & r.injected)} of "
        f"{len(r.injected)} drifts found, {len(r.extra)} more; {r.after['drift']} left after "
        "the repair" + (f"; PROBLEMS: {r.problems}" if r.problems else ""))  # fmt: skip
    return r


def run_ratelimit(workdir: Path) -> ratelimit.RateLimitResult:
    r = ratelimit.run(workdir, log=log)
    failed = [name for name, ok in ratelimit.checks(r).items() if not ok]
    log("  rate limit checks: " + (f"FAILED: {', '.join(failed)}" if failed else "all met"))
    return r


def run_snapshot(args: argparse.Namespace, workdir: Path) -> list[snapshots.SnapshotResult]:
    users = args.snapshot_users or (QUICK_SNAPSHOT if args.quick else FULL_SNAPSHOT)
    results = []
    for n in (users // 10, users):
        log(f"snapshot: {n:,} users, {n // 100:,} groups ...")
        results.append(snapshots.run(workdir, n, log=log))
    return results


def run_scaleout(args: argparse.Namespace, workdir: Path) -> list[scaleout.SizeResult]:
    users = args.scaleout_users or (scaleout.QUICK_USERS if args.quick else scaleout.FULL_USERS)
    limited = scaleout.QUICK_LIMITED if args.quick else scaleout.FULL_LIMITED
    sizes = tuple(int(x) for x in args.scaleout_sizes.split(",") if x.strip())
    return scaleout.scaleout(workdir, users, limited, sizes, log=log)


def run_bulk(args: argparse.Namespace, workdir: Path) -> bulk.BulkResult:
    """Issue 15: SCIM Bulk on and off (off up to 1,000 users: 10,000 one by one take 34 min)."""
    sizes = QUICK_BULK if args.quick else FULL_BULK
    return bulk.run(workdir, PoolShape.parse("2x4"), sizes, 50 if args.quick else 200,
                    with_churn=not args.quick, log=log)  # fmt: skip


def run_overhead(args: argparse.Namespace, workdir: Path) -> scaleout.OverheadResult:
    users = args.scaleout_users or (scaleout.QUICK_USERS if args.quick else scaleout.FULL_USERS)
    rounds = args.overhead_rounds or (scaleout.QUICK_ROUNDS if args.quick else scaleout.FULL_ROUNDS)
    o = scaleout.overhead(workdir, users, rounds, log=log)
    log(f"  workers' CPU per SCIM call: on {o.mean_ms(True):.3f} ms, off {o.mean_ms(False):.3f} "
        f"ms, ratio {o.ratio:.3f} (target ≤ {scaleout.TARGET_OVERHEAD})")  # fmt: skip
    return o


# -- rendering ---------------------------------------------------------------------------------
def render(command: str, info: dict[str, str], started: datetime, elapsed: float,
           ing: dict[str, Any] | None, ch: churn.ChurnResult | None,
           wh: webhook.WebhookResult | None = None,
           prov: list[provisioning.ProvisioningResult] | None = None,
           pace: list[pacing.PacingResult] | None = None,
           ver: verify.VerifyResult | None = None,
           snap: list[snapshots.SnapshotResult] | None = None,
           rl: ratelimit.RateLimitResult | None = None,
           scale: list[scaleout.SizeResult] | None = None,
           over: scaleout.OverheadResult | None = None,
           bk: bulk.BulkResult | None = None) -> str:  # fmt: skip
    lines = [
        f"**Command:** `{command}`  ",
        f"**Machine:** nproc {info['nproc']}, {info['cpu']}, {info['memory']} RAM, {info['os']}, "
        f"Python {info['python']}; {info['redis']}  ",
        f"**Code:** {info['code']}  ",
        f"**Date:** {started:%Y-%m-%d %H:%M} UTC; the run took {elapsed / 60:.1f} min. Load "
        f"average (1, 5, 15 min) {info['load_start']} at the start, {info['load_end']} at the end "
        "(the machine is shared: other processes add noise).",
        "",
        "### Summary",
        "",
    ]
    rows = []
    target = ingest.TARGET_EVENTS_PER_S
    if ing:
        p, s, n = ing["pipeline"], ing["split"], ing["events"]
        for label, rate, detail in (
            (f"ingest, whole pipeline (replay start → all applied), pool {p.shape}", p.rate,
             f"{n:,} events in {p.seconds:.1f} s"),
            ("replay only (`provisioner replay`, no worker running)", s.replay_rate,
             f"{s.replay_seconds:.1f} s"),
            (f"ingest only (drain by pool {s.shape}, after start-up)", s.drain_rate,
             f"{s.drain_steady_seconds:.1f} s; {fmt_rate(s.drain_rate_with_startup)} counting "
             f"the workers' {s.drain_startup_seconds:.1f} s start-up"),
        ):  # fmt: skip
            rows.append([label, f"**{fmt_rate(rate)}** ({detail})", f"≥ {target:,} events/s",
                         f"{rate / target:.3f}", "yes" if rate >= target else "**no**"])  # fmt: skip
    if ch:
        rows.append([
            "SCIM write calls on the churn workload, sent / minimal",
            f"**{ch.ratio:.3f}** ({ch.sent_total} / {ch.minimal.total})", f"≤ {churn.TARGET_RATIO}",
            f"{ch.ratio / churn.TARGET_RATIO:.3f}",
            "yes" if ch.ratio <= churn.TARGET_RATIO and not ch.final_problems else "**no**",
        ])  # fmt: skip
    if wh:
        rows += webhook.summary_rows(wh)
    for r in prov or []:
        rows += provisioning.summary_rows(r)
    for r in pace or []:
        rows += pacing.summary_rows(r)
    if ver:
        rows += verify.summary_rows(ver)
    if snap:
        rows += snapshots.summary_rows(snap[-1])
    if rl:
        rows += ratelimit.summary_rows(rl)
    if scale:
        rows += scaleout.scaleout_summary(scale)
    if over:
        rows += scaleout.overhead_summary(over)
    if bk:
        rows += bulk.summary_rows(bk)
    lines.append(table(["metric", "value", "target", "ratio to target", "met"], rows))
    if ing:
        lines += ["", *ingest_details(ing)]
    if ch:
        lines += ["", *churn_details(ch)]
    if wh:
        lines += ["", *webhook.details(wh)]
    if prov:
        lines += ["", *provisioning.details(prov)]
    if pace:
        lines += ["", *pacing.details(pace)]
    if ver:
        lines += ["", *verify.details(ver)]
    if snap:
        lines += ["", *snapshots.details(snap)]
    if rl:
        lines += ["", *ratelimit.details(rl)]
    if scale:
        lines += ["", *scaleout.scaleout_details(scale)]
    if over:
        lines += ["", *scaleout.overhead_details(over)]
    if bk:
        lines += ["", *bulk.report(bk, command)]
    if ing and ing.get("profile"):
        lines += ["", *profile_details(ing["profile"], ing.get("profile_pool"), ing["pool"],
                                       min(ing["events"], QUICK_EVENTS))]  # fmt: skip
    return "\n".join(lines)


def ingest_details(ing: dict[str, Any]) -> list[str]:
    p, s, n = ing["pipeline"], ing["split"], ing["events"]
    c = s.counters
    out = [
        f"### Ingest ({n:,} events: {c.get('applied', 0):,} applied, {c.get('stale', 0):,} stale, "
        f"{c.get('ignored', 0):,} ignored after a deletion)",
        "",
        table(
            ["phase", "wall s", "events/s", "CPU s: replay", "CPU s: workers", "CPU s: Redis"],
            [
                [
                    f"whole pipeline, pool {p.shape} (replay exits at {p.replay_seconds:.1f} s, "
                    f"peak RSS {p.replay_rss_mb:,.0f} MiB)",
                    f"{p.seconds:.1f}",
                    f"{p.rate:,.0f}",
                    f"{p.replay_cpu:.1f}",
                    f"{p.workers_cpu:.1f}",
                    f"{p.redis_cpu:.1f}",
                ],
                [
                    "replay only",
                    f"{s.replay_seconds:.1f}",
                    f"{s.replay_rate:,.0f}",
                    f"{s.replay_cpu:.1f}",
                    "-",
                    f"{s.replay_redis_cpu:.1f}",
                ],
                [
                    f"ingest only, pool {s.shape} (from the workers' start)",
                    f"{s.drain_seconds:.1f}",
                    f"{s.drain_rate_with_startup:,.0f}",
                    "-",
                    f"{s.drain_workers_cpu:.1f}",
                    f"{s.drain_redis_cpu:.1f}",
                ],
            ],
        ),  # fmt: skip
        "",
        f"CPU per 1,000,000 events in the whole pipeline: replay "
        f"{p.replay_cpu * 1e6 / n:.0f} s, Redis {p.redis_cpu * 1e6 / n:.0f} s, workers "
        f"{p.workers_cpu * 1e6 / n:.0f} s. Even with nothing else running and perfect overlap, "
        f"2 cores need at least {_cpu_bound(p) * 1e6 / n:.0f} s for 1,000,000 events "
        f"(≤ {n / _cpu_bound(p):,.0f} events/s); the replay process, single-threaded and on the "
        "critical path (it validates the whole file before publishing), needs "
        f"{p.replay_cpu * 1e6 / n:.0f} s of one core by itself. "
        f"At the end of the whole-pipeline phase Redis used {p.redis_memory_mb:,.0f} MiB and the "
        f"AOF was {p.aof_mb:,.0f} MiB "
        f"({p.forks} AOF rewrites, each a fork that competes for the 2 cores). "
        f"Redis time in Lua per 1,000-event batch (`INFO commandstats`, EVALSHA): "
        f"`store_batch` {s.publish_lua_ms_per_batch:.1f} ms, `ingest` "
        f"{s.ingest_lua_ms_per_batch:.1f} ms (SLOWLOG: median {s.ingest_lua_p50_ms:.1f} ms, max "
        f"{s.ingest_lua_max_ms:.1f} ms). Redis runs one script at a time, so the two scripts "
        f"alone cap the pipeline at "
        f"{1e6 / max(1e-9, s.publish_lua_ms_per_batch + s.ingest_lua_ms_per_batch):,.0f} events/s, "
        f"and every other client's command waits behind a running `ingest` script.",
    ]
    variants = ing.get("variants") or []
    if variants:
        out += [
            "",
            f"Worker pool shapes, ingest drain of {variants[0].events:,} events "
            "(processes × concurrency):",
            "",
            table(
                [
                    "pool",
                    "events/s after start-up",
                    "events/s incl. start-up",
                    "Lua ms / batch",
                    "CPU s: workers",
                    "CPU s: Redis",
                ],
                [
                    [
                        v.shape,
                        f"{v.drain_rate:,.0f}",
                        f"{v.drain_rate_with_startup:,.0f}",
                        f"{v.ingest_lua_ms_per_batch:.1f}",
                        f"{v.drain_workers_cpu:.1f}",
                        f"{v.drain_redis_cpu:.1f}",
                    ]
                    for v in variants
                ],
            ),  # fmt: skip
        ]
    return out


def _cpu_bound(p: ingest.PipelineResult) -> float:
    """The least wall time 2 cores need for the pipeline's measured CPU."""
    return max(p.replay_cpu, p.redis_cpu, (p.replay_cpu + p.redis_cpu + p.workers_cpu) / 2, 1e-9)


def churn_details(ch: churn.ChurnResult) -> list[str]:
    kinds = sorted(set(ch.sent) | set(ch.minimal.by_kind))
    label = {("Users", "POST"): "create user", ("Users", "PUT"): "update / deactivate user",
             ("Users", "PATCH"): "update user (PATCH)", ("Users", "DELETE"): "delete user",
             ("Groups", "POST"): "create group", ("Groups", "PATCH"): "rename / members",
             ("Groups", "PUT"): "replace group", ("Groups", "DELETE"): "delete group"}  # fmt: skip
    ops = ", ".join(f"{k} {v}" for k, v in sorted(ch.ops.items(), key=lambda kv: -kv[1]))
    out = [
        f"### Churn (pool {ch.shape})",
        "",
        f"{ch.users} users in {ch.groups} groups: {ch.initial_events} events provisioned in "
        f"{ch.initial_seconds:.1f} s (rate limit lifted for the set-up); then {ch.churn_events} "
        f"churn events ({ops}) published at once, applied and reconciled in {ch.seconds:.1f} s "
        f"at a rate limit of {ch.rate}, with {ch.reads} reads (GET) besides the writes. The "
        "deletion guard's threshold is lifted for the workers (`PROVISIONER_GUARD_MINIMUM`).",
        "",
        table(["write call", "sent", "minimal"],
              [[f"{m} {r} ({label.get((r, m), '')})", ch.sent.get((r, m), 0),
                ch.minimal.by_kind.get((r, m), 0)] for r, m in kinds]
              + [["**total**", f"**{ch.sent_total}**", f"**{ch.minimal.total}**"]]),  # fmt: skip
        "",
        "Application state after the initial sync: "
        + ("matches the model." if not ch.initial_problems else
           f"{len(ch.initial_problems)} differences: {'; '.join(ch.initial_problems[:5])}")
        + " After the churn: "
        + ("matches the model." if not ch.final_problems else
           f"**{len(ch.final_problems)} differences**: {'; '.join(ch.final_problems[:8])}"),
    ]  # fmt: skip
    if ch.excess:
        out += [
            "",
            "Objects that received more write calls than the minimal plan, and the "
            "calls each received (seconds after the churn was published):",
            "",
        ]
        rows = []
        for obj, sent, minimal in ch.excess:
            calls = [f"{t:.2f} s {m} {d or ''}".strip() for t, m, o, d in ch.timeline
                     if o == obj and m in churn.WRITE_METHODS]  # fmt: skip
            rows.append([obj, sent, minimal, "; ".join(_short(c) for c in calls)])
        out.append(table(["object", "sent", "minimal", "calls"], rows))
        creations = [t for t, m, o, _ in ch.timeline if m == "POST" and o == "Users"]
        if creations:
            out += ["", f"The {len(creations)} user creations (POST /Users) were sent between "
                    f"{min(creations):.2f} s and {max(creations):.2f} s."]  # fmt: skip
    return out


def _short(call: str) -> str:
    """Summarise a PATCH's operations: 'add:membersx40 remove:members[valx1 ...' -> counts."""
    head, *ops = call.split(" PATCH ", 1)
    if not ops:
        return call
    counts: dict[str, int] = {}
    for op in ops[0].split():
        name, _, n = op.rpartition("x")
        kind = "rename" if "displayName" in name else name.split(":")[0] + " members"
        counts[kind] = counts.get(kind, 0) + (int(n) if n.isdigit() else 1)
    return f"{head} PATCH " + ", ".join(f"{k} {v}" for k, v in counts.items())


def profile_details(prof: ingest.ProfileResult, pooled: ingest.ProfileResult | None, shape: str,
                    n: int) -> list[str]:  # fmt: skip
    headers = ["part", "seconds, no worker"]
    rows = [[k, f"{v:.2f}"] for k, v in prof.groups.items()]
    if pooled is not None:
        headers.append(f"seconds, pool {shape} ingesting")
        for row in rows:
            row.append(f"{pooled.groups.get(row[0], 0.0):.2f}")
    return [
        f"### Profile: `python -m cProfile -m worker.cli.main replay FILE` ({n:,} events)",
        "",
        f"{prof.seconds:.1f} s under the profiler with no worker running"
        + (f", {pooled.seconds:.1f} s with the pool ingesting meanwhile" if pooled else "")
        + ". Cumulative time by part (the profiler inflates Python-heavy parts):",
        "",
        table(headers, rows),
        "",
        "Top functions by own time (no worker):",
        "",
        table(
            ["function", "calls", "own s", "cumulative s"],
            [[f"`{f}`", f"{c:,}", f"{t:.2f}", f"{cu:.2f}"] for f, c, t, cu in prof.top],
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--only", "jumpcloud"]:  # issue 11, a section of its own
        return __import__("benchmarks.jumpcloud", fromlist=["main"]).main(argv[2:])
    if argv[:2] == ["--only", "failover"]:  # issue 13: printed, not in the full run
        return __import__("benchmarks.failover", fromlist=["main"]).main(argv[2:])
    args = parse_args(argv)
    n = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    if args.only == "snapshot":
        key, title = "issue-11", "Issue 11: snapshots"
    elif args.only == "pacing":  # issue 10, a section of its own
        key = "pacing-quick" if args.quick else "pacing-full"
        title = "Issue 10: pacing against an exact token bucket" + (
            " (quick run)" if args.quick else ""
        )
    elif args.only == "bulk":
        key = "bulk-quick" if args.quick else "bulk-full"
        title = "Issue 15: SCIM Bulk" + (" (quick run)" if args.quick else "")
    elif args.only in ("scaleout", "metrics-overhead"):  # issue 14, sections of their own
        key = f"{args.only}-quick" if args.quick else f"{args.only}-full"
        title = {"scaleout": "Issue 14: scale-out",
                 "metrics-overhead": "Issue 14: metrics overhead"}[args.only] + (
            " (quick run)" if args.quick else "")  # fmt: skip
    elif args.only in ("webhook", "provisioning", "verify", "ratelimit"):
        size = "quick" if args.quick else "full"
        key, title = f"{args.only}-{size}", f"Results: {args.only} only ({size} run)"
    elif n == FULL_EVENTS and not args.only:
        key, title = "full", f"Results: full run ({FULL_EVENTS:,} events)"
    elif n == QUICK_EVENTS and not args.only:
        key, title = "quick", f"Results: quick run ({QUICK_EVENTS:,} events)"
    else:
        key = f"events={n}-{args.only or 'all'}"
        title = f"Results: {n:,} events" + (f", {args.only} only" if args.only else "")
    command = " ".join(["python -m benchmarks.run", *argv]).strip()
    info = common.machine()
    started = datetime.now(UTC)
    print(f"command: {command}  (interpreter {sys.executable})")
    print(f"machine: nproc {info['nproc']}; {info['cpu']}; {info['memory']}; {info['os']}; "
          f"Python {info['python']}; {info['redis']}")  # fmt: skip
    print(f"date:    {started:%Y-%m-%d %H:%M:%S} UTC; load average {common.loadavg()}", flush=True)
    info["load_start"] = common.loadavg()
    info["code"] = common.code_version()
    print(f"code:    {info['code']}", flush=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="prov-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ing = ch = wh = prov = pace = ver = snap = rl = scale = over = bk = None
    try:
        if args.only in (None, "ingest"):
            ing = run_ingest(args, n, workdir)
        if args.only in (None, "churn"):
            ch = run_churn(args, workdir)
        if args.only in (None, "webhook"):
            wh = run_webhook(args, workdir)
        if args.only in (None, "provisioning"):
            prov = run_provisioning(args, workdir)
        if args.only in (None, "pacing"):
            pace = run_pacing(args, workdir)
        if args.only in (None, "verify"):
            ver = run_verify(args, workdir)
        if args.only in (None, "snapshot"):
            snap = run_snapshot(args, workdir)
        if args.only in (None, "ratelimit"):
            rl = run_ratelimit(workdir)
        if args.only in (None, "scaleout"):
            scale = run_scaleout(args, workdir)
        if args.only in (None, "metrics-overhead"):
            over = run_overhead(args, workdir)
        if args.only in (None, "bulk"):
            bk = run_bulk(args, workdir)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t0
    info["load_end"] = common.loadavg()
    body = render(command, info, started, elapsed, ing, ch, wh, prov, pace, ver, snap, rl, scale,
                  over, bk)  # fmt: skip
    print()
    print(body)
    if not args.no_write:
        report.write_section(Path(args.output), key, title, body)
        print(f"\n(recorded in {args.output})")
    if key == "full" and elapsed > 300:
        print(f"note: the full run took {elapsed / 60:.1f} min (more than 5 minutes)")
    if rl and not all(ratelimit.checks(rl).values()):
        print("note: a rate limit check failed (the figures tests/test_ratelimit_e2e.py pinned)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
