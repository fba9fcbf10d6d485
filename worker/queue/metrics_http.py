"""A worker's HTTP listener (``PROVISIONER_METRICS_HOST``:``PROVISIONER_METRICS_PORT``):

- ``GET /metrics``: the worker's metrics (all its processes) and the pool's state gauges (404
  with ``PROVISIONER_METRICS=off``: the listener then serves the liveness probe alone);
- ``GET /healthz``: 200 while this worker's own heartbeat in Redis is fresh (its sweeper
  thread beats every 0.25 s, for 15 s, on Redis's clock), 503 when it is stale or Redis does
  not answer: a liveness probe that notices a dead sweeper thread or a lost Redis.

It runs in the worker's main process, in threads of its own; a port already taken is logged
and the worker runs on without it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from worker.queue import metrics
from worker.store import keys, scripts

log = logging.getLogger("provisioner.metrics")


def heartbeat_fresh(client: redis.Redis, name: str) -> bool:
    """Whether the heartbeat of worker ``name`` is still valid on the pool's clock."""
    pipe = client.pipeline(transaction=False)
    pipe.zscore(keys.WORKERS, name)
    pipe.time()
    expiry, now = pipe.execute()
    return expiry is not None and expiry > scripts.time_ms(now)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/metrics" and metrics.enabled():
            self._answer(200, metrics.exposition(self.server.state), metrics.CONTENT_TYPE)
        elif self.path == "/healthz":
            ok = self.server.healthy()
            body = {"status": "ok" if ok else "unavailable",
                    "heartbeat": "fresh" if ok else "stale or unreadable"}  # fmt: skip
            self._answer(200 if ok else 503, json.dumps(body).encode(), "application/json")
        else:
            self._answer(404, b'{"error":"not_found"}', "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("metrics listener: " + format, *args)


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` and ``/healthz`` on a port of their own, served by a daemon thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        state: metrics.StateCollector | None,
        healthy: Callable[[], bool],
    ):
        super().__init__(address, _Handler)
        self.state = state
        self.healthy = healthy
        self.thread = threading.Thread(
            target=self.serve_forever, name="provisioner-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_listener(
    host: str, port: int, state: metrics.StateCollector | None, healthy: Callable[[], bool]
) -> MetricsServer | None:
    """Serve on ``host``:``port`` (0: not at all); None when off or the port is taken."""
    if port == 0:
        return None
    try:
        server = MetricsServer((host, port), state, healthy).start()
    except OSError as error:
        log.warning("metrics listener not started on %s:%d: %s", host, port, error)
        return None
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server


def health_check(client: Callable[[], redis.Redis], name: str) -> Callable[[], bool]:
    """``/healthz``'s check of worker ``name``: False too when Redis does not answer."""

    def healthy() -> bool:
        try:
            return heartbeat_fresh(client(), name)
        except redis.RedisError:
            return False

    return healthy
