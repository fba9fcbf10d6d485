"""Issue 11: ``provisioner jumpcloud follow``, from a change visible in Directory Insights to
the SCIM write it causes.

The local JumpCloud double (``tests/support/jumpcloud.py``) stands for JumpCloud; a real
scim2-server app (profile ``zscaler``, rate limit lifted), a worker pool and an embedded Redis
(AOF on, ``appendfsync everysec``) stand for the pool. U users in one group bound to the
application are synced (``provisioner jumpcloud sync``), then ``provisioner jumpcloud follow
--interval 1`` runs (its default pace of 5 requests/s to JumpCloud) and, once it has caught up
with the set-up's events (its first run starts a minute back), one at a time, a user's
department changes in the double: the ``user_update`` event is visible to the events
API from the moment it is recorded (``visible``), and the sample ends when that user's PUT
reaches the SCIM server. Between samples the benchmark waits a random 0.2 to 1.2 s, so the
changes fall anywhere in the poll cycle. ``journaled`` splits each sample: recorded -> the
follower's event in the journal (poll wait, the user's read, publish), then the pool's part.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import PoolShape
from benchmarks.report import table

APP = "zs"
USERS = 50
INTERVAL = 1.0


@dataclass
class FollowResult:
    samples: int
    users: int
    shape: str
    interval: float
    ms: list[float] = field(default_factory=list)  # visible -> SCIM write
    journal_ms: list[float] = field(default_factory=list)  # visible -> in the journal
    missed: int = 0
    troubles: list[str] = field(default_factory=list)  # the follower's warnings and errors
    requests: int = 0  # to JumpCloud during the samples
    seconds: float = 0.0

    def p(self, q: float, values: list[float] | None = None) -> float:
        return common.percentile(self.ms if values is None else values, q)


def run(workdir: Path, samples: int, shape: PoolShape, log: Any = print) -> FollowResult:
    from tests.support.jumpcloud import FakeJumpCloud
    from tests.support.scimserver import ScimServer
    from worker.store import keys

    result = FollowResult(samples, USERS, str(shape), INTERVAL)
    rng = random.Random(11)
    with (
        common.redis_server(workdir, "jumpcloud") as (server, client),
        ScimServer() as scim,
        FakeJumpCloud() as fake,
    ):
        pool = common.start_pool(server.url, shape)
        follower = None
        try:
            common.activate_when_ready(server.url, client, shape.processes, scim, workdir, APP,
                                       "--rate", "10000", "--burst", "1000")  # fmt: skip
            uids = [fake.add_user(f"lat{i:03d}", department="Engineering") for i in range(USERS)]
            group = fake.add_group("latency")
            for uid in uids:
                fake.add_member(group, uid)
            application = fake.add_application()
            fake.bind(application, "user_group", group)
            key = workdir / "jumpcloud.key"
            key.write_text(fake.api_key)
            env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(common.ROOT),
                   "PROVISIONER_HOME": str(workdir)}  # fmt: skip
            base = [common.python(), "-m", "worker.cli.main", "jumpcloud"]
            options = ["--api-key-file", str(key), "--api-url", fake.url, "--app",
                       f"{APP}={application}"]  # fmt: skip
            subprocess.run([*base, "sync", *options], env=env, cwd=common.ROOT, check=True,
                           capture_output=True, timeout=300)  # fmt: skip
            common.settled(client, 120)
            remote = {u["userName"]: u["id"] for u in scim.users()}
            rid = {uid: remote[f"lat{i:03d}"] for i, uid in enumerate(uids)}
            writes: queue.Queue[tuple[float, str]] = queue.Queue()

            def record(environ: dict[str, Any]) -> None:
                method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
                if method in ("PUT", "PATCH") and path.startswith("/v2/Users/"):
                    writes.put((time.monotonic(), path.rsplit("/", 1)[-1]))

            scim.inject(record)
            with open(workdir / "follow.log", "ab") as out:
                follower = subprocess.Popen([*base, "follow", *options, "--interval", str(INTERVAL),
                                             "--sync-every", "off"], env=env, cwd=common.ROOT,
                                            stdout=out, stderr=out)  # fmt: skip

            def caught_up() -> bool:  # its first poll starts a minute back: the set-up's events
                raw = client.get(keys.jumpcloud("default", "cursor"))
                return bool(raw) and json.loads(raw)["search_after"] == list(fake.rows[-1].key)

            common.wait_for(caught_up, 120, what="the follower to catch up")
            time.sleep(1.5)  # past the first polls
            requests, started = len(fake.requests), time.monotonic()
            for i in range(samples):
                uid = uids[i % len(uids)]
                event = fake.update_user(uid, department=f"Dept {i}")
                assert event is not None
                row = fake.rows[-1]
                deadline = row.visible + 15
                while True:
                    try:
                        at, target = writes.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        result.missed += 1
                        break
                    if target == rid[uid]:
                        result.ms.append((at - row.visible) * 1000)
                        result.journal_ms.append(_journaled(client, event["id"]) - row.ms)
                        break
                time.sleep(rng.uniform(0.2, 1.2))
            result.seconds = time.monotonic() - started
            result.requests = len(fake.requests) - requests
            scim.inject(None)
        finally:
            if follower is not None:
                follower.send_signal(signal.SIGTERM)
                follower.wait(timeout=30)
                log_lines = (workdir / "follow.log").read_text(errors="replace").splitlines()
                result.troubles = [x for x in log_lines if " WARNING " in x or " ERROR " in x]
            pool.stop()
    log(f"  p50 {result.p(0.5):.0f} ms, p99 {result.p(0.99):.0f} ms, max "
        f"{max(result.ms, default=0):.0f} ms, {result.missed} missed")  # fmt: skip
    for line in result.troubles:
        log(f"  follower: {line}")
    return result


def _journaled(client: Any, insights_id: str) -> float:
    """When the follower's event for an Insights event entered the journal (ms since epoch:
    the stream entry's id, Redis's clock, on this machine)."""
    from worker.store import keys

    for entry_id, fields in client.xrevrange(keys.JOURNAL, count=50):
        if json.loads(fields[b"e"])["id"] == f"jc-{insights_id}":
            return float(entry_id.split(b"-")[0])
    return float("nan")


# -- rendering ---------------------------------------------------------------------------------
def details(r: FollowResult, command: str) -> list[str]:
    def ms(values: list[float]) -> list[str]:
        return [f"{r.p(q, values):,.0f} ms" for q in (0.5, 0.9, 0.99)] + [
            f"{max(values, default=0):,.0f} ms"
        ]

    pool = [a - b for a, b in zip(r.ms, r.journal_ms, strict=True)]
    return [
        f"**Command:** `{command}`  ",
        f"**Code:** {common.code_version()}; **machine:** nproc {os.cpu_count()}; load "
        f"{common.loadavg()}",
        "",
        f"{r.samples} changes (a user's department), one at a time, {r.users} users in a group "
        f"bound to the application; `follow --interval {r.interval:g}` at its default pace "
        f"(5 requests/s to JumpCloud), pool {r.shape}, app rate limit lifted. A sample runs from "
        "the moment the `user_update` event is visible in the (local) events API to the arrival "
        "of that user's PUT at the SCIM server.",
        "",
        table(["span", "p50", "p90", "p99", "max"], [
            ["**visible in Insights -> SCIM write**", *ms(r.ms)],
            ["visible -> in the journal (the poll's wait, the read, publish)", *ms(r.journal_ms)],
            ["in the journal -> SCIM write (the pool)", *ms(pool)],
        ]),
        "",
        f"{r.missed} changes without a write within 15 s; {len(r.troubles)} warnings or errors "
        f"logged by the follower{': ' + '; '.join(r.troubles[:3]) if r.troubles else ''}; "
        f"{r.requests} requests to JumpCloud in "
        f"{r.seconds:.0f} s ({r.requests / max(r.seconds, 1e-9):.2f}/s: a poll a second and one "
        "read per changed user). With a 1 s interval the wait for the next poll is uniform in "
        "[0, 1 s) plus the poll's own time, which is most of the figure; the pool adds its "
        "ingest, reconcile and PUT.",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.jumpcloud [--samples N] [--no-write]``."""
    import argparse
    import shutil
    import tempfile

    from benchmarks import report

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.jumpcloud", description=__doc__)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--pool", default="2x2", type=PoolShape.parse)
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prov-jumpcloud-"))
    try:
        print(f"jumpcloud follow: {args.samples} samples, pool {args.pool} ...", file=sys.stderr)
        r = run(workdir, args.samples, args.pool, log=lambda m: print(m, file=sys.stderr))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join([".venv/bin/python -m benchmarks.jumpcloud", *argv]).strip()
    body = "\n".join(details(r, command))
    print(body)
    if not args.no_write:
        path = common.ROOT / "BENCHMARKS.md"
        report.write_section(path, "jumpcloud-follow", "Issue 11: JumpCloud follow", body)
        print(f"\n(recorded in {path})")
    return 0 if not r.missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
