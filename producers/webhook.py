"""The webhook receiver: ``POST /v1/events``, ``/healthz``, ``/readyz``, ``/metrics``.

A request is checked in this order, and nothing of a refused request is published:
content type (415), declared size (413), credentials (401), body read up to 1 MiB (413),
JSON (400), event count (413), the v1 contract (422). It is answered 202 only once its events
are journaled and their batch is pending in Redis, and, with
``PROVISIONER_REDIS_MIN_REPLICAS`` = N, confirmed by N replicas (``WAIT``); a Redis outage, or
too few confirmations in time (a failover), answers 503 with ``Retry-After`` and the request
can be sent again as it is (what was stored of it is then a duplicate). Bad input never gets
a 5xx: whatever the body holds, it is answered with a 4xx that names the problem
(``tests/test_webhook_fuzz.py``).

Credentials are ``X-Provisioner-Signature``, or the Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``), or, when enabled, a bearer secret (see
``signing.py``).

Requests are stored by group commit (``groupcommit.py``): those that arrive while a commit is
in flight are stored together by the next one, each still all or nothing, in one round trip
with one wake-up for the workers. The application is plain ASGI on uvicorn (httptools,
uvloop); several worker processes share the port with ``--workers N``.

Senders deliver at least once, so a request sent again (a retry: same body, same signature,
inside the window) is answered like the first, 202, its events listed as duplicates. Nothing
remembers signatures, because a replayed request can do no harm:

- It can only carry what was signed: the HMAC covers the timestamp and the exact body (and
  the ``webhook-id``), so a signature reused with another body or time fails to verify.
- Its events are the same events, which ``store_batch.lua`` drops by id in the step that would
  store them (atomically, so concurrent copies cannot both get in): nothing is journaled,
  applied or woken up again. The id filter keeps ids for 30 days or 2,000,000 events by
  default, far longer than the 5-minute window in which a signature is accepted.
- Even an event whose id has been forgotten changes nothing when applied again: every
  register of the projection is last-writer-wins by the event's version, and the same version
  is not newer than itself (``rebuild`` re-applies the journal on the same ground).

The window is the part of replay protection that still protects something: a request
recorded today cannot be sent next month, when its ids may have left the filter.

| variable | default | meaning |
|---|---|---|
| ``PROVISIONER_WEBHOOK_SECRET`` | none | comma-separated secrets, raw or ``whsec_<base64>`` (first signs, any verifies) |
| ``PROVISIONER_WEBHOOK_SECRET_FILE`` | none | a file holding more comma-separated secrets |
| ``PROVISIONER_WEBHOOK_ALLOW_BEARER`` | ``0`` | ``1``: also accept ``Authorization: Bearer`` |
| ``PROVISIONER_WEBHOOK_INSECURE`` | ``0`` | ``1``: no secret needed, requests without auth pass |
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import json
import logging
import logging.config
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import redis
import redis.asyncio

from producers import signing
from producers.groupcommit import GroupCommit
from worker import config
from worker.contract.events import (
    Event,
    EventError,
    MalformedJSON,
    load_json,
    parse_documents,
    parse_event,
)
from worker.observability import init_sentry
from worker.queue import metrics
from worker.queue.publish import NotReplicated, PublishResult, publish_requests_async
from worker.queue.publish import Request as PublishRequest
from worker.queue.sweeper import alive_workers

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = dict[str, str]  # lowercase names; the first of repeated headers

log = logging.getLogger("provisioner.webhook")

MAX_BODY = 1024 * 1024  # bytes
MAX_EVENTS = 1000  # events per request
INLINE_PARSE = 64 * 1024  # bodies above this are validated off the event loop
SIGNATURE_HEADER = signing.HEADER.lower()
READY_TIMEOUT = 2.0  # seconds /readyz waits for Redis
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 5,
                                  "health_check_interval": 30}  # fmt: skip

ALLOW_BEARER_ENV = "PROVISIONER_WEBHOOK_ALLOW_BEARER"
INSECURE_ENV = "PROVISIONER_WEBHOOK_INSECURE"

_UNAVAILABLE = (redis.RedisError, ConnectionError, TimeoutError)


class ConfigurationError(RuntimeError):
    """The receiver cannot start as configured (the message never holds a secret)."""


# the ``reason`` label of ``provisioner_events_refused_total`` for each error code
REFUSAL_REASONS = {"unauthorized": "auth", "unsupported_media_type": "content_type",
                   "body_too_large": "too_large", "too_many_events": "too_large",
                   "malformed_json": "bad_json", "invalid_events": "contract",
                   "unavailable": "unavailable"}  # fmt: skip


class Refused(Exception):
    """A refused request: the status, a short code, a detail and the problems to answer, and
    the reason it is counted under (one of ``metrics.REFUSAL_REASONS``)."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        problems: list[dict[str, str]],
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.problems, self.headers = problems, headers or {}
        self.reason = REFUSAL_REASONS.get(error, error)

    def response(self) -> Response:
        body = {"error": self.error, "detail": self.detail, "problems": self.problems}
        return Response(self.status, body, self.headers)


# --- authentication --------------------------------------------------------------------------


class Authenticator:
    """Checks a request's credentials: an HMAC signature, or a bearer secret when enabled."""

    def __init__(self, secrets: Sequence[bytes], allow_bearer: bool, insecure: bool, window: int):
        self.secrets = list(secrets)
        self.allow_bearer = allow_bearer
        self.insecure = insecure
        self.window = window

    @property
    def challenge(self) -> str:
        value = f'HMAC-SHA256 realm="provisioner", header="{signing.HEADER}"'
        return value + (', Bearer realm="provisioner"' if self.allow_bearer else "")

    def refuse(self, reason: str, header: str = signing.HEADER) -> Refused:
        problem = {"pointer": "", "header": header, "reason": reason}
        return Refused(401, "unauthorized", reason, [problem], {"WWW-Authenticate": self.challenge})

    def before_body(self, headers: Headers) -> str | None:
        """Check what the headers alone decide; the scheme whose signature the body must then
        match (``signing.HEADER`` or ``signing.SIGNATURE_HEADER``), or None.

        ``X-Provisioner-Signature`` is checked when present, else the Standard Webhooks
        headers when any of them is present, else ``Authorization``."""
        if not self.secrets:  # insecure mode without secrets: nothing to check against
            return None
        try:
            header = headers.get(SIGNATURE_HEADER)
            if header is not None:
                signing.parse_header(header)
                return signing.HEADER
            if any(name in headers for name in signing.STANDARD_HEADERS):
                signing.parse_standard(*(headers.get(n) for n in signing.STANDARD_HEADERS))
                return signing.SIGNATURE_HEADER
        except signing.SignatureError as error:
            raise self.refuse(error.reason, error.header) from None
        authorization = headers.get("authorization")
        if authorization is not None:
            self.check_bearer(authorization)
            return None
        if self.insecure:
            return None
        raise self.refuse("missing signature")

    def check_bearer(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise self.refuse("unsupported authorization scheme", "Authorization")
        if not self.allow_bearer:
            raise self.refuse("bearer authentication is not enabled", "Authorization")
        token_bytes = token.strip().encode()
        matches = [hmac.compare_digest(token_bytes, s) for s in self.secrets]
        if not any(matches):
            raise self.refuse("wrong bearer secret", "Authorization")

    def check_signature(self, headers: Headers, body: bytes, scheme: str) -> signing.Signature:
        """Verify the body against the scheme ``before_body`` chose; 401 unless it matches."""
        try:
            if scheme == signing.HEADER:
                header = headers.get(SIGNATURE_HEADER)
                return signing.check(header, body, self.secrets, time.time(), self.window)
            msg_id, timestamp, signature = (headers.get(n) for n in signing.STANDARD_HEADERS)
            return signing.check_standard(
                msg_id, timestamp, signature, body, self.secrets, time.time(), self.window
            )
        except signing.SignatureError as error:
            raise self.refuse(error.reason, error.header) from None


# --- reading and validating --------------------------------------------------------------------


def check_content_type(headers: Headers) -> None:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise Refused(
            415,
            "unsupported_media_type",
            f"content type must be application/json, not {shown}",
            [{"pointer": "", "header": "Content-Type", "reason": "expected application/json"}],
        )


def too_large(declared: str | None = None) -> Refused:
    reason = f"request body exceeds the limit of {MAX_BODY} bytes (1 MiB)"
    reason += f" (Content-Length: {declared})" if declared else ""
    return Refused(413, "body_too_large", reason, [{"pointer": "", "reason": reason}])


def check_content_length(headers: Headers) -> None:
    declared = headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large(declared)


async def read_body(receive: Receive) -> bytes:
    """The raw body, refused as soon as it grows past ``MAX_BODY`` (never buffered beyond)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > MAX_BODY:
            raise too_large()
        body += chunk
        if not message.get("more_body", False):
            return bytes(body)


def decode(body: bytes) -> Any:
    """The JSON document; 400 naming the problem (not UTF-8, syntax, NaN, nesting, digits)."""
    try:
        return load_json(body)
    except MalformedJSON as error:
        reason = f"malformed JSON: {error}"
        raise Refused(400, "malformed_json", reason, [{"pointer": "", "reason": reason}]) from None


def validate(body: bytes) -> list[Event]:
    """Decode and validate the body: one event or an array of at most ``MAX_EVENTS``."""
    document = decode(body)
    if isinstance(document, list) and len(document) > MAX_EVENTS:
        reason = f"{len(document)} events in one request; at most {MAX_EVENTS} are accepted"
        raise Refused(413, "too_many_events", reason, [{"pointer": "", "reason": reason}])
    try:
        if isinstance(document, list):
            return parse_documents(document)
        return [parse_event(document)]
    except EventError as error:
        detail = f"invalid events, nothing was accepted: {summary(error.problems)}"
        raise Refused(422, "invalid_events", detail, error.problems) from None


def summary(problems: list[dict[str, str]], shown: int = 3) -> str:
    """The first problems as ``pointer: reason``, for the detail line."""
    text = "; ".join(f"{p['pointer'] or '/'}: {p['reason']}" for p in problems[:shown])
    more = len(problems) - shown
    return text + (f" (and {more} more)" if more > 0 else "")


def unavailable(error: Exception) -> Refused:
    if isinstance(error, NotReplicated):
        reason = "not yet confirmed by enough Redis replicas; send it again (a copy is harmless)"
    else:
        reason = f"Redis is unavailable ({error.__class__.__name__}); nothing was accepted, retry"
    refused = Refused(
        503, "unavailable", reason, [{"pointer": "", "reason": reason}], {"Retry-After": "5"}
    )
    if isinstance(error, NotReplicated):
        refused.reason = "replicas"
    return refused


# --- HTTP -----------------------------------------------------------------------------------
# A plain ASGI application: three routes need no framework, and the hot path (one request of
# one event) is then the HTTP parser, the checks, the commit and one log line.


class Disconnected(Exception):
    """The client went away before its body was read."""


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as it is (``content_type``) instead of ``body``
    content_type: str = "application/json"

    async def send(self, send: Send, head_only: bool = False) -> None:
        content = self.raw
        if content is None:
            content = json.dumps(self.body, separators=(",", ":")).encode()
        headers = [(b"content-type", self.content_type.encode("latin-1")),
                   (b"content-length", str(len(content)).encode())]  # fmt: skip
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in self.headers.items()]  # fmt: skip
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head_only else content})


@dataclass
class Exchange:
    """One request as the access log sees it."""

    method: str
    path: str
    headers: Headers
    events: int = 0
    error: str | None = None


def header_map(scope: Scope) -> Headers:
    headers: Headers = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


async def lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: answer uvicorn's lifespan messages."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --- the application -------------------------------------------------------------------------


class Receiver:
    """The ASGI application: the endpoints, bound to their authenticator and Redis client."""

    def __init__(self, auth: Authenticator, redis_url: str | None = None):
        self.auth = auth
        self.redis_url = redis_url  # None: REDIS_URL, read when first needed
        self._client: redis.Redis | None = None
        self._async_client: redis.asyncio.Redis | None = None
        self.group_commit = GroupCommit(self.commit)
        self.routes: dict[str, tuple[str, Callable[[Exchange, Receive], Awaitable[Response]]]] = {
            "/v1/events": ("POST", self.events),
            "/healthz": ("GET", self.healthz),
            "/readyz": ("GET", self.readyz),
            "/metrics": ("GET", self.exposition),
        }
        # the pool's state gauges but the apps' rates (the profiles are not the producers')
        self.state = metrics.StateCollector(self.client)

    def target(self) -> config.RedisTarget:
        """The Redis of ``redis_url``, else of the settings (one server, or Sentinel's)."""
        if self.redis_url is None:
            return config.redis_target()
        return config.parse_redis_url(self.redis_url, ca_file=config.settings().redis_ca_file)

    def client(self) -> redis.Redis:
        """The blocking client (readiness, in a thread)."""
        if self.redis_url is None:
            return config.redis_client()
        if self._client is None:
            self._client = config.new_redis(self.target(), **CLIENT_OPTIONS)
        return self._client

    def async_client(self) -> redis.asyncio.Redis:
        """The event loop's client (commits), made in the loop that uses it; with Sentinel, a
        broken connection asks the sentinels for the primary again."""
        if self._async_client is None:
            self._async_client = config.new_async_redis(self.target(), **CLIENT_OPTIONS)
        return self._async_client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        started = time.perf_counter()
        exchange = Exchange(scope["method"], scope["path"], header_map(scope))
        try:
            response = await self.route(exchange, receive)
        except Exception:
            log.exception("%s %s failed", exchange.method, exchange.path)
            exchange.error = "internal_error"
            response = Response(500, {"error": "internal_error", "detail": "internal error",
                                      "problems": []})  # fmt: skip
        await response.send(send, head_only=exchange.method == "HEAD")
        access_log(exchange, response.status, (time.perf_counter() - started) * 1000)

    async def route(self, exchange: Exchange, receive: Receive) -> Response:
        route = self.routes.get(exchange.path)
        if route is None:
            return Response(404, {"error": "not_found", "detail": "Not Found", "problems": []})
        method, endpoint = route
        allowed = (method, "HEAD") if method == "GET" else (method,)
        if exchange.method not in allowed:
            body = {"error": "method_not_allowed", "detail": "Method Not Allowed", "problems": []}
            return Response(405, body, {"Allow": ", ".join(allowed)})
        return await endpoint(exchange, receive)

    async def events(self, exchange: Exchange, receive: Receive) -> Response:
        try:
            events = await self.receive(exchange.headers, receive)
            exchange.events = len(events)
            result = await self.store(events)
        except Refused as refused:
            exchange.error = refused.error
            metrics.refused(refused.reason)
            return refused.response()
        except Disconnected:
            exchange.error = "client_disconnected"
            return Response(400, {"error": "client_disconnected", "detail": "", "problems": []})
        metrics.received(len(result.accepted), len(result.duplicates))
        return Response(202, {"accepted": result.accepted, "duplicates": result.duplicates})

    async def receive(self, headers: Headers, receive: Receive) -> list[Event]:
        """Everything that decides on the request's content, before anything is stored."""
        check_content_type(headers)
        check_content_length(headers)
        scheme = self.auth.before_body(headers)
        body = await read_body(receive)
        if scheme is not None:
            self.auth.check_signature(headers, body, scheme)
        if len(body) <= INLINE_PARSE:
            return validate(body)
        return await anyio.to_thread.run_sync(validate, body)

    async def store(self, events: list[Event]) -> PublishResult:
        """Publish with the requests around it (group commit). Events accepted before (a
        retry, or a replay) are answered as duplicates and stored nowhere."""
        if not events:  # an empty array: nothing to store
            return PublishResult()
        return await self.group_commit.submit(PublishRequest(events))

    async def commit(self, requests: Sequence[PublishRequest]) -> list[PublishResult]:
        """Store a group of requests; a Redis outage refuses them all with 503 (sent again as
        they are, whatever was stored is then answered as duplicates)."""
        try:
            return await publish_requests_async(self.async_client(), requests)
        except _UNAVAILABLE as error:
            log.warning("publish failed: %s", error.__class__.__name__)
            raise unavailable(error) from None

    async def healthz(self, exchange: Exchange, receive: Receive) -> Response:
        return Response(200, {"status": "ok"})

    async def readyz(self, exchange: Exchange, receive: Receive) -> Response:
        checks = {"redis": f"no answer within {READY_TIMEOUT:g} s", "workers": "unknown"}
        with anyio.move_on_after(READY_TIMEOUT):  # the thread is abandoned, not waited for
            checks = await anyio.to_thread.run_sync(self.readiness, abandon_on_cancel=True)
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ok" if ready else "unavailable", "checks": checks}
        return Response(200 if ready else 503, body)

    async def exposition(self, exchange: Exchange, receive: Receive) -> Response:
        """The receiver's counters (of all its processes) and the pool's state, read from
        Redis in a thread (left out when Redis does not answer in time)."""
        content = await anyio.to_thread.run_sync(metrics.exposition, self.state)
        return Response(200, {}, raw=content, content_type=metrics.CONTENT_TYPE)

    def readiness(self) -> dict[str, str]:
        try:
            client = self.client()
            client.ping()
        except _UNAVAILABLE as error:
            return {"redis": f"unreachable ({error.__class__.__name__})", "workers": "unknown"}
        try:
            alive = alive_workers(client)
        except _UNAVAILABLE as error:
            return {"redis": f"unreachable ({error.__class__.__name__})", "workers": "unknown"}
        workers = "ok" if alive else "no worker heartbeat"
        return {"redis": "ok", "workers": workers}


def access_log(exchange: Exchange, status: int, millis: float) -> None:
    """One line per request: method, path, status, events, duration (no body, no secret)."""
    probe = exchange.path in ("/healthz", "/readyz", "/metrics")
    level = logging.DEBUG if probe and status < 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    error = f" error={exchange.error}" if exchange.error else ""
    log.log(level, "%s %s %d events=%d duration_ms=%.1f%s", exchange.method, exchange.path,
            status, exchange.events, millis, error)  # fmt: skip


def create_app(
    *,
    secrets: Sequence[bytes] | None = None,
    allow_bearer: bool | None = None,
    insecure: bool = False,
    redis_url: str | None = None,
    window: int = signing.WINDOW,
) -> Receiver:
    """Build the receiver. ``None`` means: from the environment (secrets, bearer, Redis).

    Raises ``ConfigurationError`` when no secret is configured, unless ``insecure``.
    """
    if secrets is None:
        try:
            secrets = signing.load_secrets()
        except signing.SecretsError as error:
            raise ConfigurationError(str(error)) from None
    if allow_bearer is None:
        allow_bearer = config.load().webhook_allow_bearer
    if not secrets and not insecure:
        raise ConfigurationError(
            f"no webhook secret: set {signing.SECRET_ENV} (comma-separated for rotation) or "
            f"{signing.SECRET_FILE_ENV}; for local use only, start with --insecure "
            f"({INSECURE_ENV}=1)"
        )
    if insecure:
        log.warning(
            "webhook receiver in INSECURE mode: requests without authentication are "
            "accepted; never expose it beyond this machine"
        )
    auth = Authenticator(secrets, allow_bearer, insecure, window)
    return Receiver(auth, redis_url)


def app_from_env() -> Receiver:
    """The factory uvicorn's workers call: everything from the environment."""
    init_sentry("webhook")  # when SENTRY_DSN is set
    # A log line per request: skip what no line shows (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return create_app(insecure=config.load().webhook_insecure)


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration plus the receiver's logger (each worker applies it)."""
    from uvicorn.config import LOGGING_CONFIG

    conf = copy.deepcopy(LOGGING_CONFIG)
    # A plain formatter for the access lines: uvicorn's copies every record to colour it.
    conf["formatters"]["provisioner"] = {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"
    }
    conf["handlers"]["provisioner"] = {"formatter": "provisioner", "class": "logging.StreamHandler",
                                       "stream": "ext://sys.stderr"}  # fmt: skip
    conf["loggers"]["provisioner"] = {"handlers": ["provisioner"], "level": "INFO",
                                      "propagate": False}  # fmt: skip
    return conf


def serve(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 1, insecure: bool = False
) -> None:
    """Run the receiver with uvicorn (``workers`` processes); configuration from the env."""
    import uvicorn

    if insecure:
        os.environ[INSECURE_ENV] = "1"  # the workers are spawned: they read it from the env
    insecure = config.load_or_exit("provisioner webhook").webhook_insecure
    logging.config.dictConfig(log_config())
    try:
        create_app(insecure=insecure)  # refuse to start now, not in every worker
        config.redis_target()
    except ConfigurationError as error:
        raise SystemExit(f"provisioner webhook: {error}") from None
    settings = uvicorn.Config(
        "producers.webhook:app_from_env",
        factory=True,
        http="httptools",
        loop="uvloop",
        host=host,
        port=port,
        workers=workers,
        log_config=log_config(),
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    if workers <= 1:
        uvicorn.Server(settings).run()
        return
    metrics.enable_multiprocess()  # the workers count in files that any of them exposes
    from uvicorn.supervisors import Multiprocess

    # uvicorn binds the shared socket itself for several workers, and asyncio then leaves
    # TCP_NODELAY off on the connections it accepts: every keep-alive answer would wait for
    # the client's delayed ACK (~40 ms). Accepted sockets inherit the option on Linux.
    sock = settings.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(settings, sockets=[sock]).run()
