"""Driving the product as a user does: real worker processes, the CLI, the publish path."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import redis

from producers import signing
from tests.support.scimserver import ScimServer
from worker.cli.status import snapshot
from worker.contract.events import parse_events
from worker.devstack.redis_server import free_port
from worker.queue.publish import publish
from worker.store import keys, learned

ROOT = Path(__file__).resolve().parents[2]
TEST_ENV = {
    "PROVISIONER_LEASE_SECONDS": "5",  # a killed worker's key comes back within seconds
    "PROVISIONER_STALE_SECONDS": "3",
    "PROVISIONER_BREAKER_COOLDOWN": "2",  # an open circuit breaker probes after 2 s
    "PYTHONPATH": str(ROOT),
}


def run_cli_process(
    args: Sequence[str], env: dict[str, str], input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m worker.cli.main *args`` as a process of its own, ``env`` over ours."""
    return subprocess.run([sys.executable, "-m", "worker.cli.main", *args],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True,
                          input=input, timeout=timeout)  # fmt: skip


_cli_lock = threading.Lock()
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_cli(
    args: Sequence[str], env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``provisioner *args`` in this process, as a process of its own would run it: ``env``
    over ``os.environ`` for the duration of the call (the settings read afresh before and
    after), ``input`` as standard input (empty without it, never a terminal), standard output
    and error captured, WARNING logs to the captured standard error. ``main(argv)`` returns
    the exit code and never raises ``SystemExit``; the signal handlers a command installs
    (``jumpcloud sync`` stops on SIGTERM) are put back. Saves the second or so a new
    interpreter takes to start and import the product."""
    from worker import config
    from worker.cli.main import main

    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    handler = logging.StreamHandler(stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    in_main_thread = threading.current_thread() is threading.main_thread()
    with _cli_lock:
        saved_env = {name: os.environ.get(name) for name in env}
        saved_signals = {s: signal.getsignal(s) for s in _STOP_SIGNALS} if in_main_thread else {}
        os.environ.update(env)
        config.settings.cache_clear()
        logging.getLogger().addHandler(handler)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = _main(main, args, stdin)
        finally:
            logging.getLogger().removeHandler(handler)
            for sig, previous in saved_signals.items():
                if previous is not None:  # None: not set from Python, nothing to put back
                    signal.signal(sig, previous)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            config.settings.cache_clear()
            _forget_clients()
    stdout.flush()
    stderr.flush()
    return subprocess.CompletedProcess(
        ["provisioner", *args], code, out.getvalue().decode(), err.getvalue().decode()
    )


def _main(main: Callable[[list[str]], int], args: Sequence[str], stdin: io.TextIOWrapper) -> int:
    """``main(args)`` reading ``stdin``; a ``SystemExit`` (which ``main`` should never let
    out) becomes the exit status a process would have had."""
    previous, sys.stdin = sys.stdin, stdin
    try:
        return main(list(args))
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    finally:
        sys.stdin = previous


def _forget_clients() -> None:
    """A process of its own would have built its SCIM clients afresh."""
    runner = sys.modules.get("worker.sync.runner")
    if runner is not None:
        runner.CLIENTS.reset()


class WorkerPool:
    """Celery worker processes (``provisioner worker``), as an operator runs them; for a test,
    through ``tests.support.worker_process`` (a deferred group looks for its members more
    often), unless ``as_operator`` (the benchmarks: exactly ``python -m worker.cli.main``)."""

    def __init__(
        self,
        redis_url: str,
        processes: int = 2,
        concurrency: int = 2,
        log_file: Path | None = None,
        loglevel: str = "WARNING",
        env: dict[str, str] | None = None,
        pool: str = "threads",
        as_operator: bool = False,
    ):
        self.env = {**os.environ, **TEST_ENV, "REDIS_URL": redis_url, **(env or {})}
        self.module = "worker.cli.main" if as_operator else "tests.support.worker_process"
        self.log_file = log_file
        self.loglevel = loglevel
        self.processes = processes
        self.concurrency = concurrency
        self.pool = pool
        self.workers: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []  # each worker's node name, before "@"
        self._names = count()

    def start_one(self) -> subprocess.Popen[bytes]:
        self.names.append(f"test{next(self._names)}")
        name = f"{self.names[-1]}@%h"
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", self.module, "worker", "--pool", self.pool, "--concurrency",
             str(self.concurrency), "--loglevel", self.loglevel, "--hostname", name],
            env=self.env, cwd=ROOT, stdout=output, stderr=output,
            start_new_session=True,
        )  # fmt: skip
        self.workers.append(process)
        return process

    def start(self) -> WorkerPool:
        for _ in range(self.processes):
            self.start_one()
        return self

    def ready(self, client: redis.Redis) -> bool:
        """Whether every worker of the pool is up: its sweeper beats (``status``'s workers)."""
        from worker.queue.sweeper import alive_workers

        alive = {name.split("@")[0] for name in alive_workers(client)}
        return all(name in alive for name in self.names)

    def kill_one(self) -> None:
        """SIGKILL a whole worker (main process and children) and start a replacement."""
        self.names.pop(0)
        victim = self.workers.pop(0)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        self.start_one()

    def stop(self) -> None:
        for process in self.workers:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in self.workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.workers.clear()
        self.names.clear()


class Harness:
    """One test's view: an app on a fresh SCIM server, events in, state out."""

    _ids = count()

    def __init__(
        self,
        client: redis.Redis,
        scim: ScimServer,
        tmp: Path,
        redis_url: str | None = None,
        activate_options: Sequence[str] = (),
    ):
        """``redis_url``: a Redis of the test's own (default: the session's, from the env);
        ``activate_options``: options every ``activate`` adds (``--profile generic``)."""
        self.redis = client
        self.activate_options = tuple(activate_options)
        self.env = {**TEST_ENV, **({"REDIS_URL": redis_url} if redis_url else {})}
        self.scim = scim
        self.tmp = tmp
        self.token_file = tmp / "scim.token"
        self.token_file.write_text(scim.token)
        self.clock = 1_800_000_000.0

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``provisioner *args`` with the harness's environment: in this process (``main(argv)``,
        its output captured), or as a process of its own with ``process=True`` (a test of the
        real process) or ``HARNESS_CLI=process`` in the environment (every call, to debug)."""
        if process or os.environ.get("HARNESS_CLI") == "process":
            result = run_cli_process(args, self.env, input)
        else:
            result = run_cli(args, self.env, input)
        if check and result.returncode != 0:
            raise AssertionError(f"provisioner {' '.join(args)} failed: {result.stderr}")
        return result

    def activate(self, app_id: str = "zs", *options: str) -> None:
        """Activate ``app_id``; unless a test sets ``--rate``, the pool is not throttled."""
        options = (*self.activate_options, *options)
        if "--rate" not in options:
            options = (*options, "--rate", "10000", "--burst", "1000")
        self.cli("apps", "activate", app_id, "--base-url", self.scim.base_url,
                 "--token-file", str(self.token_file), *options)  # fmt: skip

    def trust_bulk_writes(self, app_id: str = "zs") -> None:
        """Let the pool know that the app holds its Bulk writes as sent, so that none is read
        back: for a test that counts requests, round trips or audit entries, when it runs with
        Bulk (`make test-bulk`); nothing changes without Bulk. ``apps update`` forgets it."""
        for form in keys.BULK_FORMS:
            learned.learn_bulk_held(self.redis, app_id, form, "known to the test")

    def event(self, type_: str, **data: Any) -> dict[str, Any]:
        """A v1 event with a fresh id and a later timestamp than the previous one."""
        self.clock += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.clock)) + "Z"
        return {"id": f"evt-{next(self._ids)}", "type": type_, "occurred_at": stamp, "data": data}

    def send(self, *documents: dict[str, Any], wait: bool = True) -> None:
        if "REDIS_URL" in self.env:  # a Redis of the test's own: publish as a user would
            self.cli("replay", "-", input="\n".join(json.dumps(d) for d in documents))
        else:
            publish(self.redis, parse_events(json.dumps(list(documents))))
        if wait:
            self.wait()

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not snapshot(self.redis)["idle"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"not idle after {timeout}s: {snapshot(self.redis)}")
            time.sleep(0.05)

    # the application's state, read over SCIM
    def users(self) -> dict[str, dict[str, Any]]:
        return {u["userName"]: u for u in self.scim.users()}

    def groups(self) -> dict[str, dict[str, Any]]:
        return {g["displayName"]: g for g in self.scim.groups()}

    def members(self, group_name: str) -> set[str]:
        """userNames of a group's members in the application."""
        by_id = {u["id"]: u["userName"] for u in self.scim.users()}
        group = self.groups()[group_name]
        return {by_id.get(m["value"], m["value"]) for m in group.get("members") or []}

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.scim.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]

    def seed(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a resource in the application directly, as its administrator would."""
        headers = {"Authorization": f"Bearer {self.scim.token}"}
        url = f"{self.scim.base_url}/{endpoint}"
        resp = httpx.post(url, json=body, headers=headers, timeout=10)
        resp.raise_for_status()
        return resp.json()

    # what the product says about an app
    def parked(self, app_id: str = "zs") -> dict[str, str]:
        """The app's parked reconcile keys and why (``status``)."""
        return snapshot(self.redis)["apps"][app_id]["parked"]

    def app_row(self, app_id: str = "zs") -> dict[str, Any]:
        """The app's row of ``apps list --json``."""
        rows = json.loads(self.cli("apps", "list", "--json").stdout)
        return next(row for row in rows if row["id"] == app_id)

    def learned(self, app_id: str = "zs") -> dict[str, Any] | None:
        """What the product learned about the app (field ``learned`` of ``apps list --json``:
        ``{"forms": {...}, "unsupported_attributes": [...]}``), None while it says nothing."""
        return self.app_row(app_id).get("learned")

    # directory helpers: events as the directory would send them
    def user(
        self, uid: str, username: str | None = None, state: str = "active", **attrs: Any
    ) -> dict[str, Any]:  # noqa: E501
        record = {"id": uid, "username": username or f"{uid}@example.com", "state": state, **attrs}
        return self.event("user.created", user=record)

    def group(self, gid: str, name: str | None = None) -> dict[str, Any]:
        return self.event("group.created", group={"id": gid, "name": name or gid})

    def member(self, gid: str, uid: str, added: bool = True) -> dict[str, Any]:
        kind = "group.member_added" if added else "group.member_removed"
        return self.event(kind, group_id=gid, user_id=uid)

    def associate(self, app: str, gid: str, associated: bool = True) -> dict[str, Any]:
        kind = "app.group_associated" if associated else "app.group_disassociated"
        return self.event(kind, app_id=app, group_id=gid)


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Poll ``predicate`` until it holds (returned), for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(0.02)
    return value


def leases_held(client: redis.Redis) -> int:
    """Keys being reconciled right now: each holds a lease (``prov:wq:owner``)."""
    return int(client.hlen(keys.WQ_OWNER))


class InFlight:
    """A fault hook (``ScimServer.inject``) that counts the requests being answered, around
    another hook (or none): a kill can wait for a request in flight instead of sleeping."""

    def __init__(self, inner: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.inner = inner
        self.now = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any]) -> Any:
        with self._lock:
            self.now += 1
        try:
            return self.inner(environ) if self.inner is not None else None
        finally:
            with self._lock:
                self.now -= 1


def shuffled(documents: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    import random

    items = list(documents)
    random.Random(seed).shuffle(items)
    return items


@contextlib.contextmanager
def receiver(
    env: dict[str, str], log: Path, *, secret: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``provisioner webhook`` on a free port, as an operator runs it, with ``env`` (its
    ``REDIS_URL`` among them) and the webhook secret ``secret``; yields the process and its base URL."""
    port = free_port()
    full_env = {**os.environ, **TEST_ENV, signing.SECRET_ENV: secret, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "webhook", "--port", str(port)],
            env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.1)
        yield process, base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
