"""Fenced writes: what a run writes about its key is accepted only while its lease holds.

A claim hands the run a fencing token that grows with each claim of the key (``lua/claim.lua``).
A worker that stalls past its lease (a pause, a stop, a swapped-out VM) may find another holder
when it wakes: its writes must not land on top of the other's. So the mirror's record of a
call's outcome and the call's audit entry are sent as one script (``lua/fenced.lua``) that
first checks the token is still the key's; the release does the same (``lua/release.lua``).
A refused record is not a write lost: the application may have changed, so the object is
marked in doubt and the key dirty, and the current holder reads it back before planning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker.store import codec, keys, scripts
from worker.store.keys import ReconcileKey

Command = tuple[str | int | float | bytes, ...]
"""A Redis command as its words: name, then arguments (``("HSET", key, field, value)``)."""


class LeaseLost(RuntimeError):
    """Our lease on the key expired and another worker may hold it: stop writing.
    ``schedule``: keys marked dirty meanwhile that need a reconcile message."""

    def __init__(self, what: str, schedule: Sequence[str] = ()):
        super().__init__(what)
        self.schedule = list(schedule)


@dataclass(frozen=True)
class Fence:
    """The lease a run holds on ``key``, with the fencing token its claim handed it."""

    key: ReconcileKey
    token: str

    def write(self, client: redis.Redis, commands: Sequence[Command]) -> None:
        """Apply ``commands`` in order, atomically, if the token is still the key's; else
        nothing is written, the run's object is marked in doubt and its key dirty, and
        ``LeaseLost`` is raised. One round trip."""
        doubt = keys.mirror_doubt(self.key.app, self.key.kind)
        argv: list[str | int | float | bytes] = [str(self.key), self.token, doubt, self.key.id]
        for command in commands:
            argv += [len(command), *command]
        answer = scripts.run(client, "fenced", *argv)
        if codec.text(answer[0]) != "ok":
            raise LeaseLost(f"{self.key.object}: lease lost", codec.texts(answer[1:]))
