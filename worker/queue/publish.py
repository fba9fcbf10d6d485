"""Publishing events: the one way events enter the product (webhook, replay, import).

An event is durable once ``publish`` returns: the batch is stored in Redis, marked pending and
its wake-up (the ``prov.ingest`` message) queued in the same atomic step that journals it and
filters duplicates (``lua/store_batch.lua``). Should a wake-up be lost with a worker, the
workers' sweeper sends it again for every batch still pending.

With ``PROVISIONER_REDIS_MIN_REPLICAS`` = N > 0, "durable" also means "on N replicas": the
store is followed, on the same connection, by a write of its own and ``WAIT N timeout``, so
that what a failover promotes holds the events. Fewer confirmations in time raise
``NotReplicated``: the events may be stored on the primary, but nothing may be acknowledged
(sent again, they are duplicates, and their acknowledgement then waits for the same replicas).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from worker.config import settings
from worker.contract.events import EVENT, Event, version
from worker.queue.celery_app import INGEST_QUEUE, ingest_message, send_ingest, send_reconcile
from worker.store import keys, scripts

BATCH_SIZE = 1000
BATCHES_PER_TRIP = 10
# Written before each WAIT: WAIT covers the writes of its connection, and a store of nothing
# but duplicates writes nothing, though its answer stands for events stored before.
WAIT_MARK = keys.PREFIX + "replicated:mark"


class NotReplicated(redis.ConnectionError):
    """Stored on the primary (perhaps), but fewer replicas than required confirmed it in time:
    not durable across a failover, so not to be acknowledged. Sending it again is harmless."""


@dataclass(frozen=True)
class Replication:
    """``WAIT``'s arguments: the replicas that must confirm, and for how long (ms)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def configured(cls) -> Replication:
        conf = settings()
        return cls(conf.redis_min_replicas, max(1, round(conf.redis_wait_timeout * 1000)))

    def queue(self, pipe: Any) -> None:
        """Queue the mark and the ``WAIT`` (on a pipeline, sync or asyncio)."""
        pipe.incr(WAIT_MARK)
        pipe.wait(self.replicas, self.timeout_ms)

    def check(self, confirmed: Any) -> None:
        """Raise ``NotReplicated`` unless ``WAIT`` answered enough replicas."""
        if isinstance(confirmed, Exception):
            raise confirmed
        if int(confirmed) < self.replicas:
            raise NotReplicated(
                f"stored on the primary but confirmed by {confirmed} of the "
                f"{self.replicas} replicas PROVISIONER_REDIS_MIN_REPLICAS requires within "
                f"{self.timeout_ms} ms: not acknowledged; publishing it again is harmless"
            )


@dataclass
class PublishResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


@dataclass
class Request:
    """A webhook request's events, stored all or nothing (its duplicates aside)."""

    events: Sequence[Event]


def wire(event: Event) -> bytes:
    """The stored form of an event: v1 JSON plus ``v``, its last-writer-wins version.

    Serialised by pydantic in Rust; ``v`` is spliced in as is (ids hold no quote or
    backslash, the contract refuses them)."""
    document = EVENT.dump_json(event, exclude_none=True)
    return document[:-1] + b',"v":"' + version(event).encode() + b'"}'


def publish(
    client: redis.Redis,
    events: Sequence[Event],
    *,
    batch_size: int = BATCH_SIZE,
    notify: bool = True,
) -> PublishResult:
    """Store events durably (duplicates are reported, not stored) and wake the workers."""
    result = PublishResult()
    chunks = [[Request(events[i : i + batch_size])] for i in range(0, len(events), batch_size)]
    for trip in range(0, len(chunks), BATCHES_PER_TRIP):
        # Several batches per round trip; each batch is still one atomic script run.
        for batch_id, (stored,) in _store(client, chunks[trip : trip + BATCHES_PER_TRIP], notify):
            result.accepted += stored.accepted
            result.duplicates += stored.duplicates
            if stored.accepted:
                result.batches.append(batch_id)
    return result


def publish_requests(
    client: redis.Redis,
    requests: Sequence[Request],
    *,
    batch_size: int = BATCH_SIZE,
    notify: bool = True,
) -> list[PublishResult]:
    """Store several requests in one round trip (the webhook's group commit), packed whole
    into batches of about ``batch_size`` events; each request's outcome."""
    return _per_request(_store(client, pack(requests, batch_size), notify))


async def publish_requests_async(
    client: redis.asyncio.Redis,
    requests: Sequence[Request],
    *,
    batch_size: int = BATCH_SIZE,
    notify: bool = True,
) -> list[PublishResult]:
    """``publish_requests`` on an asyncio client (the webhook's event loop)."""
    batches = pack(requests, batch_size)
    calls = [store_arguments(batch, notify) for batch in batches]
    replication = Replication.configured()
    if replication.replicas:
        answers = await _run_replicated_async(client, [args for _, args in calls], replication)
    else:
        answers = await asyncio.gather(
            *(scripts.run_async(client, "store_batch", *args) for _, args in calls)
        )
    return _per_request(
        [(batch_id, outcomes(batch, answer))
         for batch, (batch_id, _), answer in zip(batches, calls, answers, strict=True)]
    )  # fmt: skip


async def _run_replicated_async(
    client: redis.asyncio.Redis, calls: list[list[Any]], replication: Replication
) -> list[Any]:
    """``store_batch`` once per argument list, then the ``WAIT``, on one connection (a
    pipeline); a batch refused NOSCRIPT (a new primary lacks the script) runs again once the
    script is loaded. The answers, in order; ``NotReplicated`` when too few replicas confirm."""
    answers: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(3):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            await scripts.run_async(pipe, "store_batch", *calls[i])  # queued, not run
        replication.queue(pipe)
        *results, _, confirmed = await pipe.execute(raise_on_error=False)
        for i, result in zip(todo, results, strict=True):
            answers[i] = result
        todo = [i for i, result in zip(todo, results, strict=True)
                if isinstance(result, NoScriptError)]  # fmt: skip
        if not todo:
            break
        await client.script_load(scripts.source("store_batch")[0])
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    replication.check(confirmed)
    return answers


def pack(requests: Sequence[Request], batch_size: int) -> list[list[Request]]:
    """Requests, whole and in order, in batches of at most ``batch_size`` events (a larger
    request is a batch of its own)."""
    batches: list[list[Request]] = []
    size = 0
    for request in requests:
        if not batches or (batches[-1] and size + len(request.events) > batch_size):
            batches.append([])
            size = 0
        batches[-1].append(request)
        size += len(request.events)
    return batches


def _per_request(stored: list[tuple[str, list[PublishResult]]]) -> list[PublishResult]:
    """Each request's outcome; ``batches`` names every batch of the group that stored events."""
    results = [outcome for _, batch_outcomes in stored for outcome in batch_outcomes]
    batch_ids = [batch_id for batch_id, batch_outcomes in stored
                 if any(o.accepted for o in batch_outcomes)]  # fmt: skip
    for outcome in results:
        outcome.batches = batch_ids
    return results


def store_arguments(batch: Sequence[Request], notify: bool) -> tuple[str, list[Any]]:
    """A new batch id and the ``store_batch`` arguments that store ``batch`` under it
    (``notify``: queue its wake-up as it is stored)."""
    batch_id = uuid.uuid4().hex
    events = [e for r in batch for e in r.events]
    wakeup = ingest_message(batch_id) if notify else b""
    return batch_id, [batch_id, settings().journal_maxlen, len(events), INGEST_QUEUE, wakeup,
                      *(e.id for e in events), *(wire(e) for e in events)]  # fmt: skip


def outcomes(batch: Sequence[Request], answer: Any) -> list[PublishResult]:
    """Per request of a batch, what ``store_batch`` accepted and what was a duplicate."""
    duplicates = {int(i) for i in answer}
    result: list[PublishResult] = []
    first = 0
    for request in batch:
        outcome = PublishResult()
        for i, event in enumerate(request.events, start=first):
            (outcome.duplicates if i in duplicates else outcome.accepted).append(event.id)
        result.append(outcome)
        first += len(request.events)
    return result


def _store(
    client: redis.Redis, batches: Sequence[Sequence[Request]], notify: bool
) -> list[tuple[str, list[PublishResult]]]:
    """Run ``store_batch`` once per batch, all in one round trip; per batch its id and its
    requests' outcomes."""
    calls = [store_arguments(batch, notify) for batch in batches]
    answers = run_replicated(client, "store_batch", [args for _, args in calls])
    return [(batch_id, outcomes(batch, answer))
            for batch, (batch_id, _), answer in zip(batches, calls, answers, strict=True)]  # fmt: skip


def run_replicated(client: redis.Redis, name: str, calls: Sequence[list[Any]]) -> list[Any]:
    """Script ``name`` once per argument list, in one round trip, and as many replicas as the
    settings require confirming it (``NotReplicated`` otherwise); the answers, in order."""
    replication = Replication.configured()
    if len(calls) == 1 and not replication.replicas:
        # Alone, on the client: a pipeline would first ask SCRIPT EXISTS (a round trip).
        return [scripts.run(client, name, *calls[0])]
    pipe = client.pipeline(transaction=False)
    for args in calls:
        scripts.run(pipe, name, *args)
    if replication.replicas:
        replication.queue(pipe)
    answers = pipe.execute()
    if replication.replicas:
        replication.check(answers.pop())
        answers.pop()  # the mark
    return answers


def publish_wire(
    client: redis.Redis,
    documents: Iterable[str],
    *,
    batch_size: int = BATCH_SIZE,
    notify: bool = True,
) -> list[str]:
    """Store already-accepted events (their stored form) again, for a replay of the journal.

    No duplicate filter and no journal entry: the projection makes re-application idempotent.
    """
    batches: list[str] = []
    chunk: list[str] = []

    def flush() -> None:
        batch_id = uuid.uuid4().hex
        run_replicated(client, "store_replay", [[batch_id, *chunk]])
        batches.append(batch_id)
        chunk.clear()

    for document in documents:
        chunk.append(document)
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    if notify:
        send_ingest(batches)
    return batches


def ingest_now(client: redis.Redis, documents: list[str]) -> list[str]:
    """Apply stored events to the projection here, at once, outside the journal (rebuild);
    returns their batches. Reconciles go to the workers."""
    batches = publish_wire(client, documents, notify=False)
    for batch_id in batches:
        result_keys = scripts.run(client, "ingest", batch_id)[3:]
        send_reconcile(k.decode() for k in result_keys)
    return batches
