"""Issue 10: ``provisioner verify`` on a large application with drift made behind the product's
back.

U users in U/50 groups (3 groups per user, the provisioning benchmark's directory) are
provisioned by activating the app on the directory with the rate limit lifted; the app's
pace is then set to R requests/s (5, the zscaler profile's) and 1 % of the users and of the
groups are changed in the SCIM application's storage, as an administrator would by hand: a
third of those users get another department, a third are deactivated, a third deleted (and
leave their groups, as in an application); half of those groups are renamed, the others lose
a member and gain a user that is not ours.
``provisioner verify APP --fix --json`` then reads the app (its calls and time), must find
every change and nothing else, and hands them to the pool, which repairs them through the
normal path (its calls and time to idle); a second ``verify`` must find nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import PoolShape
from benchmarks.provisioning import APP, directory
from benchmarks.report import table

DRIFT_SHARE = 0.01
PAGE = 100  # the zscaler profile's page_size


@dataclass
class VerifyResult:
    users: int
    groups: int
    rate: float
    shape: str
    setup_seconds: float
    injected: set[tuple[str, str]]  # (kind, object) expected
    found: set[tuple[str, str]]
    verify_calls: int  # requests the SCIM app received during `verify --fix`
    verify_seconds: float  # the command, start to exit
    report: dict[str, Any]  # its --json
    repair_calls: int
    repair_seconds: float  # verify's exit -> idle
    repair_kinds: dict[str, int]  # "METHOD resource" -> requests
    after: dict[str, Any]  # the second verify's --json
    after_calls: int
    problems: list[str] = field(default_factory=list)

    @property
    def missed(self) -> set[tuple[str, str]]:
        return self.injected - self.found

    @property
    def extra(self) -> set[tuple[str, str]]:
        return self.found - self.injected


def _verify(url: str, *options: str) -> tuple[int, dict[str, Any], float]:
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(common.ROOT)}
    t0 = time.monotonic()
    result = subprocess.run([common.python(), "-m", "worker.cli.main", "verify", APP, "--json",
                             *options], env=env, cwd=common.ROOT, capture_output=True, text=True,
                            timeout=3600)  # fmt: skip
    seconds = time.monotonic() - t0
    if result.returncode not in (0, 1):
        raise RuntimeError(f"verify failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.returncode, json.loads(result.stdout), seconds


def inject(scim: Any, d: Any, rng: random.Random) -> set[tuple[str, str]]:
    """Change 1 % of the users and of the groups in the app's storage; the drift expected."""
    from tests.support import drift

    names = {e["data"]["user"]["id"]: e["data"]["user"]["username"]
             for e in d.events if e["type"] == "user.created"}  # fmt: skip
    chosen = rng.sample(sorted(names), max(3, round(len(names) * DRIFT_SHARE)))
    expected: set[tuple[str, str]] = set()
    for i, uid in enumerate(chosen):
        if i % 3 == 0:
            drift.edit_user(scim, names[uid], department="Changed by hand")
            expected.add(("user_attributes", f"user:{uid}"))
        elif i % 3 == 1:
            drift.edit_user(scim, names[uid], active=False)
            expected.add(("user_attributes", f"user:{uid}"))
        else:
            drift.delete_user(scim, names[uid])  # its groups lose it too, as in an app
            expected.add(("deleted_by_hand", f"user:{uid}"))
            expected |= {("group_members_missing", f"group:{g}") for g, members in
                         d.members.items() if uid in members}  # fmt: skip
    stranger = drift.add_user(scim, "stranger@example.com")
    groups = rng.sample(sorted(d.members), max(2, round(len(d.members) * DRIFT_SHARE)))
    deleted = set(chosen[2::3])
    for i, gid in enumerate(groups):
        name = f"team-{gid[2:]}"
        if i % 2 == 0:
            drift.rename_group(scim, name, f"{name}-renamed")
            expected.add(("group_renamed", f"group:{gid}"))
        else:
            kept = sorted(u for u in d.members[gid] if u not in deleted)
            gone = drift.user_id(scim, names[kept[0]])
            drift.set_members(scim, name, [m for m in drift.members(scim, name) if m != gone]
                              + [stranger])  # fmt: skip
            expected |= {("group_members_missing", f"group:{gid}"),
                         ("group_members_extra", f"group:{gid}")}  # fmt: skip
    return expected


def run(workdir: Path, users: int, rate: float, shape: PoolShape, log: Any = print) -> VerifyResult:
    from tests.support.scimserver import ScimServer
    from worker.cli.status import snapshot

    d = directory(users)
    path = workdir / f"verify-{users}.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in d.events))
    with (
        common.redis_server(workdir, f"verify-{users}") as (server, client),
        ScimServer() as scim,
    ):
        pool = common.start_pool(server.url, shape)
        try:
            common.wait_for(lambda: common.workers_ready(client, shape.processes), 60,
                            what="workers")  # fmt: skip
            t0 = time.monotonic()
            common.cli(server.url, "replay", str(path))
            common.settled(client, 300)
            log(f"  provisioning {users:,} users and {len(d.members)} groups (rate limit "
                "lifted) ...")  # fmt: skip
            common.activate_when_ready(server.url, client, shape.processes, scim, workdir, APP,
                                       "--rate", "10000", "--burst", "1000")  # fmt: skip
            common.settled(client, 1800, interval=0.5)
            setup = time.monotonic() - t0
            common.cli(server.url, "apps", "update", APP, "--rate", f"{rate:g}", "--burst", "5")
            injected = inject(scim, d, random.Random(10))
            calls: list[tuple[float, str, str]] = []
            scim.inject(lambda e: calls.append((time.monotonic(), e["REQUEST_METHOD"],
                                                e["PATH_INFO"])))  # fmt: skip
            log(f"  {len(injected)} drifts made by hand; `verify --fix` at {rate:g}/s ...")
            code, report, verify_seconds = _verify(server.url, "--fix")
            verify_calls = report["calls"]  # the repair starts before the command exits
            exited = time.monotonic()
            repaired = common.settled(client, 1800, interval=0.5)
            repair = calls[verify_calls:]
            kinds: dict[str, int] = {}
            for _, method, p in repair:
                kind = f"{method} {p.strip('/').split('/')[1]}"
                kinds[kind] = kinds.get(kind, 0) + 1
            log(f"  repaired in {repaired - exited:.1f} s ({len(repair)} calls); verifying again")
            before_after = len(calls)
            _, after, _ = _verify(server.url)
            after_calls = len(calls) - before_after
            scim.inject(None)
            problems = [f"app {a}: {len(s['parked'])} parked" for a, s in
                        snapshot(client)["apps"].items() if s["parked"]]  # fmt: skip
            if code != 1:
                problems.append(f"verify --fix exited {code}")
            if after["drift"]:
                items = [f"{i['kind']} {i['object']}: {i['detail']}" for i in after["items"][:5]]
                problems.append(f"left after the repair: {'; '.join(items)}")
        finally:
            pool.stop()
    found = {(i["kind"], i["object"]) for i in report["items"]}
    return VerifyResult(
        users=users, groups=len(d.members), rate=rate, shape=str(shape), setup_seconds=setup,
        injected=injected, found=found, verify_calls=verify_calls, verify_seconds=verify_seconds,
        report=report, repair_calls=len(repair), repair_seconds=repaired - exited,
        repair_kinds=kinds, after=after, after_calls=after_calls, problems=problems,
    )  # fmt: skip


# -- rendering ---------------------------------------------------------------------------------
def _label(r: VerifyResult) -> str:
    return f"{r.users:,} users / {r.groups:,} groups at {r.rate:g} requests/s"


def pages(r: VerifyResult) -> int:
    """The pages that hold the app: its users (ours and a stranger's) and its groups."""
    users = r.report["users_in_app"]
    return -(-users // PAGE) + -(-(r.report["groups_in_app"] or 0) // PAGE)


def summary_rows(r: VerifyResult) -> list[list[str]]:
    objects = r.users + r.groups
    per_1000 = r.verify_calls / objects * 1000
    complete = not r.missed and not r.extra
    return [
        [f"verify, {_label(r)}: calls (pages of {PAGE})", f"**{r.verify_calls:,}** "
         f"({per_1000:.1f} per 1,000 objects; {r.verify_seconds:.1f} s)", f"≤ {pages(r)} pages",
         f"{r.verify_calls / pages(r):.3f}", _met(r.verify_calls <= pages(r))],
        [f"verify, {_label(r)}: drift found / made by hand (1 %)",
         f"**{len(r.found & r.injected)} / {len(r.injected)}** ({len(r.extra)} reported that "
         "were not made)", "all, nothing else", "1.000" if complete else "-", _met(complete)],
        [f"verify --fix, {_label(r)}: repaired (a second verify finds nothing)",
         f"**{r.after['drift']} left** ({r.repair_calls:,} calls in {r.repair_seconds:.1f} s)",
         "0 left", "-", _met(r.after["drift"] == 0 and not r.problems)],
    ]  # fmt: skip


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def details(r: VerifyResult) -> list[str]:
    rep = r.report
    kinds = ", ".join(f"{k} {n}" for k, n in rep["by_kind"].items())
    repair = ", ".join(f"{k} {n:,}" for k, n in sorted(r.repair_kinds.items()))
    return [
        f"### `verify` on {r.users:,} users and {r.groups:,} groups (issue 10)",
        "",
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "",
        table(["phase", "calls", "wall s", "what"], [
            ["set-up: directory published, `apps activate` with the limit lifted, idle", "-",
             f"{r.setup_seconds:,.1f}", f"pool {r.shape}"],
            [f"`verify --fix` at {r.rate:g}/s", f"{r.verify_calls:,}", f"{r.verify_seconds:,.1f}",
             f"{rep['users_in_app']:,} users and {rep['groups_in_app']:,} groups read; "
             f"{rep['drift']} drift ({kinds}); {rep['marked']} keys marked; "
             f"{rep['waited_for_live_changes']:.1f} s waiting for live changes"],
            ["repair by the pool (verify's exit → idle)", f"{r.repair_calls:,}",
             f"{r.repair_seconds:,.1f}", repair],
            ["`verify` again", f"{r.after_calls:,}", "-", f"{r.after['drift']} drift"],
        ]),
        "",
        f"Drift made by hand: {len(r.injected)}; found: {len(r.found & r.injected)}; missed: "
        f"{sorted(r.missed)[:5] or 'none'}; reported but not made: {sorted(r.extra)[:5] or 'none'}"
        + (f". **Problems: {'; '.join(r.problems)}.**" if r.problems else "."),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.verify [--users N] [--rate R] [--quick]``."""
    import argparse
    import shutil
    import sys
    import tempfile

    p = argparse.ArgumentParser(prog="python -m benchmarks.verify")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="1,000 users (a development check)")
    p.add_argument("--pool", default="2x6", type=PoolShape.parse)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prov-verify-"))
    try:
        r = run(workdir, 1000 if args.quick else args.users, args.rate, args.pool)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["python -m benchmarks.verify", *(argv or sys.argv[1:])])
    print(f"\n**Command:** `{command}`; **code:** {common.code_version()}\n")
    print(table(["metric", "value", "target", "ratio to target", "met"], summary_rows(r)))
    print("\n".join(["", *details(r)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
