"""Publishing events: the one way events enter the product (webhook, replay, import).

An event is durable once ``publish`` returns: the batch is stored in Redis and marked pending
in the same atomic step that journals it and filters duplicates. The ingest message sent
afterwards is only a wake-up; the workers' sweeper re-sends it if it was lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis

from worker import scripts
from worker.celery_app import send_ingest
from worker.config import settings
from worker.events import EVENT, Event, epoch_micros

BATCH_SIZE = 1000
BATCHES_PER_TRIP = 10


@dataclass
class PublishResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


def wire(event: Event) -> bytes:
    """The stored form of an event: v1 JSON plus ``v``, its last-writer-wins version.

    Serialised by pydantic in Rust; ``v`` is spliced in as is (ids hold no quote or
    backslash, the contract refuses them)."""
    document = EVENT.dump_json(event, exclude_none=True)
    return document[:-1] + b',"v":"' + version(event).encode() + b'"}'


def version(event: Event) -> str:
    """``"<µs since epoch, 17 digits> <id>"``: compares as (occurred_at, id)."""
    return f"{epoch_micros(event.occurred_at):017d} {event.id}"


def publish(
    client: redis.Redis,
    events: Sequence[Event],
    *,
    batch_size: int = BATCH_SIZE,
    notify: bool = True,
) -> PublishResult:
    """Store events durably (duplicates are reported, not stored) and wake the workers."""
    result = PublishResult()
    maxlen = settings().journal_maxlen
    step = batch_size * BATCHES_PER_TRIP
    for trip in range(0, len(events), step):
        # Several batches per round trip; each batch is still one atomic script run.
        pipe = client.pipeline(transaction=False)
        chunks = []
        for start in range(trip, min(trip + step, len(events)), batch_size):
            chunk = events[start : start + batch_size]
            batch_id = uuid.uuid4().hex
            ids = [e.id for e in chunk]
            scripts.run(pipe, "store_batch", batch_id, maxlen, len(chunk), *ids,
                        *(wire(e) for e in chunk))  # fmt: skip
            chunks.append((batch_id, ids))
        for (batch_id, ids), duplicate_indexes in zip(chunks, pipe.execute(), strict=True):
            duplicates = {int(i) for i in duplicate_indexes}
            for i, event_id in enumerate(ids):
                (result.duplicates if i in duplicates else result.accepted).append(event_id)
            if len(duplicates) < len(ids):
                result.batches.append(batch_id)
    if notify:
        send_ingest(result.batches)
    return result


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
        scripts.run(client, "store_replay", batch_id, *chunk)
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
