"""A clock a test moves on by hand, in place of the wall clock of ``worker.store.scripts``
(the ``now`` each Lua script gets as ``ARGV[1]``): waiting out a lease or a backoff costs no
sleep. Redis's own clock (``TIME``, key expiries) and other processes are not affected."""

from __future__ import annotations

from worker.store import scripts


class FakeClock:
    """Milliseconds since the epoch, starting at the wall clock's time; still until moved."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = scripts.wall_clock_ms() if start_ms is None else start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
