"""Prometheus metrics: the catalogue of docs/metrics.md, and its exposition.

Process metrics (counters, histograms) are counted where things happen: the webhook receiver,
the ingest task, the runner, the SCIM client's ``on_request`` hook, the rate limiter. State
gauges are read from Redis at scrape time (``StateCollector``), the same in every process.

A worker always counts in prometheus_client's multiprocess mode (``enable_multiprocess``, before
the first value is created): each process, the main one and every ``--pool prefork`` child,
writes its own files in a directory made fresh for this worker, and the listener of the main
process adds them up. The receiver does the same when it runs several processes.

``PROVISIONER_METRICS=off`` (``enabled()``) turns every counting function below into a no-op,
and ``enable_multiprocess`` makes no directory.

The module sits in the queue layer so that the producers may count too; what only a higher
layer knows (the profiles' default rates) is handed to the collector as a function.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.config import settings
from worker.queue.sweeper import alive_workers
from worker.store import apps, codec, keys, scripts
from worker.store.apps import AppConfig

log = logging.getLogger("provisioner.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
REFUSAL_REASONS = ("auth", "content_type", "too_large", "bad_json", "contract", "unavailable",
                   "replicas")  # fmt: skip
KEY_STATES = ("dirty", "in_flight", "delayed", "parked", "held", "deferred")
CLAIMED_OUTCOMES = ("done", "retry", "parked", "skipped", "lost", "held", "throttled",
                    "deferred", "paused")  # fmt: skip
LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400,
               43200, 86400)  # fmt: skip
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- process metrics ---------------------------------------------------------------------------
disable_created_metrics()  # no ``*_created`` series: multiprocess mode has none either
EVENTS_RECEIVED = Counter(
    "provisioner_events_received", "Events the receiver stored (accepted) or found stored "
    "before (duplicate)", ["outcome"],
)  # fmt: skip
EVENTS_REFUSED = Counter(
    "provisioner_events_refused", "Webhook requests refused, by reason", ["reason"]
)
EVENTS_APPLIED = Counter(
    "provisioner_events_applied", "Events the ingest task applied to the projection, found "
    "stale (an older version) or ignored (after a deletion)", ["outcome"],
)  # fmt: skip
RECONCILES = Counter(
    "provisioner_reconciles", "Reconciles of a key that ran, by how they ended", ["app", "outcome"]
)
RECONCILE_DURATION = Histogram(
    "provisioner_reconcile_duration_seconds", "Duration of a reconcile, from its claim to its "
    "release", ["app"], buckets=DURATION_BUCKETS,
)  # fmt: skip
SCIM_REQUESTS = Counter(
    "provisioner_scim_requests", "SCIM requests sent, by HTTP status ('error': no answer)",
    ["app", "method", "status"],
)  # fmt: skip
SCIM_DURATION = Histogram(
    "provisioner_scim_request_duration_seconds", "Duration of a SCIM request", ["app", "method"],
    buckets=DURATION_BUCKETS,
)  # fmt: skip
SCIM_THROTTLED = Counter("provisioner_scim_throttled", "429 answers of the application", ["app"])
SCIM_BULK_OPERATIONS = Counter(
    "provisioner_scim_bulk_operations", "Operations carried by SCIM Bulk requests, by whether "
    "the application did them", ["app", "outcome"],
)  # fmt: skip
RETRY_AFTER_PAUSES = Counter(
    "provisioner_scim_retry_after_pauses", "Pauses of the app taken from a Retry-After", ["app"]
)
RATELIMIT_WAITS = Counter(
    "provisioner_ratelimit_waits", "Reconciles deferred or slept for the app's pace", ["app"]
)
RATELIMIT_WAIT_SECONDS = Counter(
    "provisioner_ratelimit_wait_seconds", "Seconds of those waits", ["app"]
)
SYNC_LAG = Histogram(
    "provisioner_sync_lag_seconds", "From an event's occurred_at (or its acceptance) to the "
    "first SCIM write of the reconcile it caused", ["app", "since"], buckets=LAG_BUCKETS,
)  # fmt: skip


# -- counting ----------------------------------------------------------------------------------
_enabled: bool | None = None  # None: not read yet


def enabled() -> bool:
    """Whether this process counts: ``PROVISIONER_METRICS``, read at the first count."""
    global _enabled
    if _enabled is None:
        _enabled = settings().metrics
    return _enabled


def received(accepted: int, duplicates: int) -> None:
    if not enabled():
        return
    if accepted:
        EVENTS_RECEIVED.labels("accepted").inc(accepted)
    if duplicates:
        EVENTS_RECEIVED.labels("duplicate").inc(duplicates)


def refused(reason: str) -> None:
    """A refused webhook request; ``reason`` is one of ``REFUSAL_REASONS``."""
    if enabled():
        EVENTS_REFUSED.labels(reason).inc()


def applied(applied: int, stale: int, ignored: int) -> None:
    """What ``lua/ingest.lua`` made of a batch."""
    if not enabled():
        return
    for outcome, count in (("applied", applied), ("stale", stale), ("ignored", ignored)):
        if count:
            EVENTS_APPLIED.labels(outcome).inc(count)


def reconciled(app: str, outcome: str, seconds: float) -> None:
    if not enabled():
        return
    RECONCILES.labels(app, outcome).inc()
    RECONCILE_DURATION.labels(app).observe(seconds)


def ratelimit_wait(app: str, seconds: float) -> None:
    if not enabled():
        return
    RATELIMIT_WAITS.labels(app).inc()
    RATELIMIT_WAIT_SECONDS.labels(app).inc(seconds)


def scim_recorder(app: str) -> Callable[[object], None]:
    """The ``on_request`` hook of an app's SCIM client (a ``RequestRecord``: method, status,
    elapsed; the path, which may hold an id, is never a label); one that ignores it when off."""
    if not enabled():
        return _ignore

    def record(request: object) -> None:
        method = str(getattr(request, "method", ""))
        status = getattr(request, "status", None)
        SCIM_REQUESTS.labels(app, method, "error" if status is None else str(status)).inc()
        SCIM_DURATION.labels(app, method).observe(float(getattr(request, "elapsed", 0.0)))

    return record


def _ignore(request: object) -> None:
    pass


def throttled(app: str) -> None:
    """A 429 answer of the app."""
    if enabled():
        SCIM_THROTTLED.labels(app).inc()


def bulk_sent(app: str, operations: int, failed: int) -> None:
    """A SCIM Bulk request of ``operations``, ``failed`` of them refused or unanswered."""
    if enabled():
        if operations > failed:
            SCIM_BULK_OPERATIONS.labels(app, "done").inc(operations - failed)
        if failed:
            SCIM_BULK_OPERATIONS.labels(app, "failed").inc(failed)


def retry_after_pause(app: str) -> None:
    """A pause of the app taken from a ``Retry-After``."""
    if enabled():
        RETRY_AFTER_PAUSES.labels(app).inc()


# -- the lag of a write after the events that caused it -----------------------------------------
@dataclass(frozen=True)
class Cause:
    """An event that dirtied a key, as ``lua/ingest.lua`` remembers it:
    ``"<id> <occurred µs, 17 digits> <accepted ms>"`` (an id alone before this format)."""

    id: str
    occurred: float | None = None  # seconds since the epoch
    accepted: float | None = None

    @classmethod
    def parse(cls, text: str) -> Cause:
        event_id, _, rest = text.partition(" ")
        occurred_us, _, accepted_ms = rest.partition(" ")
        return cls(event_id, _seconds(occurred_us, 1e6), _seconds(accepted_ms, 1e3))


def _seconds(text: str, per_second: float) -> float | None:
    try:
        return float(text) / per_second if text else None
    except ValueError:
        return None


def parse_causes(texts: Sequence[str]) -> list[Cause]:
    """The causes of a run, as claimed (oldest first)."""
    return [Cause.parse(text) for text in texts]


def observe_lag(app: str, causes: Iterable[Cause], written_at: float) -> None:
    """The lag of a run's first write (``time.time()``) after each event that caused it."""
    if not enabled():
        return
    for cause in {c.id: c for c in reversed(list(causes))}.values():
        if cause.occurred is not None:
            SYNC_LAG.labels(app, "occurred").observe(max(0.0, written_at - cause.occurred))
        if cause.accepted is not None:
            SYNC_LAG.labels(app, "accepted").observe(max(0.0, written_at - cause.accepted))


# -- state read from Redis at scrape time --------------------------------------------------------
RateOf = Callable[[AppConfig], "tuple[float, int] | None"]  # an app's configured rate, burst


def held_key(app_id: str) -> str:
    """The deletion guard's held calls of an app (``worker/sync/guard.py``)."""
    return f"{keys.PREFIX}guard:{app_id}:held"


def breaker_key(app_id: str) -> str:
    """The state of an app's circuit breaker (``worker/sync/ratelimit.py``)."""
    return f"{keys.PREFIX}cb:{app_id}:state"


class StateCollector(Collector):
    """The pool's state gauges, read from Redis at each scrape. ``rate_of`` gives an app's
    configured rate and burst (without it, the rate and pace gauges are left out). Nothing is
    exposed of the state when Redis does not answer."""

    def __init__(self, client: Callable[[], redis.Redis], rate_of: RateOf | None = None):
        self.client = client
        self.rate_of = rate_of

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            families = self._read(self.client())
        except redis.RedisError as error:
            log.debug("state metrics not read: %s", error)
            return
        yield from families

    def _read(self, client: redis.Redis) -> list[GaugeMetricFamily]:
        configured = apps.list_apps(client)
        pipe = client.pipeline(transaction=False)
        pipe.xlen(keys.JOURNAL)
        pipe.zcard(keys.PENDING_BATCHES)
        pipe.zcard(keys.WQ_DIRTY)
        pipe.hlen(keys.WQ_OWNER)
        pipe.zcard(keys.WQ_DELAYED)
        pipe.hlen(keys.WQ_PARKED)
        pipe.hlen(keys.WQ_DEFERRED)
        for app in configured:
            pipe.hlen(held_key(app.id))
            pipe.get(breaker_key(app.id))
        journal, pending, dirty, in_flight, delayed, parked, deferred, *per_app = pipe.execute()
        held = sum(per_app[0::2])
        breakers = zip(configured, per_app[1::2], strict=True)
        opened = {
            app.id: int(codec.optional_text(b) not in (None, "closed")) for app, b in breakers
        }
        counts = (dirty, in_flight, delayed, parked, held, deferred)
        states = dict(zip(KEY_STATES, counts, strict=True))
        families = [
            _gauge("provisioner_journal_events", "Events in the journal", journal),
            _gauge("provisioner_pending_batches", "Batches stored and not applied yet", pending),
            _labelled("provisioner_reconcile_keys", "Reconcile keys by state", "state", states),
            _gauge(
                "provisioner_apps_quarantined",
                "Apps paused by the pool (bad credentials)",
                sum(1 for app in configured if app.paused),
            ),
            _labelled(
                "provisioner_breaker_open",
                "1 when the app's circuit breaker is not closed (open or probing)",
                "app",
                opened,
            ),
            _gauge(
                "provisioner_workers_alive",
                "Workers whose heartbeat is fresh",
                len(alive_workers(client)),
            ),
        ]
        if self.rate_of is not None:
            families += self._rates(client, configured, self.rate_of)
        return families

    @staticmethod
    def _rates(
        client: redis.Redis, configured: list[AppConfig], rate_of: RateOf
    ) -> list[GaugeMetricFamily]:
        """The configured rate of each app and the pace the pool keeps for it now."""
        rated = [(app, r) for app in configured if (r := rate_of(app)) is not None]
        pipe = client.pipeline(transaction=False)
        for app, (rate, burst) in rated:
            scripts.run(pipe, "throttle", app.id, "pace", repr(1000.0 / rate), max(burst, 1))
        answers = pipe.execute() if rated else []
        return [
            _labelled(
                "provisioner_app_rate_limit_requests_per_second",
                "The app's configured rate",
                "app",
                {app.id: rate for app, (rate, _) in rated},
            ),
            _labelled(
                "provisioner_app_pace_requests_per_second",
                "The pace the pool keeps for the app now, learned from its 429s",
                "app",
                {app.id: float(a[1]) for (app, _), a in zip(rated, answers, strict=True)},
            ),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled(
    name: str, documentation: str, label: str, samples: Mapping[str, float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value, sample in samples.items():
        family.add_metric([value], sample)
    return family


# -- exposition --------------------------------------------------------------------------------
def enable_multiprocess() -> Path | None:
    """Count in multiprocess mode from now on, in a directory made fresh for this process and
    its children (inherited through ``PROMETHEUS_MULTIPROC_DIR``), removed at its exit. To be
    called before any labelled value is created (metrics are created without values). Nothing
    (None) when metrics are off."""
    if not enabled():
        return None
    directory = Path(tempfile.mkdtemp(prefix="provisioner-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # read by prometheus_client
    values.ValueClass = values.get_value_class()  # chosen at its import, perhaps before
    owner = os.getpid()

    def remove() -> None:  # by the process that made it, not by a forked child
        if os.getpid() == owner:
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    return directory


def multiprocess_mode() -> bool:
    """Whether this process counts in files (a worker, or one of several receiver processes)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def process_dead(pid: int) -> None:
    """A child process exited: its live gauges go (its counters stay, as they must)."""
    if multiprocess_mode():
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid)


class _Together(Collector):
    """What ``generate_latest`` reads: the process metrics, then the state gauges."""

    def __init__(self, collectors: Sequence[Collector]):
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(state: StateCollector | None = None) -> bytes:
    """The text exposition of this process's metrics (of every process of the worker in
    multiprocess mode) and of ``state``."""
    counted: Collector = REGISTRY
    if multiprocess_mode():
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    return generate_latest(_Together([counted] if state is None else [counted, state]))
