"""Reading an application whole, a page at a time within its rate limit, and seeding the
mirror from it, so that the first reconciles of its objects need no lookup (issue 10).

At activation (``lifecycle.activate``, before the full sync) and on ``verify``, the app's
users and groups are listed (``ScimClient.list_users`` / ``list_groups``, ``Profile.page_size``
a page) and matched by ``userName`` / ``displayName`` with the lookups' case rule: the exact
name first, else the name but for case, never another name. A covered directory user (an
associated group) that the mirror knows nothing of is then adopted (taken over) as its lookup
would have done, or recorded as absent so that its reconcile creates it at once. An object the
mirror already holds, or whose last write is in doubt, is left alone (``Mirror.seed``).

Listing replaces one lookup per object only where it is cheaper: the first page tells the
app's size (``totalResults``), and when ceil(total / page) exceeds the lookups it would
replace, the listing stops there; the rest is looked up one by one (what that page found is
used). Every request takes a slot of the app's pool-wide rate limit (``ratelimit.acquire``);
a ``Pacer`` of low priority (``verify``) also waits while any of the app's reconciles is in
flight or due within a second, so that live changes go first.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
import redis

from worker.contract.model import GroupFacts, MirrorGroup, MirrorUser, UserFacts
from worker.queue import metrics
from worker.queue.workqueue import Workqueue
from worker.scim import (
    Invalid,
    ScimClient,
    ScimError,
    Transient,
    make_http_client,
    profile_by_name,
)
from worker.scim.client import MAX_BODY_BYTES, RemoteGroup, RemoteUser
from worker.scim.network import http_transport
from worker.scim.profiles import Profile
from worker.store import apps, projection, scripts
from worker.store.apps import AppConfig
from worker.store.mirror import Mirror
from worker.sync import ratelimit, rules

T = TypeVar("T")

BUSY_HORIZON_MS = 1000  # a reconcile of the app due this soon counts as live work waiting
BUSY_POLL = 0.25  # seconds between two looks while the app is busy
FACTS_CHUNK = 500  # projection reads per pipeline


# -- pacing ------------------------------------------------------------------------------------
class Pacer:
    """Takes a request slot of the app's pool-wide rate limit before each request, sleeping
    until the slot ``ratelimit.acquire`` reserves when there is none now.

    ``low_priority``: first waits until none of the app's reconciles is in flight or due
    within ``BUSY_HORIZON_MS`` (a throttled reconcile waits in ``wq:delayed`` for its
    reserved slot), so the listing only takes slots that live changes leave unused; a change
    arriving meanwhile still finds the app's burst. ``keepalive`` runs before each request and
    while waiting (``verify`` renews its lock with it)."""

    def __init__(
        self,
        client: redis.Redis,
        app_id: str,
        rate: float,
        burst: int,
        *,
        low_priority: bool = False,
        keepalive: Callable[[], None] = lambda: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = client
        self.app_id = app_id
        self.rate = rate
        self.burst = burst
        self.low_priority = low_priority
        self.keepalive = keepalive
        self.sleep = sleep
        self.token = uuid.uuid4().hex
        # the name its reservations go under in the limiter (not a reconcile key)
        self.key = f"{app_id} {'verify' if low_priority else 'listing'}"
        self.yielded = 0.0  # seconds spent waiting for the app's live work

    def __call__(self) -> None:
        self.keepalive()
        while True:
            if self.low_priority:
                while app_busy(self.redis, self.app_id):
                    self.keepalive()
                    self.sleep(BUSY_POLL)
                    self.yielded += BUSY_POLL
            wait = ratelimit.acquire(
                self.redis, self.app_id, self.rate, self.burst, self.token, self.key
            )
            if wait <= 0:
                return
            self.keepalive()
            self.sleep(wait)


def app_busy(client: redis.Redis, app_id: str) -> bool:
    """A reconcile of the app is in flight or due within ``BUSY_HORIZON_MS`` (two bounded
    reads: the leases held, and the soonest delayed keys)."""
    return Workqueue(client).due_soon(app_id, BUSY_HORIZON_MS)


@dataclass(frozen=True)
class Page:
    total: int  # totalResults
    count: int  # resources in the page


_HOP_BY_HOP = {"content-encoding", "content-length", "transfer-encoding"}


class PacedTransport(httpx.BaseTransport):
    """An httpx transport that paces every request (``pace()`` first) and notes the
    ``totalResults`` and size of each page of a listing; responses go on unchanged (read
    here, at most ``MAX_BODY_BYTES`` + 1 bytes, so the client still refuses a larger one)."""

    def __init__(self, pace: Callable[[], None], inner: httpx.BaseTransport | None = None):
        self.pace = pace
        self.inner = inner or httpx.HTTPTransport()
        self.requests = 0
        self.pages: list[Page] = []
        self.too_big = False  # the last page was over the client's limit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.pace()
        self.requests += 1
        response = self.inner.handle_request(request)
        if request.method != "GET" or not 200 <= response.status_code < 300:
            return response
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    self.too_big = True
                    break
        finally:
            response.close()
        self._note(bytes(body))
        headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP
        ]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body))

    def _note(self, body: bytes) -> None:
        if self.too_big or b'"totalResults"' not in body:
            return
        try:
            data = json.loads(body)
            total, resources = int(data["totalResults"]), data.get("Resources") or []
        except (ValueError, KeyError, TypeError):
            return
        self.pages.append(Page(total, len(resources)))

    def close(self) -> None:
        self.inner.close()


def paced_client(
    client: redis.Redis,
    app: AppConfig,
    profile: Profile | None = None,
    *,
    low_priority: bool = False,
    keepalive: Callable[[], None] = lambda: None,
) -> tuple[ScimClient, PacedTransport, Profile]:
    """A SCIM client of the app whose every request is paced (``Pacer``); the ``generic``
    profile is read from the app's ``ServiceProviderConfig`` unless given."""
    base = profile or profile_by_name(app.profile)
    rate = app.rate or base.requests_per_second
    burst = app.burst or base.burst
    pacer = Pacer(client, app.id, rate, burst, low_priority=low_priority, keepalive=keepalive)
    transport = PacedTransport(pacer, http_transport(app.base_url, app.network))
    token = apps.read_token(app.token_file)
    http = make_http_client(app.base_url, token, network=app.network, transport=transport)
    record = metrics.scim_recorder(app.id)  # its requests count like the runner's
    scim = ScimClient(http, base, on_request=record)
    if profile is None and app.profile == "generic":
        base = profile_by_name("generic", scim.service_provider_config())
        scim = ScimClient(http, base, on_request=record)
    return scim, transport, base


# -- reading pages -----------------------------------------------------------------------------
def pages_for(total: int, per_page: int) -> int:
    """Requests that read ``total`` objects at ``per_page`` a page (at least one)."""
    return max(1, math.ceil(total / max(1, per_page)))


def worth_listing(total: int, per_page: int, lookups: int) -> bool:
    """Listing the whole app costs no more requests than the lookups it replaces."""
    return pages_for(total, per_page) <= lookups


@dataclass
class Listed(Generic[T]):
    items: list[T]
    complete: bool  # every object of the app was read (else: the first page only)
    requests: int
    total: int  # the app's count, as its first page said


def read(
    list_pages: Callable[[int], Iterator[T]],
    transport: PacedTransport,
    page_size: int,
    budget: int | None = None,
) -> Listed[T]:
    """Every object ``list_pages(page_size)`` yields; with ``budget`` (the lookups listing
    would replace), only the first page when listing would cost more (``worth_listing``).
    A page over the client's size limit halves the page size and starts again."""
    size = page_size
    while True:
        before_requests, before_pages = transport.requests, len(transport.pages)
        items: list[T] = []
        iterator = list_pages(size)
        stop_at: int | None = None
        try:
            for item in iterator:
                items.append(item)
                if budget is not None and stop_at is None and len(transport.pages) > before_pages:
                    first = transport.pages[before_pages]
                    per_page = first.count if first.total > first.count else size
                    if not worth_listing(first.total, per_page, budget):
                        stop_at = first.count
                if stop_at is not None and len(items) >= stop_at:
                    spent = transport.requests - before_requests
                    return Listed(items, False, spent, transport.pages[before_pages].total)
        except Invalid:
            if transport.too_big and size > 1:
                transport.too_big = False
                size = max(1, size // 2)
                continue
            raise
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        pages = transport.pages[before_pages:]
        total = pages[0].total if pages else len(items)
        return Listed(items, True, transport.requests - before_requests, total)


# -- matching by name (pure) -------------------------------------------------------------------
class NameIndex(Generic[T]):
    """Objects by name, with the lookups' rule (``scim.client.named``): the exact name first,
    else the name but for case; the first in listing order wins."""

    def __init__(self, items: Iterable[T], name_of: Callable[[T], str | None]):
        self.exact: dict[str, T] = {}
        self.folded: dict[str, T] = {}
        for item in items:
            name = name_of(item) or ""
            self.exact.setdefault(name, item)
            self.folded.setdefault(name.casefold(), item)

    def find(self, name: str) -> T | None:
        found = self.exact.get(name)
        return found if found is not None else self.folded.get(name.casefold())


def user_index(users: Iterable[RemoteUser]) -> NameIndex[RemoteUser]:
    return NameIndex(users, lambda u: u.attributes.get("userName"))


def group_index(groups: Iterable[RemoteGroup]) -> NameIndex[RemoteGroup]:
    return NameIndex(groups, lambda g: g.display_name)


@dataclass(frozen=True)
class Seed:
    entries: dict[str, Any]  # directory id -> MirrorUser | MirrorGroup
    absent: list[str]


def seed_users(wanted: Mapping[str, str], found: NameIndex[RemoteUser], complete: bool) -> Seed:
    """``wanted``: user id -> userName of the users a reconcile would look up. A match is
    adopted as the lookup adopts (``MirrorUser(id, attributes)``); with a ``complete``
    listing, no match means absent."""
    entries: dict[str, Any] = {}
    absent: list[str] = []
    for user_id, user_name in wanted.items():
        remote = found.find(user_name)
        if remote is not None:
            entries[user_id] = MirrorUser(remote.id, remote.attributes)
        elif complete:
            absent.append(user_id)
    return Seed(entries, absent)


def seed_groups(
    wanted: Mapping[str, str],
    found: NameIndex[RemoteGroup],
    complete: bool,
    directory_ids: Mapping[str, str],
) -> Seed:
    """``wanted``: group id -> displayName of the groups a reconcile would look up. A match is
    taken over as the lookup takes it over: its members mapped back to directory ids
    (``directory_ids``: remote id -> directory id), those that are not ours keyed ``?<id>``."""
    entries: dict[str, Any] = {}
    absent: list[str] = []
    for group_id, name in wanted.items():
        remote = found.find(name)
        if remote is not None:
            members = {directory_ids.get(r, f"?{r}"): r for r in remote.member_ids}
            entries[group_id] = MirrorGroup(remote.id, remote.display_name, members)
        elif complete:
            absent.append(group_id)
    return Seed(entries, absent)


# -- the projection, many objects at a time ----------------------------------------------------
def _hash(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def users_facts(client: redis.Redis, app_id: str, user_ids: Iterable[str]) -> dict[str, UserFacts]:
    """``projection.user_facts`` of many users, a pipeline of ``FACTS_CHUNK`` at a time."""
    ids, facts = list(user_ids), {}
    for start in range(0, len(ids), FACTS_CHUNK):
        chunk = ids[start : start + FACTS_CHUNK]
        pipe = client.pipeline(transaction=False)
        for user_id in chunk:
            scripts.run(pipe, "user_facts", app_id, user_id)
        for user_id, (raw, direct, *covering) in zip(chunk, pipe.execute(), strict=True):
            user = projection.directory_user(_hash(raw), user_id)
            facts[user_id] = UserFacts(user, bool(direct), frozenset(g.decode() for g in covering))
    return facts


def groups_facts(
    client: redis.Redis, app_id: str, group_ids: Iterable[str]
) -> dict[str, GroupFacts]:
    """``projection.group_facts`` of many groups, a pipeline at a time."""
    ids, facts = list(group_ids), {}
    for start in range(0, len(ids), FACTS_CHUNK):
        chunk = ids[start : start + FACTS_CHUNK]
        pipe = client.pipeline(transaction=False)
        for group_id in chunk:
            scripts.run(pipe, "group_facts", app_id, group_id)
        for group_id, (raw, associated, *members) in zip(chunk, pipe.execute(), strict=True):
            fields = _hash(raw)
            name = fields.get(b"name")
            facts[group_id] = GroupFacts(
                id=group_id,
                name=None if name is None else name.decode(),
                deleted=b"del" in fields,
                associated=bool(associated),
                members=frozenset(m.decode() for m in members),
            )
    return facts


def scope(client: redis.Redis, app_id: str) -> tuple[list[str], list[str]]:
    """The user ids and group ids of the app's scope (``projection.covered_keys``)."""
    users: list[str] = []
    groups: list[str] = []
    for key in projection.covered_keys(client, app_id):
        (users if key.kind == "user" else groups).append(key.id)
    return users, groups


def wanted_users(facts: Mapping[str, UserFacts], unknown: Callable[[str], bool]) -> dict[str, str]:
    """user id -> userName of the covered users (with a record) that a reconcile would look
    up: those ``unknown`` to the mirror (no entry, no lookup done, no write in doubt)."""
    name = rules.USER_MAPPING["userName"]
    return {
        user_id: str(f.user.record[name])
        for user_id, f in facts.items()
        if unknown(user_id) and rules.is_covered(f) and f.user.record and f.user.record.get(name)
    }


def wanted_groups(
    facts: Mapping[str, GroupFacts], unknown: Callable[[str], bool]
) -> dict[str, str]:
    """group id -> displayName of the associated groups with members that a reconcile would
    look up (an empty group is neither looked up nor created)."""
    return {
        group_id: f.name
        for group_id, f in facts.items()
        if unknown(group_id) and f.associated and not f.deleted and f.name and f.members
    }


# -- seeding -----------------------------------------------------------------------------------
@dataclass
class KindReport:
    wanted: int = 0  # lookups a reconcile would send
    listed: int = 0  # objects read
    requests: int = 0
    complete: bool = False
    total: int = 0  # the app's count
    adopted: int = 0
    absent: int = 0

    def describe(self, kind: str) -> str:
        if not self.wanted:
            return f"no {kind} to look up"
        if not self.requests:
            return f"{self.wanted} {kind}s to look up one by one"
        taken = "adopted" if kind == "user" else "taken over"
        calls = f"{self.requests} call{'s' if self.requests != 1 else ''}"
        text = f"{self.listed} of the app's {self.total} {kind}s read in {calls}"
        if self.complete:
            return f"{text}: {self.adopted} {taken}, {self.absent} to create without a lookup"
        return (
            f"{text}: listing all would cost more than the {self.wanted} lookups; "
            f"{self.adopted} {taken}, the others looked up one by one"
        )


@dataclass
class SeedReport:
    users: KindReport = field(default_factory=KindReport)
    groups: KindReport = field(default_factory=KindReport)
    error: str | None = None

    @property
    def requests(self) -> int:
        return self.users.requests + self.groups.requests

    def describe(self) -> str:
        text = f"listing: {self.users.describe('user')}; {self.groups.describe('group')}"
        return text + (f"; stopped: {self.error}" if self.error else "")


def seed_users_from(
    mirror: Mirror, wanted: Mapping[str, str], listed: Listed[RemoteUser], report: KindReport
) -> None:
    seed = seed_users(wanted, user_index(listed.items), listed.complete)
    report.adopted, report.absent = mirror.seed("user", seed.entries, seed.absent)


def seed_groups_from(
    mirror: Mirror, wanted: Mapping[str, str], listed: Listed[RemoteGroup], report: KindReport
) -> None:
    users = mirror.snapshot("user")[0]
    directory_ids = {entry.remote_id: user_id for user_id, entry in users.items()}
    seed = seed_groups(wanted, group_index(listed.items), listed.complete, directory_ids)
    report.adopted, report.absent = mirror.seed("group", seed.entries, seed.absent)


def _note(report: KindReport, listed: Listed[Any]) -> None:
    report.listed, report.requests = len(listed.items), listed.requests
    report.complete, report.total = listed.complete, listed.total


def seed_from_app(
    client: redis.Redis, app: AppConfig, scim: ScimClient, transport: PacedTransport
) -> SeedReport:
    """List what the app holds where that is cheaper than the lookups the first reconciles
    would send, and seed the mirror with it (activation). A failure of the app stops the
    listing: what is left is looked up one by one, as without it."""
    profile = scim.profile
    report = SeedReport()
    mirror = Mirror(client, app.id)
    user_ids, group_ids = scope(client, app.id)
    try:
        entries, absent, doubt = mirror.snapshot("user")
        known = entries.keys() | absent | doubt
        wanted = wanted_users(users_facts(client, app.id, user_ids), lambda u: u not in known)
        report.users.wanted = len(wanted) if profile.filter_supported else 0
        if report.users.wanted:
            listed = read(scim.list_users, transport, profile.page_size, budget=len(wanted))
            _note(report.users, listed)
            seed_users_from(mirror, wanted, listed, report.users)
        if app.group_management:
            entries, absent, doubt = mirror.snapshot("group")
            known = entries.keys() | absent | doubt
            facts = groups_facts(client, app.id, group_ids)
            wanted = wanted_groups(facts, lambda g: g not in known)
            report.groups.wanted = len(wanted) if profile.filter_supported else 0
            if report.groups.wanted:
                listed_groups = read(
                    scim.list_groups, transport, profile.page_size, budget=len(wanted)
                )
                _note(report.groups, listed_groups)
                seed_groups_from(mirror, wanted, listed_groups, report.groups)
    except ScimError as error:
        report.error = f"the application answered: {error}"
        if isinstance(error, Transient):
            ratelimit.slow_down(client, app.id, error)  # its 429 teaches the pace, as a reconcile's
    return report


def seed_at_activation(client: redis.Redis, app: AppConfig, profile: Profile) -> SeedReport:
    """``seed_from_app`` with a client of the app paced by its rate limit."""
    scim, transport, _ = paced_client(client, app, profile)
    try:
        return seed_from_app(client, app, scim, transport)
    finally:
        scim.http.close()


__all__ = [
    "Listed",
    "NameIndex",
    "PacedTransport",
    "Pacer",
    "SeedReport",
    "app_busy",
    "paced_client",
    "pages_for",
    "read",
    "seed_at_activation",
    "seed_from_app",
    "seed_groups",
    "seed_users",
    "worth_listing",
]
