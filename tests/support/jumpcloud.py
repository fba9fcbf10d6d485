"""A thin JumpCloud double on 127.0.0.1 (a free port): just the endpoints the connector uses,
with the shapes, paging and headers their documentation gives, and 429s on demand.

- API 1.0: ``GET /api/systemusers`` (``limit``, ``skip``, ``sort``; ``{"results",
  "totalCount"}``), ``GET /api/systemusers/{id}``; records carry ``_id``.
- API 2.0: ``GET /api/v2/usergroups``, ``/api/v2/usergroups/{id}``,
  ``/api/v2/usergroups/{id}/members`` and ``/api/v2/applications/{id}/associations?targets=``
  (arrays; graph connections ``{"to": {"id", "type"}, "attributes"}``); ``limit`` at most 100.
- Directory Insights: ``POST /insights/directory/v1/events`` (``service``, ``start_time``,
  ``end_time``, ``limit`` (default 1,000, at most 10,000), ``sort``, ``search_term.and``,
  ``search_after``), answered with ``X-Result-Count``, ``X-Limit``, ``X-Sort`` and
  ``X-Search_after`` (the last row's sort values: its time in ms and an opaque id).
- ``x-api-key`` must be the key (else 401); with ``org_id`` set (a multi-tenant admin's key),
  ``x-org-id`` is required (401 without it, 404 for another org).

Every change made through its methods is also an Insights event, as JumpCloud records them
(``user_create`` ... ``association_change``), unless ``event=False`` (a change the events
miss, or that happened before the follower started).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PAGE_MAX = 100
ROWS_DEFAULT, ROWS_MAX = 1000, 10_000


@dataclass
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0


@dataclass
class Row:
    """An Insights event and its sort values (time in ms, an opaque tie-breaker that keeps the
    order events were recorded in)."""

    event: dict[str, Any]
    ms: int
    tiebreak: str
    visible: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[int, str]:
        return (self.ms, self.tiebreak)


class FakeJumpCloud:
    def __init__(self, api_key: str = "jc-test-key-7f3a9c", org_id: str | None = None) -> None:
        self.api_key = api_key
        self.org_id = org_id
        self.lock = threading.RLock()
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, list[str]] = {}
        self.applications: dict[str, dict[str, list[str]]] = {}  # id -> target type -> ids
        self.rows: list[Row] = []
        self.requests: list[Seen] = []
        self.throttled: list[str | None] = []  # Retry-After of the next 429s (None: no header)
        self.forbidden = False
        self.delay = 0.0  # seconds before each answer
        self.on_request: Callable[[Seen], None] | None = None
        self._ids = itertools.count(0x6500000000000000000000)
        self._seq = itertools.count()  # sort ties in the order events were recorded
        self._last_ms = 0
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeJumpCloud:
        fake = self

        class Handler(_Handler):
            double = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()  # fmt: skip
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeJumpCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throttle(self, count: int, retry_after: str | None = "1") -> None:
        """Answer the next ``count`` requests 429 Too Many Requests."""
        with self.lock:
            self.throttled += [retry_after] * count

    # -- the directory, changed as an administrator would -------------------------------------
    def new_id(self) -> str:
        return f"{next(self._ids):024x}"

    def add_user(self, username: str, *, event: bool = True, **attrs: Any) -> str:
        uid = self.new_id()
        with self.lock:
            self.users[uid] = {"_id": uid, "username": username, "email": f"{username}@example.com",
                               "activated": True, "suspended": False, "state": "ACTIVATED",
                               "organization": self.org_id or "5a2af2a82cf2b0010053ea41",
                               "created": _now(), **attrs}  # fmt: skip
            if event:
                self._record("user_create", resource=_user_resource(self.users[uid]))
        return uid

    def update_user(self, uid: str, *, event: bool = True, **attrs: Any) -> dict[str, Any] | None:
        """Change attributes; returns the ``user_update`` event (None: ``event=False``)."""
        with self.lock:
            before = dict(self.users[uid])
            self.users[uid].update(attrs)
            if not event:
                return None
            changes = [{"field": k, "from": before.get(k), "to": v} for k, v in attrs.items()]
            return self._record("user_update", resource=_user_resource(self.users[uid]),
                                changes=changes)  # fmt: skip

    def suspend_user(self, uid: str, suspended: bool = True) -> None:
        with self.lock:
            self.users[uid].update(suspended=suspended,
                                   state="SUSPENDED" if suspended else "ACTIVATED")  # fmt: skip
            kind = "user_suspended" if suspended else "user_unsuspended"
            self._record(kind, resource=_user_resource(self.users[uid]))

    def delete_user(self, uid: str, *, event: bool = True) -> None:
        with self.lock:
            user = self.users.pop(uid)
            for members in self.members.values():
                if uid in members:
                    members.remove(uid)
            for bound in self.applications.values():
                if uid in bound["user"]:
                    bound["user"].remove(uid)
            if event:
                self._record("user_delete", resource=_user_resource(user))

    def add_group(self, name: str, *, event: bool = True) -> str:
        gid = self.new_id()
        with self.lock:
            self.groups[gid] = {"id": gid, "name": name, "type": "user_group",
                                "attributes": None, "membershipMethod": "STATIC"}  # fmt: skip
            self.members[gid] = []
            if event:
                self._record("group_create", resource=_group_resource(self.groups[gid]))
        return gid

    def rename_group(self, gid: str, name: str) -> None:
        with self.lock:
            old = self.groups[gid]["name"]
            self.groups[gid]["name"] = name
            self._record("group_update", resource=_group_resource(self.groups[gid]),
                         changes=[{"field": "name", "from": old, "to": name}])  # fmt: skip

    def delete_group(self, gid: str, *, event: bool = True) -> None:
        with self.lock:
            group = self.groups.pop(gid)
            self.members.pop(gid, None)
            for bound in self.applications.values():
                if gid in bound["user_group"]:
                    bound["user_group"].remove(gid)
            if event:
                self._record("group_delete", resource=_group_resource(group))

    def add_member(self, gid: str, uid: str, *, event: bool = True) -> None:
        with self.lock:
            if uid not in self.members[gid]:
                self.members[gid].append(uid)
            if event:
                self._associate("add", ("USER_GROUP", gid, self.groups[gid]["name"]),
                                ("USER", uid, self.users[uid]["username"]))  # fmt: skip

    def remove_member(self, gid: str, uid: str, *, event: bool = True) -> None:
        with self.lock:
            self.members[gid].remove(uid)
            if event:
                self._associate("remove", ("USER_GROUP", gid, self.groups[gid]["name"]),
                                ("USER", uid, self.users.get(uid, {}).get("username")))  # fmt: skip

    def add_application(self, name: str = "zscaler") -> str:
        aid = self.new_id()
        with self.lock:
            self.applications[aid] = {"user_group": [], "user": [], "name": name}  # type: ignore[dict-item]
        return aid

    def bind(
        self, aid: str, kind: str, oid: str, *, bound: bool = True, event: bool = True
    ) -> None:
        """Bind (or unbind) a user group (``kind`` ``user_group``) or a user to an app."""
        with self.lock:
            targets = self.applications[aid][kind]
            if bound and oid not in targets:
                targets.append(oid)
            elif not bound:
                targets.remove(oid)
            if event:
                app = ("APPLICATION", aid, self.applications[aid]["name"])
                other = (kind.upper(), oid, None)
                # a group's binding goes from the group, a user's from the app: both are read
                ends = (other, app) if kind == "user_group" else (app, other)
                self._associate("add" if bound else "remove", *ends)

    # -- Insights ----------------------------------------------------------------------------
    def _record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append an event, visible to queries at once; returns it."""
        with self.lock:
            ms = max(int(time.time() * 1000), self._last_ms)
            self._last_ms = ms
            stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            event = {"id": str(uuid.uuid4()), "event_type": kind,
                     "timestamp": stamp[:-3] + "Z", "service": "directory",
                     "organization": self.org_id or "5a2af2a82cf2b0010053ea41", "success": True,
                     "initiated_by": {"type": "admin", "id": "5845d8f9c4894c85596c54f3",
                                      "email": "admin@example.com"},
                     "client_ip": "10.1.2.3", "@version": "1", **fields}  # fmt: skip
            self.rows.append(Row(event, ms, f"{next(self._seq):09d}{secrets.token_urlsafe(8)}"))
            return event

    def _associate(self, op: str, source: tuple[str, str, Any], target: tuple[str, str, Any]):
        def end(e: tuple[str, str, Any]) -> dict[str, Any]:
            return {"type": e[0], "object_id": e[1], "name": e[2]}

        return self._record("association_change", resource={"type": source[0].lower(),
                            "id": source[1]}, association={"op": op, "action_source": "manual",
                            "connection": {"from": end(source), "to": end(target)}})  # fmt: skip

    def record_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Any other event (a login, a system group's change): the follower must skip it."""
        return self._record(kind, **fields)

    def visible_at(self, event_id: str) -> float:
        return next(r.visible for r in self.rows if r.event["id"] == event_id)

    # -- answering ---------------------------------------------------------------------------
    def answer(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            if self.throttled:
                retry_after = self.throttled.pop(0)
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                return 429, headers, {"message": "Too Many Requests"}
            if seen.headers.get("x-api-key") != self.api_key:
                return 401, {}, {"message": "Unauthorized"}
            if self.org_id and "x-org-id" not in seen.headers:
                return 401, {}, {"message": "ID not included for multi-tenant admin"}
            if self.org_id and seen.headers["x-org-id"] != self.org_id:
                return 404, {}, {"message": "Organization ID Not Found"}
            if self.forbidden:
                return 403, {}, {"message": "Forbidden"}
            return self._route(seen)

    def _route(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        parts = [unquote(p) for p in seen.path.strip("/").split("/")]
        q = seen.query
        if seen.method == "POST" and seen.path == "/insights/directory/v1/events":
            return self._events(seen.body)
        if seen.method != "GET":
            return 405, {}, {"message": "Method Not Allowed"}
        if parts[:2] == ["api", "systemusers"] and len(parts) == 2:
            users = list(self.users.values())
            if q.get("sort") == "_id":
                users.sort(key=lambda u: u["_id"])
            status, page = _page(users, q)
            if status == 200:
                page = {"results": page, "totalCount": len(users)}
            return status, {}, page
        if parts[:2] == ["api", "systemusers"] and len(parts) == 3:
            user = self.users.get(parts[2])
            return (200, {}, user) if user else (404, {}, {"message": "Not Found"})
        if parts[:3] == ["api", "v2", "usergroups"]:
            if len(parts) == 3:
                status, page = _page(list(self.groups.values()), q)
                return status, {}, page
            group = self.groups.get(parts[3])
            if group is None:
                return 404, {}, {"message": "Not Found"}
            if len(parts) == 4:
                return 200, {}, group
            if parts[4] == "members" and len(parts) == 5:
                edges = [_edge(uid, "user") for uid in self.members[parts[3]]]
                status, page = _page(edges, q)
                return status, {}, page
        if parts[:3] == ["api", "v2", "applications"] and len(parts) == 5:
            if parts[4] != "associations":
                return 404, {}, {"message": "Not Found"}
            app = self.applications.get(parts[3])
            if app is None:
                return 404, {}, {"message": "Not Found"}
            target = q.get("targets")
            if target not in ("user", "user_group"):
                return 400, {}, {"message": "targets: must be one of user, user_group"}
            status, page = _page([_edge(oid, target) for oid in app[target]], q)
            return status, {}, page
        return 404, {}, {"message": "Not Found"}

    def _events(self, body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict) or not body.get("start_time") or not body.get("service"):
            return 400, {}, {"message": "service and start_time are required"}
        services = body["service"]
        if not isinstance(services, list) or not set(services) & {"directory", "all"}:
            return 400, {}, {"message": "invalid service"}
        try:
            start = _ms(body["start_time"])
            end = _ms(body["end_time"]) if body.get("end_time") else None
        except ValueError:
            return 400, {}, {"message": "start_time and end_time are RFC 3339 dates"}
        if end is not None and end <= start:
            return 400, {}, {"message": "end_time must come after start_time"}
        limit = body.get("limit")
        limit = limit if isinstance(limit, int) and 0 < limit <= ROWS_MAX else ROWS_DEFAULT
        terms = (body.get("search_term") or {}).get("and") or []
        after = tuple(body["search_after"]) if body.get("search_after") else None
        rows = [r for r in self.rows
                if r.ms >= start and (end is None or r.ms < end) and _matches(r.event, terms)
                and (after is None or r.key > after)]  # fmt: skip
        page = sorted(rows, key=lambda r: r.key)[:limit]
        last = list(page[-1].key) if page else (list(after) if after else [])
        headers = {"X-Result-Count": str(len(page)), "X-Limit": str(limit), "X-Sort": "ASC",
                   "X-Search_after": json.dumps(last), "X-Request-Id": str(uuid.uuid4())}  # fmt: skip
        return 200, headers, [r.event for r in page]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: FakeJumpCloud

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        seen = Seen(time.monotonic(), self.command, parts.path, query, body, headers)
        fake = self.double
        if fake.on_request is not None:
            fake.on_request(seen)
        if fake.delay:
            time.sleep(fake.delay)
        status, extra, document = fake.answer(seen)
        seen.status = status
        with fake.lock:
            fake.requests.append(seen)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def _page(records: list[Any], q: dict[str, str]) -> tuple[int, Any]:
    """``limit`` (10 by default, at most 100) records from ``skip``."""
    try:
        limit, skip = int(q.get("limit", 10)), int(q.get("skip", 0))
    except ValueError:
        return 400, {"message": "limit and skip are integers"}
    if not 0 < limit <= PAGE_MAX or skip < 0:
        return 400, {"message": f"limit: at most {PAGE_MAX}; skip: 0 or more"}
    return 200, records[skip : skip + limit]


def _edge(oid: str, kind: str) -> dict[str, Any]:
    return {"to": {"id": oid, "type": kind}, "attributes": None}


def _user_resource(user: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user", "id": user["_id"], "username": user["username"]}


def _group_resource(group: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user_group", "id": group["id"], "name": group["name"]}


def _matches(event: dict[str, Any], terms: list[dict[str, Any]]) -> bool:
    """``search_term.and``: every term holds; a list means any of its values."""
    for term in terms:
        for name, wanted in term.items():
            value = event
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            options = wanted if isinstance(wanted, list) else [wanted]
            if str(value).lower() not in {str(o).lower() for o in options}:
                return False
    return True


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
