"""A progress line for long runs (replay, rebuild, snapshot): rate and ETA."""

from __future__ import annotations

import time
from typing import IO


class Progress:
    """Rate and ETA: a line redrawn in place on a terminal, a plain line every 2 s in a pipe."""

    def __init__(self, label: str, total: int, out: IO[str] | None):
        self.label, self.total, self.out = label, total, out
        self.tty = bool(out and out.isatty())
        self.started = self.last = time.monotonic()
        self.done = self.shown = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.out and (self.tty and now - self.last >= 0.1 or now - self.last >= 2):
            self.last = now
            self._write()

    def finish(self) -> None:
        if self.out:
            if self.shown != self.done or not self.done:
                self._write()
            if self.tty:
                self.out.write("\n")
                self.out.flush()

    def _write(self) -> None:
        assert self.out is not None
        self.shown = self.done
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate else 0.0
        line = f"{self.label} {self.done}/{self.total} events, {rate:,.0f}/s, ETA {eta:.0f}s"
        if self.tty:
            width = 24
            filled = width * self.done // max(self.total, 1)
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()
