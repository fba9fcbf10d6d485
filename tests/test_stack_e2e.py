"""``make run`` (``provisioner stack``): it provisions the sample, and whatever stops it (Ctrl-C,
SIGTERM from a supervisor or ``timeout``, SIGHUP from a closed terminal) stops everything it
started: the embedded Redis, the local SCIM app, the worker and the webhook receiver."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _started_by(home: Path) -> list[int]:
    """The live processes whose command line or environment names ``home`` (the stack's own)."""
    mark = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            status = (entry / "stat").read_text().split(") ")[-1].split()[0]
            if status == "Z":  # a zombie is gone, only not yet reaped
                continue
            if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded Redis
    env |= {"PROVISIONER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli.main", "stack", "--concurrency", "2", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as `timeout` gives the command it runs
    )


def _read_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """The stack's output up to the first line holding ``text``."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                continue
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return "".join(seen)
    raise AssertionError(f"{text!r} not printed in {timeout}s; output:\n{''.join(seen)}")


def _wait_gone(home: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _started_by(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_once_provisions_the_sample_and_leaves_nothing_running(tmp_path: Path) -> None:
    stack = _start(tmp_path, "--once")
    output, _ = stack.communicate(timeout=240)
    assert stack.returncode == 0, output
    assert "The application now holds" in output
    assert "stopping everything the stack started" in output
    assert _wait_gone(tmp_path) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_stops_everything_the_stack_started(
    tmp_path: Path, stop: signal.Signals
) -> None:
    stack = _start(tmp_path)
    try:
        _read_until(stack, "workers: 1 Celery worker", timeout=90)  # all four are up
        assert len(_started_by(tmp_path)) >= 4
        os.killpg(stack.pid, stop)  # to the group, as `timeout` and a terminal's hangup do
        output, _ = stack.communicate(timeout=60)
    finally:
        if stack.poll() is None:
            stack.kill()
    assert "stopping everything the stack started" in output
    assert _wait_gone(tmp_path) == [], f"left running after {stop.name}"
