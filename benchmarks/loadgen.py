"""A lean HTTP/1.1 load generator for the webhook benchmark, run in its own process.

``httpx`` spends about 1.3 ms of CPU per request, more than the receiver it measures, on the
same 2 cores. This client writes prebuilt, signed requests on raw keep-alive connections
(asyncio streams, uvloop when installed) and reads each answer's status line, headers and
``Content-Length`` body: tens of microseconds per request. Its CPU is reported apart.

``python -m benchmarks.loadgen URL PREFIX EVENTS_PER_REQUEST SECONDS CONCURRENCY SECRET_FILE``
prints one JSON object: ``seconds``, ``statuses`` (status -> count, ``0`` for a transport
error), ``accepted`` (events answered 202) and ``latencies_ms`` (per 202).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from producers import signing

Body = Callable[[str, int, int], bytes]


def request(host: str, body: bytes, secret: bytes) -> bytes:
    """One signed ``POST /v1/events`` (keep-alive)."""
    signature = signing.sign(secret, body, int(time.time()))
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{signing.HEADER}: {signature}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> int:
    """Read one response; its status. Only ``Content-Length`` framing (the receiver's)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def load(url: str, prefix: str, per_request: int, seconds: float, concurrency: int,
               secret: bytes, body: Body) -> tuple[float, Counter, int, list[float]]:  # fmt: skip
    """``concurrency`` connections posting fresh bodies until ``seconds`` have passed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    statuses: Counter = Counter()
    latencies: list[float] = []
    accepted = 0
    numbers = itertools.count()

    async def connection(deadline: float) -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < deadline:
                payload = request(f"{host}:{port}", body(prefix, next(numbers) * per_request,
                                                         per_request), secret)  # fmt: skip
                sent = time.perf_counter()
                writer.write(payload)
                status = await read_answer(reader)
                statuses[status] += 1
                if status == 202:
                    accepted += per_request
                    latencies.append((time.perf_counter() - sent) * 1000)
        except (OSError, asyncio.IncompleteReadError):
            statuses[0] += 1
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(connection(t0 + seconds) for _ in range(concurrency)))
    return time.monotonic() - t0, statuses, accepted, latencies


def main(argv: list[str]) -> int:
    from benchmarks.webhook import body

    url, prefix, per_request, seconds, concurrency, secret_file = argv
    secret = Path(secret_file).read_bytes().strip()
    try:
        import uvloop

        runner: Callable = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    elapsed, statuses, accepted, latencies = runner(
        load(url, prefix, int(per_request), float(seconds), int(concurrency), secret, body)
    )
    json.dump({"seconds": elapsed, "statuses": statuses, "accepted": accepted,
               "latencies_ms": latencies}, sys.stdout)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
