"""Group commit for the webhook receiver: requests that arrive while a commit is in flight are
stored together by the next one, in one Redis round trip with one wake-up for the workers.

Under load, one commit carries many requests, so the per-request cost of the round trip and
of the wake-up shrinks with the load; one request alone is committed at
once (no timer, no added latency). Each request is still stored all or nothing, and answered
only once its events are durable (``publish_requests``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from worker.queue.publish import PublishResult, Request

Commit = Callable[[Sequence[Request]], Awaitable[list[PublishResult]]]


@dataclass
class _Waiting:
    request: Request
    answer: asyncio.Future[PublishResult]


class GroupCommit:
    """``await submit(request)``: its outcome, or the error the commit raised. One commit at
    a time; the event loop serves requests meanwhile."""

    def __init__(self, commit: Commit):
        self.commit = commit
        self.waiting: list[_Waiting] = []
        self.committer: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> PublishResult:
        answer: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieve)  # its error is answered even if no one awaits it
        self.waiting.append(_Waiting(request, answer))
        if self.committer is None:
            self.committer = asyncio.create_task(self._commit_all())
        # A client that goes away does not cancel the commit its request is part of.
        return await asyncio.shield(answer)

    async def _commit_all(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting, []
                try:
                    outcomes = await self.commit([w.request for w in group])
                except Exception as error:  # noqa: BLE001 - every request gets the error
                    for waiting in group:
                        if not waiting.answer.done():
                            waiting.answer.set_exception(error)
                    continue
                for waiting, outcome in zip(group, outcomes, strict=True):
                    if not waiting.answer.done():
                        waiting.answer.set_result(outcome)
        finally:
            self.committer = None


def _retrieve(answer: asyncio.Future[PublishResult]) -> None:
    if not answer.cancelled():
        answer.exception()
