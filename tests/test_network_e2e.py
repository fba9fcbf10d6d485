"""The network between the pool and the applications (issue 13, item 6): a real forward proxy
(tinyproxy) carries the SCIM calls of a real worker, from ``HTTPS_PROXY`` in the worker's
environment or from the app's ``--proxy`` (its user's password in ``--proxy-password-file``, never
in the URL nor anywhere else), and ``NO_PROXY`` bypasses it; an
application behind a private CA (trustme) needs ``--ca-file``; one that asks for a client
certificate needs ``--client-cert``/``--client-key``.

The applications are scim2-server served over HTTPS; the module has its own Redis and starts its
own worker (one per test, with the environment the test needs), so that no other worker takes
its reconciles."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import httpx
import pytest
import redis

from tests.conftest import own_redis
from tests.support.harness import Harness, WorkerPool, wait_until
from tests.support.scimserver import ScimServer, _QuietHandler, _Server
from worker.devstack.redis_server import RedisServer
from worker.store import apps, audit, keys

trustme = pytest.importorskip("trustme", reason="trustme (the test extra) makes the test CAs")
TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
needs_tinyproxy = pytest.mark.skipif(
    not Path(TINYPROXY).exists(),
    reason="tinyproxy is not installed (apt-get install tinyproxy; CI installs it)",
)
U1 = "u1@example.com"
PROXY_USER, PROXY_PASSWORD = "prov", "Pr0xy-pa55word"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Ours alone: the reconciles run in the worker of each test, with its environment."""
    yield from own_redis(tmp_path_factory)


# -- certificates and the HTTPS application ----------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """The app's private CA (``ca_file``) and a client certificate of another CA."""

    server_ca: Any
    client_ca: Any
    ca_file: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a key that is not the client certificate's


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    client = client_ca.issue_cert("worker.provisioner.test")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "other")}
    server_ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    client_ca.issue_cert("someone-else.test").private_key_pem.write_to_path(str(paths["other"]))
    return Pki(server_ca, client_ca, paths["ca"], paths["cert"], paths["key"], paths["other"])


class TlsScimServer(ScimServer):
    """``ScimServer`` over HTTPS, with a certificate of ``pki.server_ca`` for 127.0.0.1; with
    ``mtls``, it asks for a client certificate of ``pki.client_ca`` and refuses a connection
    without one. The TLS handshake happens in the connection's thread."""

    def __init__(self, pki: Pki, mtls: bool = False) -> None:
        super().__init__()
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pki.server_ca.issue_cert("127.0.0.1").configure_cert(self.server_context)
        # the test's own reads: trust the CA, present the client certificate
        self.reader_context = ssl.create_default_context(cafile=str(pki.ca_file))
        self.reader_context.load_cert_chain(pki.client_cert, pki.client_key)
        if mtls:
            self.server_context.verify_mode = ssl.CERT_REQUIRED
            pki.client_ca.configure_trust(self.server_context)

    def start(self) -> TlsScimServer:
        server = make_server("127.0.0.1", 0, self._wsgi, server_class=_Server,
                             handler_class=_QuietHandler)  # fmt: skip
        server.socket = self.server_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._server = server
        self.port = server.server_port
        self.base_url = f"https://127.0.0.1:{self.port}/v2"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def _list(self, endpoint: str, count: int = 100) -> Iterator[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}", "X-Test-Inspect": "1"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10,
                          verify=self.reader_context, trust_env=False) as http:  # fmt: skip
            page = http.get(f"/{endpoint}", params={"startIndex": 1, "count": count})
            page.raise_for_status()
            yield from page.json().get("Resources", [])


@pytest.fixture
def tls_app(pki: Pki) -> Iterator[TlsScimServer]:
    with TlsScimServer(pki) as server:
        yield server


@pytest.fixture
def mtls_app(pki: Pki) -> Iterator[TlsScimServer]:
    with TlsScimServer(pki, mtls=True) as server:
        yield server


# -- the forward proxy -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tinyproxy:
    """tinyproxy on a free port of 127.0.0.1, in the foreground, logging to a file of its own;
    with ``password``, it asks for Basic credentials (``PROXY_USER``, named in ``url``)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.port = _free_port()
        name = "auth-proxy" if password else "proxy"
        self.log = folder / f"{name}.log"
        self.config = folder / f"{name}.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{self.log}"',
                 "LogLevel Info", "MaxClients 50", "Allow 127.0.0.1"]  # fmt: skip
        if password:
            lines.append(f"BasicAuth {PROXY_USER} {password}")
        self.config.write_text("\n".join(lines) + "\n")
        self.url = f"http://{PROXY_USER + '@' if password else ''}127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Tinyproxy:
        output = open(self.log.with_suffix(".out"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.config)],
                                        stdout=output, stderr=output)  # fmt: skip
        wait_until(self._listening, timeout=10, what="tinyproxy listening")
        return self

    def _listening(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def tunnels(self, port: int) -> int:
        """The ``CONNECT`` requests to 127.0.0.1:``port`` in the log so far."""
        text = self.log.read_text() if self.log.exists() else ""
        return text.count(f"CONNECT 127.0.0.1:{port} ")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    with Tinyproxy(tmp_path) as running:
        yield running


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    with Tinyproxy(tmp_path, password=PROXY_PASSWORD) as running:
        yield running


# -- a worker with the test's environment ------------------------------------------------------
class Worker:
    """One ``provisioner worker`` process with ``env`` over ours; its output in ``log``."""

    def __init__(self, r: redis.Redis, url: str, log: Path) -> None:
        self.r, self.url, self.log = r, url, log
        self.pool: WorkerPool | None = None

    def start(self, **env: str) -> WorkerPool:
        self.pool = WorkerPool(self.url, processes=1, concurrency=2, log_file=self.log,
                               env=env).start()  # fmt: skip
        wait_until(lambda: self.pool is not None and self.pool.ready(self.r), timeout=60,
                   what="the worker is up")  # fmt: skip
        return self.pool

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()


@pytest.fixture
def worker(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Worker]:
    started = Worker(r, redis_server.url, tmp_path / "worker.log")
    yield started
    started.stop()


def _harness(r: redis.Redis, app: ScimServer, tmp_path: Path, **env: str) -> Harness:
    """A harness whose CLI runs with ``env`` (the proxy variables the worker has too)."""
    h = Harness(r, app, tmp_path)
    h.env.update(env)
    return h


def _provision_one_user(h: Harness) -> None:
    h.send(h.user("u1"), h.group("g1", "eng"), h.member("g1", "u1"), h.associate("zs", "g1"))
    assert h.users()[U1]["active"] is True
    assert "eng" in h.groups()


def _password_file(tmp_path: Path, password: str = PROXY_PASSWORD, name: str = "proxy-pw") -> Path:
    """A mounted secret holding the proxy's password (a trailing newline, as editors write)."""
    path = tmp_path / name
    path.write_text(password + "\n")
    return path


def _redis_dump(r: redis.Redis) -> str:
    """Every key of ours and its value, as text."""
    read: dict[str, Any] = {
        "string": r.get,
        "hash": r.hgetall,
        "list": lambda key: r.lrange(key, 0, -1),
        "set": r.smembers,
        "zset": lambda key: r.zrange(key, 0, -1, withscores=True),
        "stream": r.xrange,
    }
    dump = []
    for key in sorted(r.keys(f"{keys.PREFIX}*")):
        kind = r.type(key).decode()
        dump.append(f"{key!r} {kind} {read[kind](key)!r}")
    return "\n".join(dump)


def _activate(h: Harness, *options: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return h.cli("apps", "activate", "zs", "--base-url", h.scim.base_url, "--token-file",
                 str(h.token_file), "--rate", "10000", "--burst", "1000", *options,
                 check=check)  # fmt: skip


# -- the proxy ---------------------------------------------------------------------------------
@needs_tinyproxy
def test_https_proxy_in_the_environment_carries_the_scim_calls(r, tmp_path, pki, tls_app, proxy,
                                                               worker):  # fmt: skip
    env = {"HTTPS_PROXY": proxy.url}
    worker.start(**env)
    h = _harness(r, tls_app, tmp_path, **env)
    _activate(h, "--ca-file", str(pki.ca_file))
    assert proxy.tunnels(tls_app.port) >= 1  # the activation's check and listing
    before = proxy.tunnels(tls_app.port)
    _provision_one_user(h)
    # the worker's calls went through the proxy (its own connections: CONNECTs of its own)
    assert proxy.tunnels(tls_app.port) > before
    assert ("POST", "/v2/Users") in h.writes()
    assert json.loads(h.cli("apps", "show", "zs", "--json").stdout)["network"] == {
        "proxy": "environment", "ca_file": str(pki.ca_file), "client_cert": None,
        "client_key": None, "proxy_password_file": None,
    }  # fmt: skip


@needs_tinyproxy
def test_no_proxy_bypasses_the_proxy_of_the_environment(r, tmp_path, pki, tls_app, proxy,
                                                        worker):  # fmt: skip
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}
    worker.start(**env)
    h = _harness(r, tls_app, tmp_path, **env)
    _activate(h, "--ca-file", str(pki.ca_file))
    _provision_one_user(h)
    assert proxy.tunnels(tls_app.port) == 0  # the app was reached, directly


@needs_tinyproxy
def test_the_apps_proxy_overrides_the_environment_with_the_password_of_its_file(
    r, tmp_path, pki, tls_app, auth_proxy, proxy, worker
):
    # the environment says "direct" (NO_PROXY) and names another proxy: the app's wins
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"}
    worker.start(**env)
    h = _harness(r, tls_app, tmp_path, **env)
    password_file = _password_file(tmp_path)
    out = _activate(h, "--ca-file", str(pki.ca_file), "--proxy", auth_proxy.url,
                    "--proxy-password-file", str(password_file)).stdout  # fmt: skip
    _provision_one_user(h)
    assert auth_proxy.tunnels(tls_app.port) >= 2  # the CLI's check, the worker's calls
    assert proxy.tunnels(tls_app.port) == 0
    assert f"proxy {auth_proxy.url}, proxy password file {password_file}" in out
    assert apps.load(r, "zs").network == apps.Network(  # the user in the URL, the file's path
        proxy=auth_proxy.url, ca_file=str(pki.ca_file), proxy_password_file=str(password_file)
    )
    show = json.loads(h.cli("apps", "show", "zs", "--json").stdout)["network"]
    assert show == json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["network"]
    assert (show["proxy"], show["proxy_password_file"]) == (auth_proxy.url, str(password_file))

    # a renewed file is read by the worker's next call (a new client), as a renewed certificate
    password_file.write_text("not-the-password-2\n")
    h.send(h.user("u2"), h.member("g1", "u2"), wait=False)
    wait_until(lambda: "zs user u2" in worker.log.read_text(), what="the worker's refused call")
    assert "u2@example.com" not in h.users()
    password_file.write_text(PROXY_PASSWORD + "\n")
    h.wait()
    assert "u2@example.com" in h.users()

    # a wrong password: the proxy refuses, the update is refused and changes nothing
    wrong = _password_file(tmp_path, "wrong-password-1", "wrong-pw")
    refused = h.cli("apps", "update", "zs", "--proxy-password-file", str(wrong), check=False)
    assert refused.returncode == 1 and "the proxy refused" in refused.stderr, refused
    assert "wrong-password-1" not in refused.stderr + json.dumps(audit.read(r, app="zs"))
    assert apps.load(r, "zs").network.proxy_password_file == str(password_file)

    # --no-proxy: direct, whatever the environment says (no other call through either proxy),
    # and no password file any more
    tunnels = auth_proxy.tunnels(tls_app.port)
    assert "proxy direct" in h.cli("apps", "update", "zs", "--no-proxy").stdout
    assert apps.load(r, "zs").network.proxy_password_file is None
    h.send(h.user("u3"), h.member("g1", "u3"))
    assert "u3@example.com" in h.users()
    assert auth_proxy.tunnels(tls_app.port) == tunnels and proxy.tunnels(tls_app.port) == 0


@needs_tinyproxy
def test_a_password_in_the_proxy_url_is_refused_and_the_password_is_nowhere(
    r, tmp_path, pki, tls_app, auth_proxy, worker
):
    worker.start()
    h = _harness(r, tls_app, tmp_path)
    in_url = auth_proxy.url.replace(f"{PROXY_USER}@", f"{PROXY_USER}:{PROXY_PASSWORD}@")
    outputs: list[str] = []

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = h.cli(*args, check=check)
        outputs.extend((result.stdout, result.stderr))
        return result

    # on the command line, a password is a usage error: nothing is saved nor audited
    ca = ("--ca-file", str(pki.ca_file))
    base = ("--base-url", tls_app.base_url, "--token-file", str(h.token_file))
    refused = cli("apps", "activate", "zs", *base, *ca, "--proxy", in_url, check=False)
    assert refused.returncode == 2, refused
    assert "holds a password" in refused.stderr and "--proxy-password-file" in refused.stderr
    assert apps.load(r, "zs") is None and audit.read(r, app="zs") == []

    password_file = _password_file(tmp_path)
    cli("apps", "activate", "zs", *base, *ca, "--proxy", auth_proxy.url, "--proxy-password-file",
        str(password_file), "--rate", "10000", "--burst", "1000")  # fmt: skip
    before, entries = r.hgetall(keys.app("zs")), len(audit.read(r, app="zs"))
    refused = cli("apps", "update", "zs", "--proxy", in_url, check=False)
    assert refused.returncode == 2 and "--proxy-password-file" in refused.stderr, refused
    assert r.hgetall(keys.app("zs")) == before and len(audit.read(r, app="zs")) == entries
    _provision_one_user(h)

    # an app saved by an earlier version, the password in its proxy URL: it still works, and
    # `apps show` says how to move the password to a file
    config = json.loads(r.hget(keys.app("zs"), "config"))
    config["network"] = {"proxy": in_url, "ca_file": str(pki.ca_file), "client_cert": None,
                         "client_key": None}  # fmt: skip
    r.hset(keys.app("zs"), "config", json.dumps(config))
    assert apps.load(r, "zs").network.proxy == in_url
    shown = cli("apps", "show", "zs")
    assert "--proxy-password-file FILE" in shown.stderr, shown
    assert f"{PROXY_USER}:***@127.0.0.1:{auth_proxy.port}" in shown.stdout
    tunnels = auth_proxy.tunnels(tls_app.port)
    h.send(h.user("u2"), h.member("g1", "u2"))
    assert "u2@example.com" in h.users() and auth_proxy.tunnels(tls_app.port) > tunnels
    # the password file replaces it
    cli("apps", "update", "zs", "--proxy-password-file", str(password_file))
    h.send(h.user("u3"), h.member("g1", "u3"))
    assert "u3@example.com" in h.users()

    # nowhere to be read: the CLI's output, Redis, the audit log, the worker's log
    shown = cli("apps", "show", "zs")
    for args in (("apps", "show", "zs", "--json"), ("apps", "list", "--json"),
                 ("status", "--json"), ("audit", "--json")):  # fmt: skip
        cli(*args)
    texts = {"cli": "\n".join(outputs), "redis": _redis_dump(r), "log": worker.log.read_text(),
             "audit": json.dumps(audit.read(r, app="zs"))}  # fmt: skip
    assert [name for name, text in texts.items() if PROXY_PASSWORD in text] == []
    assert "warning" not in shown.stderr  # `apps show` warns no more
    assert apps.load(r, "zs").network.proxy == auth_proxy.url  # the URL keeps its user


def test_the_password_of_the_file_is_scrubbed_from_errors(tmp_path):
    """Whatever an error says, the password read from the file is not in it (the client's
    error details, Sentry's reports)."""
    from worker import observability
    from worker.scim import ScimClient, Transient, make_http_client, profile_by_name
    from worker.scim.network import http_transport

    secret = "file-only-pa55word"
    network = apps.Network(
        proxy="http://prov@127.0.0.1:1", proxy_password_file=str(_password_file(tmp_path, secret))
    )

    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ProxyError(f"the proxy said: {secret} is wrong")

    http_transport("https://app.test/v2", network).close()  # Sentry learns the password
    assert secret not in observability.scrub_text(f"report: {secret}")
    http = make_http_client("https://app.test/v2", "a-token-1", network=network,
                            transport=httpx.MockTransport(fail))  # fmt: skip
    with http, pytest.raises(Transient) as error:
        ScimClient(http, profile_by_name("generic")).verify()
    assert "the proxy said" in str(error.value) and secret not in str(error.value)


# -- TLS: a private CA, mTLS -------------------------------------------------------------------
def test_an_app_behind_a_private_ca_needs_its_ca_file(r, tmp_path, pki, tls_app, worker):
    worker.start()
    h = _harness(r, tls_app, tmp_path)
    refused = _activate(h, check=False)
    assert refused.returncode == 1
    assert "TLS error" in refused.stderr and "--ca-file" in refused.stderr, refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert apps.load(r, "zs") is None

    _activate(h, "--ca-file", str(pki.ca_file))
    _provision_one_user(h)
    assert apps.load(r, "zs").network.ca_file == str(pki.ca_file)


def test_an_app_that_asks_for_a_client_certificate(r, tmp_path, pki, mtls_app, worker):
    worker.start()
    h = _harness(r, mtls_app, tmp_path)
    refused = _activate(h, "--ca-file", str(pki.ca_file), check=False)
    assert refused.returncode == 1 and "TLS error" in refused.stderr, refused.stderr
    assert apps.load(r, "zs") is None

    _activate(h, "--ca-file", str(pki.ca_file), "--client-cert", str(pki.client_cert),
              "--client-key", str(pki.client_key))  # fmt: skip
    _provision_one_user(h)
    shown = json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["network"]
    assert shown["client_cert"] == str(pki.client_cert)
    assert shown["client_key"] == str(pki.client_key)

    # the CLI will not save the app without its certificate (the check fails)...
    refused = h.cli("apps", "update", "zs", "--client-cert", "", check=False)
    assert refused.returncode == 1 and "TLS error" in refused.stderr, refused.stderr
    # ... and a worker whose app has none is refused too: the user waits, nothing is written
    with_cert = apps.load(r, "zs").network
    apps.update(r, "zs", network=replace(with_cert, client_cert=None, client_key=None))
    mtls_app.clear_requests()
    h.send(h.user("u2"), h.member("g1", "u2"), wait=False)
    wait_until(lambda: "zs user u2" in worker.log.read_text(), what="the worker's failed call")
    assert "CERTIFICATE_REQUIRED" in worker.log.read_text() or "SSL" in worker.log.read_text()
    assert mtls_app.requests == [] and "u2@example.com" not in h.users()
    # given its certificate again, the worker builds a new client and provisions the user
    h.cli("apps", "update", "zs", "--client-cert", str(pki.client_cert), "--client-key",
          str(pki.client_key))  # fmt: skip
    h.wait()
    assert "u2@example.com" in h.users()


def test_network_files_are_checked_before_anything_changes(r, tmp_path, pki, tls_app):
    h = _harness(r, tls_app, tmp_path)
    missing = tmp_path / "missing.pem"
    empty, secret = _password_file(tmp_path, "", "empty"), _password_file(tmp_path, "pa55word")
    empty.write_text("\n")
    wrong_key = ("--client-cert", str(pki.client_cert), "--client-key", str(pki.other_key))
    for options, message in [
        (("--ca-file", str(missing)), f"cannot read the CA file {missing}"),
        (("--ca-file", str(pki.client_key)), "cannot load the CA file"),
        (("--ca-file", str(pki.ca_file), *wrong_key), "cannot load the client certificate"),
        (("--client-key", str(pki.client_key)), "--client-key goes with --client-cert"),
        (("--proxy", "socks5://u@127.0.0.1:1"), "invalid proxy URL"),
        (("--proxy", "http://u@127.0.0.1:1", "--proxy-password-file", str(missing)),
         f"cannot read the proxy password file {missing}"),
        (("--proxy", "http://u@127.0.0.1:1", "--proxy-password-file", str(empty)),
         f"the proxy password file {empty} is empty"),
        (("--proxy", "http://127.0.0.1:1", "--proxy-password-file", str(secret)),
         "needs the proxy's user name"),
        (("--proxy-password-file", str(secret)), "goes with the app's own proxy"),
    ]:  # fmt: skip
        result = _activate(h, *options, check=False)
        assert result.returncode == 1 and message in result.stderr, (options, result.stderr)
        assert apps.load(r, "zs") is None
    usage = _activate(h, "--proxy", "http://127.0.0.1:1", "--no-proxy", check=False)
    assert usage.returncode == 2

    _activate(h, "--ca-file", str(pki.ca_file))
    for options in (("--ca-file", str(missing)), ("--client-cert", str(pki.ca_file))):
        result = h.cli("apps", "update", "zs", *options, check=False)
        assert result.returncode == 1 and "not updated" in result.stderr, result.stderr
        assert apps.load(r, "zs").network == apps.Network(ca_file=str(pki.ca_file))


# -- the environment's proxy, as httpx reads it ------------------------------------------------
@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://app.example.com/scim", "", "http://proxy.test:3128"),
        ("https://app.example.com/scim", "example.com", None),  # a name and its subdomains
        ("https://example.com/scim", ".example.com", "http://proxy.test:3128"),  # subdomains
        ("https://wwwexample.com/scim", "example.com", "http://proxy.test:3128"),
        ("https://10.1.2.3/scim", "10.0.0.0/8", None),
        ("https://[::1]:8443/scim", "::1", None),
        ("https://app.example.com/scim", "other.test, *", None),
        ("http://127.0.0.1:8080/v2", "", "http://plain.test:80"),  # HTTP_PROXY for http
    ],
)
def test_the_environments_proxy_and_no_proxy(monkeypatch, url, no_proxy, expected):
    from worker.scim.network import proxy_for

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.test:3128")  # no scheme: http
    monkeypatch.setenv("HTTP_PROXY", "http://plain.test:80")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for(url, apps.Network()) == expected
    assert proxy_for(url, apps.Network(proxy="")) is None  # --no-proxy
    mine = "http://u:p@mine.test:1"
    assert proxy_for(url, apps.Network(proxy=mine)) == mine  # --proxy overrides NO_PROXY too
