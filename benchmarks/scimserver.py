"""``python -m benchmarks.scimserver``: a scim2-server (``tests.support.scimserver.ScimServer``)
in a process of its own, so that its CPU can be read apart from the benchmark's.

It prints one JSON line (``base_url``, ``token``) once it serves, and serves until its stdin
closes. Every request's arrival is logged (monotonic time, method, path: the clock is the
machine's, the same in every process); ``GET <base_url>/_bench/arrivals`` answers the log and
empties it, ``GET <base_url>/_bench/stored`` the resources stored by type (``User``: n, ...). The garbage collector is off: a full collection over the growing store would stall
the server and bunch its arrivals (see ``benchmarks.provisioning``).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from benchmarks import common

ARRIVALS, STORED = "/_bench/arrivals", "/_bench/stored"


class _Log:
    """The ``inject`` hook: logs arrivals, and answers ``ARRIVALS`` and ``STORED`` itself."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.arrivals: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes] | None:
        path = environ.get("PATH_INFO", "")
        if path.endswith(ARRIVALS):
            with self.lock:
                body, self.arrivals = json.dumps(self.arrivals).encode(), []
            return 200, {"Content-Type": "application/json"}, body
        if path.endswith(STORED):
            kinds = Counter(type(r).__name__.split("[")[0] for r in self.storage.resources)
            return 200, {"Content-Type": "application/json"}, json.dumps(kinds).encode()
        with self.lock:
            self.arrivals.append((time.monotonic(), environ["REQUEST_METHOD"], path))
        return None


def serve() -> int:
    from tests.support.scimserver import ScimServer

    gc.disable()
    with ScimServer() as scim:
        scim.inject(_Log(scim.storage))
        print(json.dumps({"base_url": scim.base_url, "token": scim.token}), flush=True)
        sys.stdin.read()  # until the benchmark closes it (or exits)
    return 0


@dataclass
class ScimProcess:
    """The server as the benchmark sees it: what ``common.activate_when_ready`` needs (its
    ``base_url`` and ``token``), its arrivals and its CPU."""

    process: subprocess.Popen[str]
    base_url: str
    token: str

    @classmethod
    def start(cls) -> ScimProcess:
        process = subprocess.Popen([common.python(), "-m", "benchmarks.scimserver"],
                                   cwd=common.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)  # fmt: skip
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        if "base_url" not in ready:
            process.kill()
            raise RuntimeError("benchmarks.scimserver did not start")
        return cls(process, ready["base_url"], ready["token"])

    def arrivals(self) -> list[tuple[float, str, str]]:
        """(monotonic time, method, path) of the requests since the last call."""
        answer = httpx.get(self.base_url + ARRIVALS, timeout=30)
        answer.raise_for_status()
        return [(t, m, p) for t, m, p in answer.json()]

    def stored(self) -> dict[str, int]:
        """Resources the server holds, by type (``User``, ``Group``)."""
        answer = httpx.get(self.base_url + STORED, timeout=30)
        answer.raise_for_status()
        return {str(k): int(v) for k, v in answer.json().items()}

    def cpu(self) -> float:
        """CPU seconds the server process used so far (all its threads)."""
        return common.process_cpu([self.process.pid]).get(self.process.pid, 0.0)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ScimProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


if __name__ == "__main__":
    raise SystemExit(serve())
