"""``provisioner worker`` as ``tests.support.worker_process`` runs it, and each run of a key
logged: when the run held the key, on Redis's clock (``TIME``, whatever the worker's own clock
says), appended to the Redis list ``RUN_LOG`` as JSON ``[key, start_ms, end_ms, worker,
token]``. A test reads it (``runs``) to check that no key was ever reconciled by two workers
at once (``overlaps``). The interval is the reconcile itself (``worker.sync.runner._run``),
inside the claim and the release of the key's lease.

Usage: ``python -m tests.support.run_log worker --hostname NAME ...`` (as ``worker_process``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

RUN_LOG = "prov:test:runs"  # under the product's prefix: ``reset_state`` clears it


@dataclass(frozen=True)
class Run:
    key: str
    start_ms: int
    end_ms: int
    worker: str
    token: str


def runs(client: redis.Redis) -> list[Run]:
    """Every run logged so far, in the order they ended."""
    return [Run(*json.loads(raw)) for raw in client.lrange(RUN_LOG, 0, -1)]


def overlaps(logged: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of the same key whose intervals intersect."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in logged:
        by_key[run.key].append(run)
    found = []
    for key_runs in by_key.values():
        key_runs.sort(key=lambda run: run.start_ms)
        for before, after in zip(key_runs, key_runs[1:], strict=False):
            if after.start_ms < before.end_ms:
                found.append((before, after))
    return found


def _ms(reply: Any) -> int:
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


def logged(run: Callable[..., float], worker: str) -> Callable[..., float]:
    """``runner._run``, each call logged with its interval on Redis's clock."""

    def wrapper(lease: Any, *args: Any, **kwargs: Any) -> float:
        start = _ms(lease.redis.time())
        try:
            return run(lease, *args, **kwargs)
        finally:
            end = _ms(lease.redis.time())
            entry = [str(lease.key), start, end, worker, lease.token]
            lease.redis.rpush(RUN_LOG, json.dumps(entry))

    return wrapper


def main() -> int:
    from tests.support import worker_process
    from worker.sync import runner

    argv = sys.argv[1:]
    worker = argv[argv.index("--hostname") + 1] if "--hostname" in argv else "?"
    runner._run = logged(runner._run, worker)  # type: ignore[assignment]
    return worker_process.main()


if __name__ == "__main__":
    sys.exit(main())
