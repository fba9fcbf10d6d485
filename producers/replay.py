"""Bulk replay of queued events from a file: JSON Lines or one JSON array, ``-`` for stdin.

The whole file is validated before anything is published; an invalid file is refused with
the line (or array index) and the field of every problem. Publishing stops at the first chunk
that Redis does not take durably (an outage, or fewer replicas than
``PROVISIONER_REDIS_MIN_REPLICAS`` confirming it): the error says how far it got, and the
whole file can be replayed again (what was stored is skipped as duplicates).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import redis

from worker.contract.events import Event, EventError, load_json, parse_documents, parse_events
from worker.queue.publish import BATCH_SIZE, NotReplicated, PublishResult, publish

MAX_REPORTED = 20


class ReplayError(ValueError):
    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("; ".join(lines))


def read_events(path: str) -> list[Event]:
    raw = sys.stdin.buffer.read() if path == "-" else _read(path)
    text = raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else raw
    if text.lstrip().startswith("["):
        try:
            return parse_events(text)
        except EventError as error:
            raise ReplayError([_where_in_array(p) for p in error.problems][:MAX_REPORTED]) from None
    return _read_lines(text)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ReplayError([f"cannot read {path}: {error.strerror}"]) from None


def _where_in_array(problem: dict[str, str]) -> str:
    pointer = problem["pointer"]
    index, _, rest = pointer.lstrip("/").partition("/")
    if index.isdigit():
        return f"event #{int(index) + 1} (index {index}): /{rest}: {problem['reason']}"
    return f"{pointer or '/'}: {problem['reason']}"


def _read_lines(text: str) -> list[Event]:
    """JSON Lines: each line decoded once, then every event validated in one pass."""
    documents: list[Any] = []
    line_numbers: list[int] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = load_json(line)
        except ValueError as error:  # MalformedJSON: the reason, as the webhook gives it
            problems.append(f"line {number}: malformed JSON: {error}")
        else:
            if isinstance(document, dict):
                documents.append(document)
                line_numbers.append(number)
            else:
                problems.append(f"line {number}: /: one event object per line")
        if len(problems) >= MAX_REPORTED:
            break
    if not problems:
        try:
            return parse_documents(documents)
        except EventError as error:
            for problem in error.problems:
                index, _, rest = problem["pointer"].lstrip("/").partition("/")
                problems.append(f"line {line_numbers[int(index)]}: /{rest}: {problem['reason']}")
    raise ReplayError(problems[:MAX_REPORTED])


def replay(
    client: redis.Redis, events: Sequence[Event], *, progress: IO[str] | None = None
) -> PublishResult:
    """Publish in batches, showing progress (a bar on a terminal, plain lines in a pipe)."""
    total = PublishResult()
    started = time.monotonic()
    tty = bool(progress and progress.isatty())
    last_line = 0.0
    chunk = BATCH_SIZE * 10
    for start in range(0, len(events), chunk):
        try:
            result = publish(client, events[start : start + chunk])
        except NotReplicated as error:
            raise NotReplicated(f"replay stopped, {start} of {len(events)} events published "
                                f"before: {error}") from None  # fmt: skip
        total.accepted += result.accepted
        total.duplicates += result.duplicates
        total.batches += result.batches
        done = min(start + chunk, len(events))
        now = time.monotonic()
        if progress and (tty or now - last_line >= 2 or done == len(events)):
            last_line = now
            rate = done / max(now - started, 1e-9)
            eta = (len(events) - done) / rate if rate else 0
            line = f"replay {done}/{len(events)} events, {rate:,.0f}/s, ETA {eta:.0f}s"
            progress.write(("\r" + line) if tty else line + "\n")
            progress.flush()
    if progress and tty:
        progress.write("\n")
    return total
