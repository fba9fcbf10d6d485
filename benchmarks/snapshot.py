"""Full-state snapshots (issue 11): ``provisioner snapshot FILE`` against a projection of U users
and U/100 groups built from ordinary events.

1. the snapshot of the directory as the projection holds it: must derive and publish 0 events;
2. the snapshot after 1 % of the directory changed (records, suspensions, departures, hires,
   moves between groups, group renames, a new group, a deleted group, direct associations):
   must publish exactly the changes (counted here, from the changes made);
3. that snapshot again once applied: 0 events.

Each run is a ``provisioner snapshot`` process; its wall time, CPU and peak RSS (``wait4``) are
measured, with Redis's CPU. No worker runs: the projection is applied here with
``lua/ingest.lua``, and the app is not active (no reconcile, no SCIM call).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks import common
from benchmarks.workload import BASE_EPOCH, user_record

APP = "bench-inactive"
GROUPS_PER_USER = 2
TAKEN_AT = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_EPOCH + 86_400))


@dataclass
class Directory:
    users: dict[str, dict[str, Any]]
    groups: dict[str, tuple[str, list[str]]]
    app_groups: list[str]
    app_users: list[str]

    def lines(self) -> Any:
        yield {"kind": "snapshot", "taken_at": TAKEN_AT, "source": "bench:org"}
        for record in self.users.values():
            yield {"kind": "user", "user": record}
        for gid, (name, members) in self.groups.items():
            yield {"kind": "group", "group": {"id": gid, "name": name}, "members": members}
        yield {"kind": "app", "app_id": APP, "groups": self.app_groups, "users": self.app_users}

    def write(self, path: Path) -> Path:
        with path.open("w") as f:
            for line in self.lines():
                f.write(json.dumps(line) + "\n")
        return path


def directory(users: int, seed: int = 11) -> Directory:
    rng = random.Random(seed)
    n_groups = max(1, users // 100)
    records = {f"u-{i}": user_record(f"u-{i}", rng) for i in range(users)}
    members: dict[str, list[str]] = {f"g-{j}": [] for j in range(n_groups)}
    for uid in records:
        for gid in rng.sample(sorted(members), min(GROUPS_PER_USER, n_groups)):
            members[gid].append(uid)
    groups = {gid: (f"Group {gid}", m) for gid, m in members.items()}
    app_groups = sorted(members)[: max(1, n_groups // 10)]
    app_users = sorted(records)[: max(1, users // 200)]
    return Directory(records, groups, app_groups, app_users)


def events(d: Directory) -> Any:
    """The directory as ordinary events, all older than the snapshot."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE_EPOCH))
    n = 0

    def event(kind: str, **data: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {"id": f"ev-{n}", "type": kind, "occurred_at": f"{stamp}.{n % 1000:03d}Z",
                "data": data}  # fmt: skip

    for record in d.users.values():
        yield event("user.created", user=record)
    for gid, (name, members) in d.groups.items():
        yield event("group.created", group={"id": gid, "name": name})
        for uid in members:
            yield event("group.member_added", group_id=gid, user_id=uid)
    for gid in d.app_groups:
        yield event("app.group_associated", app_id=APP, group_id=gid)
    for uid in d.app_users:
        yield event("app.user_associated", app_id=APP, user_id=uid)


def change(d: Directory, seed: int = 12) -> tuple[Directory, Counter[str]]:
    """1 % of the directory changed; the events that must come of it, by type."""
    rng = random.Random(seed)
    users = {u: dict(r) for u, r in d.users.items()}
    groups = {g: (name, list(m)) for g, (name, m) in d.groups.items()}
    expected: Counter[str] = Counter()
    group_ids = sorted(groups)
    k = max(1, len(groups) // 100)
    for gid in group_ids[:k]:
        groups[gid] = (groups[gid][0] + " (renamed)", groups[gid][1])
        expected["group.renamed"] += 1
    for gid in group_ids[-k:]:  # deleted: its members and associations go with it
        del groups[gid]
        expected["group.deleted"] += 1
    app_groups = [g for g in d.app_groups if g in groups]
    expected["app.group_disassociated"] += len(d.app_groups) - len(app_groups)
    surviving = sorted(groups)
    n = max(10, len(users) // 100)
    picked = rng.sample(sorted(users), n)
    a, b, c = n * 4 // 10, n * 6 // 10, n * 8 // 10
    for uid in picked[:a]:
        users[uid]["department"] = "Changed"
        expected["user.updated"] += 1
    for uid in picked[a:b]:
        users[uid]["state"] = "suspended"
        expected["user.suspended"] += 1
    for uid in picked[b:c]:
        del users[uid]
        expected["user.deleted"] += 1
        for _, members in groups.values():
            if uid in members:
                members.remove(uid)
                expected["group.member_removed"] += 1
    app_users = [u for u in d.app_users if u in users]
    expected["app.user_disassociated"] += len(d.app_users) - len(app_users)
    for uid in picked[c:]:  # moves from one of its groups to one it was not in
        old = next((g for g in surviving if uid in groups[g][1]), None)
        others = [g for g in surviving if uid not in groups[g][1]]
        if old is None or not others:
            continue
        new = rng.choice(others)
        groups[old][1].remove(uid)
        groups[new][1].append(uid)
        expected["group.member_removed"] += 1
        expected["group.member_added"] += 1
    for i in range(n // 10):  # hires, each in one group
        uid = f"u-new-{i}"
        users[uid] = user_record(uid, rng)
        groups[surviving[i % len(surviving)]][1].append(uid)
        expected["user.created"] += 1
        expected["group.member_added"] += 1
    groups["g-new"] = ("A new group", rng.sample(sorted(users), 5))
    expected["group.created"] += 1
    expected["group.member_added"] += 5
    app_groups.append("g-new")
    expected["app.group_associated"] += 1
    return Directory(users, groups, app_groups, app_users), +expected  # +: no zero counts


@dataclass
class Run:
    label: str
    seconds: float
    cpu: float
    rss_mb: float
    redis_cpu: float
    difference: int  # events derived
    published: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class SnapshotResult:
    users: int
    groups: int
    memberships: int
    file_mb: float
    setup_seconds: float
    runs: list[Run]
    expected: dict[str, int]
    baseline_rss_mb: float  # `provisioner --help`: the interpreter and the CLI's imports
    redis_memory_mb: float

    @property
    def problems(self) -> list[str]:
        out = []
        if self.runs[0].published or self.runs[0].difference:
            out.append(f"unchanged snapshot published {self.runs[0].published} events")
        if self.runs[1].counts != self.expected or self.runs[1].published != sum(
            self.expected.values()
        ):
            out.append(f"changed snapshot: {self.runs[1].counts}, expected {self.expected}")
        if self.runs[2].published or self.runs[2].difference:
            out.append(f"the changed snapshot again published {self.runs[2].published} events")
        return out


# Runs a command and writes its own CPU and peak RSS (wait4) to the file $RUSAGE_OUT. A small
# launcher: Linux keeps a process's peak RSS across fork and exec, so a child of this benchmark
# (which holds the whole directory in memory) would report at least this process's size.
LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
with open(os.environ["RUSAGE_OUT"], "w") as f:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _measure(url: str, client: redis.Redis, workdir: Path, label: str, *args: str) -> Run:
    """Run ``provisioner ARGS`` through the launcher; its output parsed."""
    out_path, err_path = workdir / "snapshot.out", workdir / "snapshot.err"
    usage_path = workdir / "snapshot.rusage"
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(common.ROOT),
           "RUSAGE_OUT": str(usage_path)}  # fmt: skip
    cpu0 = common.redis_cpu(client)
    t0 = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        code = subprocess.call([common.python(), "-c", LAUNCHER, common.python(), "-m",
                                "worker.cli.main", *args], env=env, cwd=common.ROOT, stdout=out,
                               stderr=err)  # fmt: skip
    seconds = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"provisioner {' '.join(args)} exited {code}: "
                           f"{err_path.read_text()[-2000:]}")  # fmt: skip
    usage = json.loads(usage_path.read_text())
    counts = {}
    published = difference = 0
    for line in out_path.read_text().splitlines():
        words = line.split()
        if line.startswith("  ") and len(words) == 2 and "." in words[0]:
            counts[words[0]] = int(words[1].replace(",", ""))
        elif line.startswith("difference:"):
            difference = int(words[1])
        elif line.startswith("published "):
            published = int(words[1])
    return Run(label, seconds, usage["cpu"], usage["rss_kib"] / 1024,
               common.redis_cpu(client) - cpu0, difference, published, counts)  # fmt: skip


def _apply(client: redis.Redis) -> None:
    """Apply every pending batch here (no worker runs)."""
    from worker.store import keys, scripts

    for batch_id in client.zrange(keys.PENDING_BATCHES, 0, -1):
        scripts.run(client, "ingest", batch_id.decode())


def _publish_all(client: redis.Redis, documents: Any) -> None:
    from worker.contract.events import parse_documents
    from worker.queue.publish import publish

    chunk: list[dict[str, Any]] = []
    for document in documents:
        chunk.append(document)
        if len(chunk) == 10_000:
            publish(client, parse_documents(chunk), notify=False)
            _apply(client)
            chunk = []
    if chunk:
        publish(client, parse_documents(chunk), notify=False)
        _apply(client)


def run(workdir: Path, users: int, log: Any = print) -> SnapshotResult:
    d = directory(users)
    changed, expected = change(d)
    same = d.write(workdir / f"snapshot-{users}.jsonl")
    other = changed.write(workdir / f"snapshot-{users}-changed.jsonl")
    memberships = sum(len(m) for _, m in d.groups.values())
    from worker import config

    with common.redis_server(workdir, f"snapshot-{users}") as (server, client):
        os.environ["REDIS_URL"] = server.url  # this process publishes the directory's events
        config.settings.cache_clear()
        t0 = time.monotonic()
        _publish_all(client, events(d))
        setup = time.monotonic() - t0
        log(f"  projection of {users:,} users, {len(d.groups):,} groups, {memberships:,} "
            f"memberships built in {setup:.1f} s")  # fmt: skip
        runs = []
        for label, path in (("unchanged", same), ("1 % changed", other), ("again", other)):
            r = _measure(server.url, client, workdir, label, "snapshot", str(path), "--show", "0")
            log(f"  {label}: {r.difference:,} events derived, {r.published:,} published in "
                f"{r.seconds:.1f} s; peak RSS {r.rss_mb:.0f} MiB")  # fmt: skip
            _apply(client)
            runs.append(r)
        redis_memory = common.used_memory_mb(client)
        baseline = _measure(server.url, client, workdir, "baseline", "snapshot", "--help")
    return SnapshotResult(users, len(d.groups), memberships, same.stat().st_size / 2**20, setup,
                          runs, dict(expected), baseline.rss_mb, redis_memory)  # fmt: skip


# -- rendering ---------------------------------------------------------------------------------
def summary_rows(r: SnapshotResult) -> list[list[str]]:
    unchanged, changed = r.runs[0], r.runs[1]
    total = sum(r.expected.values())
    return [
        [f"snapshot of {r.users:,} users against a matching projection: events published",
         f"**{unchanged.published}** ({unchanged.seconds:.1f} s, peak RSS "
         f"{unchanged.rss_mb:.0f} MiB)", "0", "-", "yes" if not unchanged.published else "**no**"],
        [f"snapshot after 1 % of {r.users:,} users changed: events published / changes",
         f"**{changed.published}** / {total} ({changed.seconds:.1f} s)", f"= {total}", "-",
         "yes" if not r.problems else "**no**"],
    ]  # fmt: skip


def details(results: list[SnapshotResult]) -> list[str]:
    from benchmarks.report import table

    rows = []
    for r in results:
        for run_ in r.runs:
            rows.append([f"{r.users:,}", run_.label, f"{run_.difference:,}", f"{run_.published:,}",
                         f"{run_.seconds:.1f}", f"{run_.cpu:.1f}", f"{run_.redis_cpu:.1f}",
                         f"{run_.rss_mb:.0f}"])  # fmt: skip
    last = results[-1]
    out = [
        "### Snapshots (issue 11)",
        "",
        f"`provisioner snapshot FILE` against a projection built from ordinary events (users in "
        f"{GROUPS_PER_USER} groups each, a group per 100 users, an app with a tenth of the groups "
        "and 0.5 % of the users directly), no worker running. Peak RSS is the process's own "
        f"(`wait4`); `provisioner snapshot --help` alone peaks at {last.baseline_rss_mb:.0f} MiB "
        "(the interpreter and the imports).",
        "",
        table(
            [
                "users",
                "snapshot",
                "events derived",
                "published",
                "wall s",
                "CPU s",
                "Redis CPU s",
                "peak RSS MiB",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    for r in results:
        out += [] if out[-1] == "" else [""]
        out.append(
            f"{r.users:,} users, {r.groups:,} groups, {r.memberships:,} memberships: the snapshot "
            f"file is {r.file_mb:.1f} MiB, the projection took {r.setup_seconds:.1f} s to build, "
            f"Redis used {r.redis_memory_mb:.0f} MiB at the end. The 1 % change expected "
            + ", ".join(f"{k} {v}" for k, v in sorted(r.expected.items()))
            + (f"; **problems**: {'; '.join(r.problems)}" if r.problems else "; all as expected.")
        )
    return out
