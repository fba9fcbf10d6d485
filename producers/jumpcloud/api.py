"""A small client of JumpCloud's API on httpx: paged, paced, patient with 429, clear on 401/403.

What it relies on (the package docstring lists the documents):

- every request carries ``x-api-key``; a multi-tenant admin adds ``x-org-id`` ("a required
  header for all multi-tenant admins", API 1.0 and 2.0, *Multi-Tenant Portal Headers*; the
  same header for Directory Insights, *Managed Service Providers*);
- the console API is at ``https://console.jumpcloud.com/api`` (US), ``console.eu`` (EU) and
  ``console.in`` (India) (the ``servers`` of https://docs.jumpcloud.com/api/1.0/index.yaml);
  Directory Insights at ``https://api.jumpcloud.com/insights/directory/v1`` and ``api.eu``
  ("Use 'api' for US or 'api.eu' for EU", JumpCloud.SDK.DirectoryInsights.json), ``api.in``
  (JumpCloud-Serverless's region map);
- listings page with ``limit`` and ``skip``, at most 100 records a page ("Limited to 100",
  API 2.0 ``trait:limit``), sorted by ``_id`` where the endpoint sorts (Best Practices: "add
  sort: _id ... no missing or duplicate results");
- JumpCloud may answer 429 (Best Practices, *Response codes*) and publishes no rate: this
  client keeps a pace of its own (5 requests/s, 5 at once, by default), waits as ``Retry-After`` says
  (seconds or an HTTP date) and otherwise backs off; 5xx and timeouts are retried too.

The API key is read from a file and sent in the ``x-api-key`` header only: no argument, log
line, Redis key or error message holds it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from producers.jumpcloud.mapping import object_id

log = logging.getLogger("provisioner.jumpcloud")

# https://docs.jumpcloud.com/api/1.0/index.yaml (servers: US, EU, IN)
US_API = "https://console.jumpcloud.com"
# https://github.com/TheJumpCloud/jcapi-powershell/blob/master/SwaggerSpecs/JumpCloud.SDK.DirectoryInsights.json
# (x-ms-parameterized-host); https://github.com/TheJumpCloud/JumpCloud-Serverless (India)
INSIGHTS_HOSTS = {
    "console.jumpcloud.com": "https://api.jumpcloud.com",
    "console.eu.jumpcloud.com": "https://api.eu.jumpcloud.com",
    "console.in.jumpcloud.com": "https://api.in.jumpcloud.com",
}
EVENTS_PATH = "/insights/directory/v1/events"
PAGE = 100  # https://docs.jumpcloud.com/api/2.0/index.html: limit "Limited to 100"
OVERLAP = 10  # each page re-reads the previous page's last records, so that a gap shows
# requests/s on average, at once: ours; https://jumpcloud.com/support/best-practices-jumpcloud-api
# lists 429 among the answers and gives no figure
RATE, BURST = 5.0, 5
MAX_ATTEMPTS = 8
MAX_WAIT = 300.0  # the longest Retry-After taken as given
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
RETRIED = frozenset({429, 500, 502, 503, 504})


class JumpCloudError(Exception):
    """JumpCloud refused a request or could not be reached. Messages never hold the key."""


class AuthError(JumpCloudError):
    """401 or 403: the API key, the organization (``x-org-id``) or the admin's role."""


class NotFound(JumpCloudError):
    """404 on a listing: the object it belongs to is gone."""


class ListingChanged(JumpCloudError):
    """A paged listing lost its place (records deleted between two pages): read it again."""


class Stopped(Exception):
    """Asked to stop while waiting (SIGTERM, SIGINT)."""


def read_api_key(path: str) -> str:
    """The API key in ``path`` (a mounted secret), stripped; never from an argument."""
    try:
        key = Path(path).read_text().strip()
    except OSError as error:
        raise JumpCloudError(f"cannot read the API key file {path}: {error.strerror}") from None
    if not key:
        raise JumpCloudError(f"the API key file {path} is empty")
    return key


def check_url(url: str) -> str:
    """``https``, or ``http`` on a loopback address (a local test double)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname:
        try:
            if parts.hostname == "localhost" or ip_address(parts.hostname).is_loopback:
                return url.rstrip("/")
        except ValueError:
            pass
    raise JumpCloudError(f"invalid JumpCloud URL {url!r}: https, or http on loopback only")


def insights_url_for(api_url: str) -> str:
    """Directory Insights' host for a console URL of a known region, else the same URL."""
    return INSIGHTS_HOSTS.get(urlsplit(api_url).hostname or "", api_url.rstrip("/"))


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (delay-seconds or an HTTP date), capped."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        moment = email.utils.parsedate_to_datetime(value) if value else None
        if moment is None:
            return None
        seconds = moment.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_WAIT)


def backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter (0.5 s, 1 s, 2 s, ... at most 30 s)."""
    return random.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))


def record_id(record: dict[str, Any]) -> str:
    """A listed record's id: the object's, or ``to.id`` for a graph connection (API 2.0)."""
    if isinstance(record.get("to"), dict):
        return object_id(record["to"])
    return object_id(record)


class Client:
    """One organization's API; ``stop`` cuts every wait short (raising ``Stopped``)."""

    def __init__(
        self,
        api_key: str,
        *,
        api_url: str = US_API,
        insights_url: str | None = None,
        org_id: str | None = None,
        rate: float = RATE,
        burst: int = BURST,
        timeout: httpx.Timeout | float = TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
        stop: threading.Event | None = None,
    ) -> None:
        self.api_url = check_url(api_url)
        self.insights_url = check_url(insights_url or insights_url_for(self.api_url))
        self.org_id = org_id
        self.max_attempts = max_attempts
        self.stop = stop or threading.Event()
        self.requests = 0  # answered requests
        self.throttled = 0  # 429s received
        self._key = api_key
        headers = {"x-api-key": api_key, "accept": "application/json"}
        if org_id:
            headers["x-org-id"] = org_id
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._burst = max(1, burst)
        self._next = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------
    def request(
        self, method: str, url: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> httpx.Response:
        """One call, paced and retried; answers 2xx and 404, raises on anything else."""
        where = f"{method} {urlsplit(url).path}"
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            if self.stop.is_set():
                raise Stopped()
            self._pace()
            try:
                response = self._http.request(method, url, params=params, json=body)
            except httpx.TransportError as error:  # timeouts included
                problem, wait = type(error).__name__, backoff(attempt)
            else:
                self.requests += 1
                status = response.status_code
                if status < 300 or status == 404:
                    return response
                if status in (401, 403):
                    raise AuthError(self._refused(where, response))
                if status not in RETRIED:
                    raise JumpCloudError(
                        f"JumpCloud answered {status} to {where}: {self._detail(response)}"
                    )
                problem = str(status)
                told = retry_after(response) if status == 429 else None
                wait = backoff(attempt) if told is None else told
                if status == 429:
                    self.throttled += 1
                    self._hold(wait)
            if attempt < self.max_attempts:
                log.warning("%s: %s, trying again in %.1f s", where, problem, wait)
                self._sleep(wait)
        raise JumpCloudError(f"{where}: gave up after {self.max_attempts} attempts ({problem})")

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        return self.request("GET", self.api_url + path, params=params)

    def _pace(self) -> None:
        """At most ``rate`` requests a second on average and ``burst`` at once (GCRA: each
        request moves the theoretical arrival time on by 1/rate), whatever the threads do."""
        with self._lock:
            now = time.monotonic()
            due = max(now, self._next)
            start = max(now, due - self._interval * (self._burst - 1))
            self._next = due + self._interval
        if start > now:
            self._sleep(start - now)

    def _hold(self, seconds: float) -> None:
        """No request before ``seconds`` from now (a 429's ``Retry-After``), and no burst."""
        with self._lock:
            tolerance = self._interval * (self._burst - 1)
            self._next = max(self._next, time.monotonic() + seconds + tolerance)

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped()

    def _detail(self, response: httpx.Response) -> str:
        """JumpCloud's own words (``message`` or ``error``), short, without the key."""
        try:
            document = response.json()
            text = document.get("message") or document.get("error") or ""
            text = text if isinstance(text, str) else json.dumps(text)
        except (ValueError, AttributeError):
            text = response.text
        return " ".join(text.replace(self._key, "***").split())[:200] or "(no detail)"

    def _refused(self, where: str, response: httpx.Response) -> str:
        status = response.status_code
        if status == 401:
            hint = "check --api-key-file" + (
                "; is --org-id an organization this admin manages?"
                if self.org_id
                else "; a multi-tenant admin's key also needs --org-id"
            )
        else:
            hint = (
                "the admin behind the API key may not read this (its role), or --org-id "
                "names an organization it does not manage"
            )
        return f"JumpCloud answered {status} to {where}: {hint} ({self._detail(response)})"

    # -- listings ----------------------------------------------------------------------------
    def pages(
        self, path: str, params: dict[str, Any], records: Callable[[Any], list[dict[str, Any]]]
    ) -> Iterator[dict[str, Any]]:
        """Every record of a ``limit``/``skip`` listing, each once.

        Pages overlap by ``OVERLAP`` records: a page that shares no record with the end of the
        previous one means records were deleted before the reading position, which may have
        skipped others (a snapshot would take them for deleted): ``ListingChanged``."""
        seen: set[str] = set()
        tail: set[str] = set()
        skip = 0
        while True:
            response = self.get(path, {**params, "limit": PAGE, "skip": skip})
            if response.status_code == 404:
                raise NotFound(f"JumpCloud answered 404 to GET {path}")
            page = records(response.json())
            ids = [record_id(record) for record in page]
            if tail and not tail.intersection(ids):
                raise ListingChanged(
                    f"GET {path} changed while it was read (records deleted between two pages)"
                )
            for record, rid in zip(page, ids, strict=True):
                if rid and rid not in seen:
                    seen.add(rid)
                    yield record
            if len(page) < PAGE:
                return
            tail = set(ids[-OVERLAP:])
            skip += PAGE - OVERLAP

    def users(self) -> Iterator[dict[str, Any]]:
        """``GET /api/systemusers`` (API 1.0 ``User_List``: ``{"results", "totalCount"}``)."""
        return self.pages("/api/systemusers", {"sort": "_id"}, lambda doc: doc["results"])

    def user(self, user_id: str) -> dict[str, Any] | None:
        """``GET /api/systemusers/{id}``; None once it is deleted (404)."""
        response = self.get(f"/api/systemusers/{quote(user_id, safe='')}")
        return None if response.status_code == 404 else response.json()

    def groups(self) -> Iterator[dict[str, Any]]:
        """``GET /api/v2/usergroups`` (API 2.0 ``List all User Groups``: an array)."""
        return self.pages("/api/v2/usergroups", {}, list)

    def group(self, group_id: str) -> dict[str, Any] | None:
        """``GET /api/v2/usergroups/{id}``; None once it is deleted (404)."""
        response = self.get(f"/api/v2/usergroups/{quote(group_id, safe='')}")
        return None if response.status_code == 404 else response.json()

    def group_members(self, group_id: str) -> Iterator[str]:
        """User ids of ``GET /api/v2/usergroups/{id}/members`` (graph connections whose ``to``
        is a ``user``); ``NotFound`` once the group is deleted."""
        path = f"/api/v2/usergroups/{quote(group_id, safe='')}/members"
        for edge in self.pages(path, {}, list):
            if str(edge["to"].get("type", "")).lower() == "user":
                yield record_id(edge)

    def app_targets(self, application_id: str, target: str) -> Iterator[str]:
        """Ids of ``GET /api/v2/applications/{id}/associations?targets=user_group|user``: the
        application's direct associations of that type; ``NotFound`` for an unknown app."""
        path = f"/api/v2/applications/{quote(application_id, safe='')}/associations"
        for edge in self.pages(path, {"targets": target}, list):
            yield record_id(edge)

    # -- Directory Insights ------------------------------------------------------------------
    def events(self, query: dict[str, Any]) -> tuple[list[dict[str, Any]], Any, bool]:
        """One page of ``POST /insights/directory/v1/events``: the events, the ``X-Search_after``
        cursor (decoded JSON, None if absent) and whether more pages follow (``X-Result-Count``
        reached ``X-Limit``, as the API's *Getting All the Pages of Data* says)."""
        response = self.request("POST", self.insights_url + EVENTS_PATH, body=query)
        if response.status_code == 404:
            raise JumpCloudError(f"JumpCloud answered 404 to POST {EVENTS_PATH}: --insights-url?")
        events = response.json()
        if not isinstance(events, list):
            raise JumpCloudError(f"POST {EVENTS_PATH} answered something else than an array")
        headers = response.headers
        count = _int(headers.get("x-result-count"), len(events))
        limit = _int(headers.get("x-limit"), int(query.get("limit") or 1000))
        try:
            cursor = json.loads(headers.get("x-search_after") or "null")
        except ValueError:
            cursor = None
        return events, cursor, bool(events) and count >= limit


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
