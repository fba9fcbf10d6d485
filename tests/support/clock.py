"""Moving the pool's clock on by hand: every Lua script reads Redis's ``TIME`` and adds
``worker.store.scripts.clock_offset_ms`` (0 in production), so a test waits out a lease or a
backoff by moving that offset instead of sleeping. The clock keeps running meanwhile (it is
Redis's), so a test leaves a margin of a second or so where it checks that something is not
due yet. Only this process's scripts see the offset: Redis's pacing (throttle.lua), key
expiries and other processes do not."""

from __future__ import annotations

from worker.store import scripts


class FakeClock:
    """The offset of the scripts' clock in this process, moved on by ``advance``."""

    def advance(self, seconds: float) -> None:
        scripts.clock_offset_ms += round(seconds * 1000)

    @property
    def offset_ms(self) -> int:
        return scripts.clock_offset_ms
