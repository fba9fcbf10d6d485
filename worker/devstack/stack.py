"""The local stack behind ``make run``: everything on one machine, started and stopped together.

1. Redis: ``REDIS_URL`` if set, else the embedded redis-server (AOF on, data under ``var/``);
2. a local SCIM application (scim2-server with the enterprise extension, bearer token);
3. a Celery worker pool and the webhook receiver;
4. the app ``zscaler-local`` activated against that application;
5. the sample directory (``examples/directory.jsonl``, then ``changes.jsonl``) replayed,
   progress shown, and the application's users and groups printed after each. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from worker import config
from worker.devstack.redis_server import RedisServer, free_port

APP_ID = "zscaler-local"
SAMPLE = ("directory.jsonl", "changes.jsonl")  # the initial directory, then a day's changes
ROOT = Path(__file__).resolve().parents[2]


def _secret_file(path: Path) -> Path:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
    path.chmod(0o600)
    return path


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer") from None
            time.sleep(0.1)


def _wait_worker(client, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    from worker.queue.sweeper import alive_workers

    while not alive_workers(client):
        if time.monotonic() > deadline:
            raise TimeoutError("no worker came up")
        time.sleep(0.2)


class Stack:
    def __init__(self, concurrency: int):
        self.var = config.var_dir()
        self.var.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.redis_server: RedisServer | None = None
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m ...`` in its own session, its output in ``var/<name>.log``."""
        log = open(self.var / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start(self) -> dict[str, str]:
        if (conf := config.load()).redis_url_env:
            redis_url = conf.redis_url
            print(f"Redis: {conf.redis_target.redacted} (REDIS_URL)")  # no credentials
        else:
            self.redis_server = RedisServer(self.var / "redis")  # stopped even if start is cut
            redis_url = self.redis_server.start().url
            print(f"Redis: embedded on port {self.redis_server.port}, AOF in {self.var / 'redis'}")
        (self.var / "redis.url").write_text(redis_url)
        os.environ["REDIS_URL"] = redis_url
        config.settings.cache_clear()

        token_file = _secret_file(self.var / "scim.token")
        scim_port = free_port()
        self.spawn(
            "scim-app",
            "-m",
            "worker.devstack.localscim",
            "--port",
            str(scim_port),
            "--token-file",
            str(token_file),
        )
        base_url = f"http://127.0.0.1:{scim_port}/v2"
        _wait_http(base_url + "/ServiceProviderConfig")
        print(f"SCIM application: {base_url} (scim2-server, bearer token in {token_file})")
        print("  the app is paced like Zscaler: 5 requests/s for the whole pool")

        self.spawn(
            "worker",
            "-m",
            "worker.cli.main",
            "worker",
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "INFO",
        )
        webhook_secret = _secret_file(self.var / "webhook.secret")
        webhook_port = free_port()
        self.spawn(
            "webhook",
            "-m",
            "worker.cli.main",
            "webhook",
            "--port",
            str(webhook_port),
            env={"PROVISIONER_WEBHOOK_SECRET_FILE": str(webhook_secret)},
        )
        _wait_worker(config.redis_client())
        print(f"workers: 1 Celery worker, concurrency {self.concurrency} (logs in {self.var})")
        return {
            "base_url": base_url,
            "token_file": str(token_file),
            "webhook": f"http://127.0.0.1:{webhook_port}/v1/events",
            "webhook_secret": str(webhook_secret),
        }

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if self.redis_server is not None:
            self.redis_server.stop()
            (self.var / "redis.url").unlink(missing_ok=True)


def print_application(base_url: str, token_file: str) -> None:
    from worker.store.apps import read_token

    headers = {"Authorization": f"Bearer {read_token(token_file)}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        users = http.get("/Users", params={"count": 1000}).json().get("Resources", [])
        groups = http.get("/Groups", params={"count": 1000}).json().get("Resources", [])
    names = {u["id"]: u["userName"] for u in users}
    print(f"\nThe application now holds {len(users)} users and {len(groups)} groups:")
    for user in sorted(users, key=lambda u: u["userName"]):
        department = user.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", {})
        print(
            f"  {'active  ' if user.get('active') else 'inactive'} {user['userName']:<34} "
            f"{user.get('displayName', ''):<22} {department.get('department', '')}"
        )
    for group in sorted(groups, key=lambda g: g["displayName"]):
        members = sorted(names.get(m["value"], m["value"]) for m in group.get("members") or [])
        print(f"  group {group['displayName']!r}: {len(members)} members")
        for member in members:
            print(f"      {member}")


def signed_curl(webhook: str, secret_file: str) -> str:
    from producers.signing import sign

    body = json.dumps(
        {
            "id": f"evt-curl-{int(time.time())}",
            "type": "user.suspended",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {"user_id": "u-01"},
        }
    )
    secret = Path(secret_file).read_bytes().strip()
    signature = sign(secret, body.encode(), int(time.time()))
    return (
        f"curl -sS -X POST {webhook} -H 'Content-Type: application/json' "
        f"-H 'X-Provisioner-Signature: {signature}' -d '{body}'"
    )


# Ctrl-C, a supervisor's stop or `timeout`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOPPING = "stopping everything the stack started"


def _stop_on_signals(stack: Stack) -> None:
    """Whatever of ``STOP_SIGNALS`` comes, stop the stack's processes and exit at once.

    The handler stops everything itself rather than raise into the main thread: an exception
    raised by a handler lands wherever the thread is, a finalizer's ``__del__`` included,
    where Python prints and drops it, and the stack would keep running."""

    def stop_now(signum: int, _frame: object) -> None:
        for stop_signal in STOP_SIGNALS:  # a second one must not cut the stop short
            signal.signal(stop_signal, signal.SIG_IGN)
        print(f"\n{signal.Signals(signum).name}: {STOPPING}", flush=True)
        try:
            stack.stop()
        finally:
            sys.stdout.flush()
            os._exit(0)

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, stop_now)


def run_stack(
    *, once: bool, concurrency: int, sample: str | None, cli: Callable[[list[str]], int]
) -> int:
    """Start the stack, activate the local app and replay the sample through ``cli`` (the
    ``provisioner`` command, passed in: the stack sits below the CLI)."""
    from producers.replay import read_events, replay

    stack = Stack(concurrency)
    _stop_on_signals(stack)
    try:
        endpoints = stack.start()
        code = cli(
            [
                "apps",
                "activate",
                APP_ID,
                "--base-url",
                endpoints["base_url"],
                "--token-file",
                endpoints["token_file"],
                "--profile",
                "zscaler",
            ]
        )
        if code:
            return code
        paths = [sample] if sample else [str(ROOT / "examples" / n) for n in SAMPLE]
        for path in paths:
            events = read_events(path)
            print(f"\nreplaying {len(events)} events from {path}")
            result = replay(config.redis_client(), events, progress=sys.stdout)
            print(f"published {len(result.accepted)} ({len(result.duplicates)} already seen)")
            started = time.monotonic()
            if cli(["wait", "--timeout", "120"]):
                return 1
            print(f"applied and reconciled in {time.monotonic() - started:.1f}s")
            print_application(endpoints["base_url"], endpoints["token_file"])
        print()
        cli(["status"])
        if once:
            return 0
        print("\nThe stack is running. Send a signed event to the webhook receiver:")
        print("  " + signed_curl(endpoints["webhook"], endpoints["webhook_secret"]))
        print("Other commands (in another shell): .venv/bin/provisioner status | audit | apps list")
        print("Ctrl-C stops everything.")
        while all(p.poll() is None for p in stack.processes):
            time.sleep(0.5)
        print("a process of the stack exited; see the logs in var/", file=sys.stderr)
        return 1
    finally:
        for stop_signal in STOP_SIGNALS:  # a signal now must not cut the stop short
            signal.signal(stop_signal, signal.SIG_IGN)
        print(f"\n{STOPPING}", flush=True)
        stack.stop()
