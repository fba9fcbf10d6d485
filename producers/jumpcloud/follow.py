"""``provisioner jumpcloud follow``: Directory Insights polled, changes published as v1 events.

Each poll asks ``POST /insights/directory/v1/events`` for the directory's user, group and
association events (``service: ["directory"]``, ``sort: ASC``, ``search_term.and`` on
``event_type``) after the cursor: the query's ``start_time`` and the ``X-Search_after`` of the
last page read, as the API's *Getting All the Pages of Data* says
(https://docs.jumpcloud.com/api/insights/directory/1.0/index.html). The cursor is kept in Redis
(``prov:jumpcloud:<org>:cursor``) and moved only once a page's events are published, so a
follower killed at any point starts again where it stopped: the page it was reading is read
again and its events, whose ids derive from the Insights event ids (``jc-<id>``), are refused
as duplicates by the pool. Nothing is lost, nothing is doubled.

A user or group event says which object changed; the follower reads it
(``GET /api/systemusers/{id}``, ``GET /api/v2/usergroups/{id}``) and publishes the whole record;
a 404 becomes ``user.deleted`` or ``group.deleted``. Each object is read once per page. An
``association_change`` carries the change itself: a membership, or a group or user bound to an
application that stands for an app.

``occurred_at`` is when the follower learnt the state: the read, or for an association the
page's reading plus a microsecond per event (events on one pair keep their order). That is
this host's clock, the one snapshots' ``taken_at`` comes from, so last-writer-wins between
follow and sync never depends on JumpCloud's clock agreeing with ours; Insights' timestamps
only order the events, which the follower handles in that order.

``sync`` runs on a schedule (``--sync-every``, daily by default; at start when none was
published yet) in the same process, between polls: the safety net for whatever the events
missed. Polls wait meanwhile; their events are not lost. SIGTERM or SIGINT stops the loop
between two steps, and cuts any wait short.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from producers.jumpcloud import mapping
from producers.jumpcloud.api import AuthError, Client, JumpCloudError, Stopped
from producers.jumpcloud.sync import describe, last_sync, sync
from producers.snapshot import DeletionsRefused
from worker.contract.events import parse_documents
from worker.queue.publish import publish
from worker.store import keys

log = logging.getLogger("provisioner.jumpcloud")

RETRY_SYNC = 300.0  # seconds before a failed scheduled sync is tried again
# A new cursor starts this far back: Insights refuses a start in its future, and a host clock a
# little ahead of JumpCloud's would make one. That minute's events only say again what the
# directory says (objects are read as they are now).
LOOKBACK = 60.0


@dataclass(frozen=True)
class FollowOptions:
    org: str | None = None
    apps: Mapping[str, str] = field(default_factory=dict)  # app id -> JumpCloud application
    interval: float = 1.0
    sync_every: float | None = 86_400.0  # None: never
    lag: float = 0.0  # read only events older than this (seconds)
    page_size: int = 1000  # the API's default; at most 10,000
    allow_deletions: int | None = None

    @property
    def by_application(self) -> dict[str, list[str]]:
        apps: dict[str, list[str]] = {}
        for app_id, application in self.apps.items():
            apps.setdefault(application, []).append(app_id)
        return apps


def query(cursor: Mapping[str, Any], options: FollowOptions, now: datetime) -> dict[str, Any]:
    """The Insights query for the next page after ``cursor`` (pure)."""
    body: dict[str, Any] = {
        "service": ["directory"],
        "start_time": cursor["start_time"],
        "sort": "ASC",
        "limit": options.page_size,
        "search_term": {"and": [{"event_type": list(mapping.EVENT_TYPES)}]},
    }
    if cursor.get("search_after"):
        body["search_after"] = cursor["search_after"]
    if options.lag > 0:
        body["end_time"] = _stamp(now - timedelta(seconds=options.lag))
    return body


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Follower:
    def __init__(
        self, jc: Client, client: redis.Redis, options: FollowOptions, stop: threading.Event
    ) -> None:
        self.jc, self.redis, self.options, self.stop = jc, client, options, stop
        self.apps = options.by_application
        self.cursor_key = keys.jumpcloud(options.org or "default", "cursor")
        self.next_sync: float | None = None
        self.published = 0
        self.learnt = datetime.fromtimestamp(0, UTC)  # the last occurred_at of an association

    # -- the cursor ------------------------------------------------------------------------
    def load_cursor(self) -> dict[str, Any]:
        """The saved cursor, or a new one from a minute ago (and ``--lag``), saved at once."""
        raw = self.redis.get(self.cursor_key)
        if raw is not None:
            return json.loads(raw)
        start = datetime.now(UTC) - timedelta(seconds=self.options.lag + LOOKBACK)
        cursor = {"start_time": _stamp(start), "search_after": None}
        self.save_cursor(cursor)
        return cursor

    def save_cursor(self, cursor: Mapping[str, Any]) -> None:
        self.redis.set(self.cursor_key, json.dumps(cursor))

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Poll until stopped; ``AuthError`` ends it (a new key is needed, not a retry)."""
        cursor = self.load_cursor()
        log.info("following JumpCloud %s from %s", self.options.org or "(own org)",
                 cursor.get("search_after") or cursor["start_time"])  # fmt: skip
        while not self.stop.is_set():
            try:
                self.sync_if_due()
                more = self.poll(cursor)
            except Stopped:
                break
            except AuthError:
                raise
            except (JumpCloudError, redis.RedisError, OSError) as error:
                pause = max(self.options.interval, 5.0)
                log.error("follow: %s; trying again in %.0f s", error, pause)
                if self.stop.wait(pause):
                    break
                continue
            if not more and self.stop.wait(self.options.interval):
                break
        log.info("stopped; %d events published", self.published)

    def poll(self, cursor: dict[str, Any]) -> bool:
        """Read one page after ``cursor``, publish what it changed, then move the cursor.
        Returns whether more pages are waiting."""
        now = datetime.now(UTC)
        body = query(cursor, self.options, now)
        if "end_time" in body and body["end_time"] <= body["start_time"]:
            return False  # nothing is older than --lag yet
        events, search_after, more = self.jc.events(body)
        if not events:
            return False
        documents = self.translate(events)
        if documents:
            result = publish(self.redis, parse_documents(documents))
            self.published += len(result.accepted)
            log.info("%d Insights events: %d published, %d duplicates", len(events),
                     len(result.accepted), len(result.duplicates))  # fmt: skip
        if search_after:
            cursor["search_after"] = search_after
        else:  # no cursor header: start again at the last event's time (duplicates are refused)
            cursor.update(start_time=_stamp(mapping.event_time(events[-1])), search_after=None)
        self.save_cursor(cursor)
        return more

    def translate(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The v1 events of a page of Insights events; each object read once per page."""
        reads: dict[tuple[str, str], tuple[Mapping[str, Any] | None, datetime]] = {}
        documents: list[dict[str, Any]] = []
        learnt = max(datetime.now(UTC), self.learnt + timedelta(microseconds=1))
        self.learnt = learnt + timedelta(microseconds=len(events))  # never back, whatever NTP does
        for number, event in enumerate(events):
            change = mapping.classify(event)
            if change is None:
                continue
            eid = mapping.event_id(event)
            try:
                if isinstance(change, mapping.ObjectChange):
                    key = (change.kind, change.id)
                    if key not in reads:
                        read = self.jc.user if change.kind == "user" else self.jc.group
                        reads[key] = (read(change.id), datetime.now(UTC))
                    current, read_at = reads[key]
                    documents += mapping.object_events(change, current, eid, read_at)
                else:
                    at = learnt + timedelta(microseconds=number)
                    documents += mapping.edge_events(change, self.apps, eid, at)
            except mapping.MappingError as error:
                log.warning("Insights event %s skipped: %s (to be fixed in JumpCloud; the "
                            "next change or sync reads it again)", event.get("id"), error)  # fmt: skip
        return documents

    # -- the scheduled sync ------------------------------------------------------------------
    def sync_if_due(self) -> None:
        every = self.options.sync_every
        if not every:
            return
        now = time.time()
        if self.next_sync is None:
            last = last_sync(self.redis, self.options.org)
            self.next_sync = last["finished"] + every if last else now
        if now < self.next_sync:
            return
        log.info("scheduled sync ...")
        self.next_sync = time.time() + every
        try:
            outcome = sync(self.jc, self.redis, org=self.options.org, apps=self.options.apps,
                           allow_deletions=self.options.allow_deletions)  # fmt: skip
        except (Stopped, AuthError):
            raise
        except DeletionsRefused as error:  # an administrator decides; no retry before then
            log.error("scheduled sync refused by the deletion guard, nothing published: %s; run "
                      "`provisioner jumpcloud sync --dry-run` to see it, --allow-deletions N to "
                      "accept it", error)  # fmt: skip
            return
        except Exception as error:  # anything else: try again soon
            log.error("scheduled sync failed: %s; next try in %.0f s", error, RETRY_SYNC)
            self.next_sync = time.time() + min(every, RETRY_SYNC)
            return
        result = outcome.result
        log.info("scheduled sync: %s; %d events published, %d duplicates", describe(outcome),
                 result.published, result.duplicates)  # fmt: skip
