"""The test side of a Django SCIM server run by ``serve``: start, reset, read, stop.

It offers what the harness needs of a SCIM application (as ``ScimServer`` does): ``base_url``,
``token``, ``users()`` and ``groups()`` as plain SCIM JSON read over SCIM, ``requests`` as
``(method, path)`` pairs, ``clear_requests()``, ``reset()``, ``start()``/``stop()``; and
``exchanges()``, every logged request with its status and both bodies.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.django_scim.serve import RESET_PATH

ROOT = Path(__file__).resolve().parents[3]
BASE_PATH = "/scim/v2"  # where both projects mount their library


class DjangoScimServer:
    """One Django SCIM project in a subprocess; use as a context manager."""

    name = ""
    settings_module = ""
    page_size = 50  # what ``users()``/``groups()`` ask for per page

    def __init__(self, token: str = "test-token-s3cr3t", workdir: Path | None = None) -> None:
        self.token = token
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name or 'django'}-scim-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.log_path = workdir / "requests.jsonl"
        self.stderr_path = workdir / "server.stderr"
        self.base_url = ""
        self.origin = ""
        self._process: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 60) -> DjangoScimServer:
        self.log_path.write_text("")
        env = {**os.environ, "SCIM_TEST_TOKEN": self.token, "PYTHONPATH": str(ROOT)}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        command = [sys.executable, "-m", "tests.support.django_scim.serve",
                   "--settings", self.settings_module, "--db", str(self.workdir / "db.sqlite3"),
                   "--log", str(self.log_path)]  # fmt: skip
        with open(self.stderr_path, "w") as stderr:
            self._process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                start_new_session=True,
            )  # fmt: skip
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {self.stderr_path.read_text()[-3000:]}")
        self.origin = f"http://127.0.0.1:{int(line.split()[1])}"
        self.base_url = self.origin + BASE_PATH
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> DjangoScimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks --------------------------------------------------------
    def reset(self) -> None:
        """Delete every user and group, and empty the request log."""
        headers = {"Authorization": f"Bearer {self.token}"}
        httpx.post(self.origin + RESET_PATH, headers=headers, timeout=10).raise_for_status()
        self.clear_requests()

    def clear_requests(self) -> None:
        self.log_path.write_text("")

    def exchanges(self) -> list[dict[str, Any]]:
        """Every request since the last clear: method, path, query, status and both bodies."""
        text = self.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request since the last clear, in order."""
        return [(e["method"], e["path"]) for e in self.exchanges()]

    def server_errors(self) -> str:
        """What the server wrote to stderr (tracebacks of its 500s)."""
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    # -- the application's state, read over SCIM ---------------------------
    def users(self) -> list[dict[str, Any]]:
        return list(self._list("Users"))

    def groups(self) -> list[dict[str, Any]]:
        return list(self._list("Groups"))

    def _list(self, endpoint: str) -> Iterator[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as http:
            start = 1
            while True:
                params = {"startIndex": start, "count": self.page_size}
                resp = http.get(f"/{endpoint}", params=params)
                resp.raise_for_status()
                page = resp.json()
                resources = page.get("Resources") or []
                yield from resources
                start += len(resources)
                if not resources or start > page["totalResults"]:
                    return
