"""A real SCIM 2.0 application for tests: scim2-server in a background thread.

``ScimServer`` serves scim2-server's ``BearerTokenApplication`` (RFC 7643 schemas, the
enterprise User extension, every feature announced) on 127.0.0.1 and a free port, with
a request log and a fault hook (``inject``) that lets a test answer a request itself, and,
with ``rate_limit=(rate, burst)``, a gateway in front of it that enforces an exact token bucket.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

import httpx
import pytest
from scim2_models import Bulk, ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

Fault = Callable[[dict[str, Any]], "tuple[int, dict[str, str], bytes] | None"]


BULK_BY_DEFAULT = os.environ.get("SCIM_TEST_BULK", "off") == "on"
"""Whether a ``ScimServer`` announces Bulk unless told: ``SCIM_TEST_BULK=on`` runs every test
with the pool's writes in Bulk requests (``make test-bulk``)."""


@functools.cache
def _provider(bulk: bool) -> ScimProvider:
    """The default provider, announcing the bearer token scheme (so 401s carry a challenge),
    and Bulk (scim2-server's 1,000 operations and 1 MiB) or not."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    if not bulk:
        config.bulk = Bulk(supported=False, max_operations=0, max_payload_size=0)
    return ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )


DROP = "drop"  # what a fault returns to close the connection without an answer
DROP_AFTER = "drop-after"  # the same, once the application has done the work


def ignore_filters(environ: dict[str, Any]) -> None:
    """A fault: the application answers a filtered GET as if no filter had been sent (some
    applications ignore filters they do not support)."""
    if environ["REQUEST_METHOD"] == "GET" and "filter=" in environ.get("QUERY_STRING", ""):
        environ["QUERY_STRING"] = ""


class _KeepAliveServerHandler(ServerHandler):
    http_version = "1.1"
    sent: tuple[str | None, Any] = (None, None)  # the status and headers, kept past close()

    def close(self) -> None:
        self.sent = (self.status, self.headers)
        super().close()


class _Server(ThreadingWSGIServer):
    """A thread per connection; ``close_connections`` ends the kept-alive ones."""

    # socketserver's backlog of 5 overflows when a pool opens its connections at once; a
    # dropped SYN costs the request a 1-second retransmission
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's request handler, quiet, with HTTP/1.1 keep-alive: a connection serves requests
    until the client closes it, as real applications do (wsgiref's own handler closes it after
    each request, which would cost the worker a TCP connection per SCIM call)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written, with no ACK wait

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["test.connection"] = self.connection  # lets a fault drop the connection
        return environ

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.close_connection = False
            while not self.close_connection:
                self._handle_one()

    def _handle_one(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or len(self.raw_requestline) > 65536:
            self.close_connection = True
            return
        if not self.parse_request():  # answered with an error; decides close_connection
            return
        # the body is read whole, so that nothing of it is left for the next request
        length = int(self.headers.get("Content-Length") or 0)
        body = io.BytesIO(self.rfile.read(length) if length > 0 else b"")
        # the response goes out in one write: wsgiref writes each part of it separately, and
        # each write gives the GIL away to the other connections' threads, to wait for it back
        response = io.BytesIO()
        handler = _KeepAliveServerHandler(
            body, response, self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self
        handler.run(self.server.get_app())
        self.wfile.write(response.getvalue())
        status, headers = handler.sent
        if status is None or (
            status[:3] not in ("204", "304") and "Content-Length" not in (headers or {})
        ):
            self.close_connection = True  # the body ended with the connection


SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
INSPECT = "X-Test-Inspect"  # the double's own reads (``users``, ``groups``) pass the gateway


class TokenBucket:
    """A gateway's rate limit, exactly: ``rate`` tokens a second, at most ``burst`` held (full
    at the start); a request takes a token or is refused (429, ``Retry-After: 1``). A refused
    request takes nothing. ``arrivals`` logs (monotonic time, accepted, "METHOD /path") of
    every request."""

    RETRY_AFTER = "1"

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()
        self.arrivals: list[tuple[float, bool, str]] = []

    def take(self, request: str = "") -> bool:
        """A request arrives: True when it may go on to the application."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            accepted = self._tokens >= 1.0
            if accepted:
                self._tokens -= 1.0
            self.arrivals.append((now, accepted, request))
            return accepted

    def full(self) -> bool:
        """Whether the bucket holds ``burst`` tokens (a request now would find them all)."""
        with self._lock:
            tokens = self._tokens + (time.monotonic() - self._stamp) * self.rate
            return tokens >= self.burst

    @property
    def accepted(self) -> int:
        return sum(1 for _, ok, _ in self.arrivals if ok)

    @property
    def refused(self) -> int:
        return sum(1 for _, ok, _ in self.arrivals if not ok)

    def clear(self) -> None:
        """Forget the arrivals (the bucket keeps its tokens)."""
        with self._lock:
            self.arrivals.clear()

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"schemas": [SCIM_ERROR], "status": "429",
                           "detail": "rate limit exceeded"}).encode()  # fmt: skip
        headers = {"Retry-After": self.RETRY_AFTER, "Content-Type": "application/scim+json"}
        return 429, headers, body


class ScimServer:
    """A scim2-server application on 127.0.0.1, served from a thread; use as a context manager.

    ``rate_limit=(rate, burst)`` puts a gateway in front of it: a ``TokenBucket`` checked as
    each request arrives, before any fault hook and before the application handles it, as a
    gateway does; its refusals are counted in ``bucket`` and never reach the request log."""

    def __init__(
        self,
        token: str = "test-token-s3cr3t",
        rate_limit: tuple[float, int] | None = None,
        *,
        bulk: bool | None = None,
        split_bulk: bool | None = None,
    ) -> None:
        """``bulk``: announce Bulk in ``/ServiceProviderConfig`` (default: ``BULK_BY_DEFAULT``);
        scim2-server serves ``/Bulk`` either way, as an app that lists it but says no would.
        ``split_bulk``: the request log and the fault hook see each operation of a Bulk request
        as the single request it stands for (default: under ``SCIM_TEST_BULK=on`` only, for
        the tests written for single calls)."""
        self.token = token
        self.bucket = TokenBucket(*rate_limit) if rate_limit else None
        self.storage = InMemoryStorage()
        self.bulk = BULK_BY_DEFAULT if bulk is None else bulk
        # Under SCIM_TEST_BULK=on, a test written for single calls reads each operation of a
        # Bulk request in the request log as the request it stands for
        self.split_bulk = (bulk is None and BULK_BY_DEFAULT) if split_bulk is None else split_bulk
        provider = _provider(self.bulk)
        self.app = BearerTokenApplication(self.storage, provider, bearer_tokens=[token])
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        # scim2-server's handler runs one request at a time: the connections' threads would
        # otherwise share the GIL in 5 ms turns, each request taking several times its CPU
        self._handling = threading.Lock()
        self._fault: Fault | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> ScimServer:
        server = make_server(
            "127.0.0.1",
            0,
            self._wsgi,
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_port}/v2"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test hooks --------------------------------------------------------
    def inject(self, fn: Fault | None) -> None:
        """Let ``fn(environ)`` answer requests: it returns (status, headers, body) or None."""
        self._fault = fn

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def reset(self) -> None:
        """Empty the storage, the request log and the fault hook (and the gateway's log)."""
        with self.storage.operation():
            self.storage.resources = []
        self.inject(None)
        self.clear_requests()
        if self.bucket is not None:
            self.bucket.clear()

    def users(self) -> list[dict[str, Any]]:
        """Every user, as plain JSON, read over SCIM."""
        return list(self._list("Users"))

    def groups(self) -> list[dict[str, Any]]:
        """Every group, as plain JSON, read over SCIM."""
        return list(self._list("Groups"))

    def _list(self, endpoint: str, count: int = 100) -> Iterator[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}", INSPECT: "1"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as http:
            start = 1
            while True:
                resp = http.get(f"/{endpoint}", params={"startIndex": start, "count": count})
                resp.raise_for_status()
                page = resp.json()
                resources = page.get("Resources", [])
                yield from resources
                start += len(resources)
                if not resources or start > page["totalResults"]:
                    return

    # -- WSGI --------------------------------------------------------------
    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        bucket = self.bucket
        request = f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
        if bucket is not None and "HTTP_X_TEST_INSPECT" not in environ and not bucket.take(request):
            return self._answer(bucket.answer(), start_response)  # the gateway refuses it
        with self._lock:
            self.requests += self._logged(environ)
        fault = self._fault
        if fault is not None and self.split_bulk and request.endswith("/Bulk"):
            return self._bulk_by_operation(environ, start_response, fault)
        answer = fault(environ) if fault is not None else None
        if answer is None:
            with self._handling:
                return self.app(environ, start_response)  # type: ignore[arg-type]
        if answer in (DROP, DROP_AFTER):  # the connection dies before any answer
            if answer == DROP_AFTER:
                list(self.app(environ, lambda *args: None))  # type: ignore[arg-type]
            environ["test.connection"].shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError  # wsgiref gives up on the request quietly
        return self._answer(answer, start_response)

    def _logged(self, environ: dict[str, Any]) -> list[tuple[str, str]]:
        """What the request log records of a request: itself, or (``split_bulk``) each
        operation of a Bulk request, as the single request it stands for."""
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if not (self.split_bulk and method == "POST" and path.endswith("/Bulk")):
            return [(method, path)]
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            operations = json.loads(raw).get("Operations") or []
        except (ValueError, AttributeError):
            return [(method, path)]
        base = path[: -len("/Bulk")]
        return [(str(op.get("method")), base + str(op.get("path"))) for op in operations
                if isinstance(op, dict)]  # fmt: skip

    def _bulk_by_operation(
        self, environ: dict[str, Any], start_response: Callable[..., Any], fault: Fault
    ) -> Iterable[bytes]:
        """Under ``split_bulk``, a fault hook written for single calls sees each operation of
        a Bulk request as the request it stands for: what it answers becomes that operation's
        result, a body it rewrites is what the application gets, and the operations it lets
        through go to scim2-server in one Bulk request. A dropped connection drops the whole
        request (``DROP_AFTER``: once the application has done all of it)."""
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            request = json.loads(raw)
            operations = [op for op in request["Operations"] if isinstance(op, dict)]
        except (ValueError, KeyError, TypeError):
            operations, request = [], None
        if request is None or not operations:  # not one to split: the app answers it
            environ["wsgi.input"] = io.BytesIO(raw)
            with self._handling:
                return self.app(environ, start_response)  # type: ignore[arg-type]
        base = environ.get("PATH_INFO", "")[: -len("/Bulk")]
        canned: dict[int, dict[str, Any]] = {}
        passed: list[dict[str, Any]] = []
        dropped = None
        for index, op in enumerate(operations):
            data = json.dumps(op.get("data")).encode() if "data" in op else b""
            single = dict(environ, REQUEST_METHOD=str(op.get("method")),
                          PATH_INFO=base + str(op.get("path")), QUERY_STRING="",
                          CONTENT_LENGTH=str(len(data)))  # fmt: skip
            single["wsgi.input"] = io.BytesIO(data)
            answer = fault(single)
            if answer in (DROP, DROP_AFTER):
                dropped = dropped if dropped == DROP else answer
                passed.append(op)
            elif answer is not None:
                status, _, body = answer
                result = {"method": op.get("method"), "status": str(status)}
                result |= {"bulkId": op["bulkId"]} if op.get("bulkId") else {}
                if op.get("method") != "POST":
                    result["location"] = self.base_url + str(op.get("path"))
                with contextlib.suppress(ValueError):
                    result["response"] = json.loads(body) if body else None
                canned[index] = result
            else:
                rewritten = single["wsgi.input"].read()  # what the hook left of the body
                passed.append(op | ({"data": json.loads(rewritten)} if rewritten else {}))
        if dropped == DROP:
            passed = []  # the connection dies before the application sees any of it
        results: list[dict[str, Any]] = []
        if passed:
            content = json.dumps(request | {"Operations": passed}).encode()
            forward = dict(environ, CONTENT_LENGTH=str(len(content)))
            forward["wsgi.input"] = io.BytesIO(content)
            sent: list[Any] = []
            with self._handling:
                parts = self.app(forward, lambda *args: sent.extend(args))  # type: ignore[arg-type]
                body = b"".join(parts)
            if dropped is None and not str(sent[0]).startswith("2"):  # refused whole
                headers = {k: v for k, v in sent[1] if k.lower() != "content-length"}
                return self._answer((int(str(sent[0])[:3]), headers, body), start_response)
            results = json.loads(body).get("Operations") or []
        if dropped is not None:
            environ["test.connection"].shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError
        answered = iter(results)
        merged = [canned.get(i) or next(answered, None) for i in range(len(operations))]
        response = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkResponse"],
                    "Operations": [result for result in merged if result]}  # fmt: skip
        headers = {"Content-Type": "application/scim+json"}
        return self._answer((200, headers, json.dumps(response).encode()), start_response)

    @staticmethod
    def _answer(
        answer: tuple[int, dict[str, str], bytes], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        status, headers, body = answer
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        start_response(f"{status} {phrase}", [*headers.items(), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture(name="scim_server")
def scim_server_fixture() -> Iterator[ScimServer]:
    """A fresh ScimServer, stopped after the test."""
    with ScimServer() as server:
        yield server
