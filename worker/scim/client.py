"""A thin SCIM 2.0 client on httpx; every resource body is built and parsed with scim2-models.

Users travel as a FLAT dict keyed by the SCIM attribute names of the integration article::

    {"userName": str, "active": bool, "name.givenName": str, "name.familyName": str,
     "displayName": str, "emails": str (the work email), "externalId": str, "department": str}

An absent key is an attribute we do not manage; a ``None`` value clears the attribute.
Every method sends one HTTP request (``list_users`` one per page), or, for a write of a client
with a ``BulkChannel``, one operation of a Bulk request (``bulk.py``), and raises the errors of
``worker.scim.errors`` as the answer to that one write would. Writes return what the
application answered (``RemoteUser`` or ``RemoteGroup``), or None when it answered without a
body (204), so that the caller records what the application holds rather than what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from scim2_models import (
    BulkOperation,
    Context,
    Email,
    EnterpriseUser,
    Group,
    GroupMember,
    ListResponse,
    Name,
    PatchOp,
    PatchOperation,
    Resource,
    ServiceProviderConfig,
    User,
)

from worker.store.apps import Network

from .bulk import (
    BULK_ID_PREFIX,
    HELD,
    READ_BACK,
    BulkChannel,
    OpAnswer,
    created_id,
    resolve_references,
)
from .errors import (
    Invalid,
    NotSent,
    ScimError,
    Transient,
    error_detail,
    error_for_status,
    parse_retry_after,
    scrub,
)
from .held import not_held
from .network import connection, proxy_secrets
from .profiles import Profile

ScimUser = User[EnterpriseUser]
# The parametrised classes, built once: pydantic caches ``ListResponse[X]`` only weakly and
# rebuilds it after a garbage collection (tens of ms each, the largest cost of a worker).
_LIST_OF: dict[type[Any], type[ListResponse[Any]]] = {
    ScimUser: ListResponse[ScimUser],
    Group: ListResponse[Group],
}
_PATCH_OF: dict[type[Any], type[PatchOp[Any]]] = {
    ScimUser: PatchOp[ScimUser],
    Group: PatchOp[Group],
}
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCIM_JSON = "application/scim+json"
MAX_BODY_BYTES = 1 << 20
MAX_BULK_BODY_BYTES = 16 << 20  # a Bulk answer may hold a resource per operation
USER_AGENT = "scim-provisioner"

FLAT_KEYS = (
    "userName",
    "active",
    "name.givenName",
    "name.familyName",
    "displayName",
    "emails",
    "externalId",
    "department",
)
_PATCH_PATHS = {key: key for key in FLAT_KEYS} | {"department": f"{ENTERPRISE_URN}:department"}

M = TypeVar("M", bound=Any)
R = TypeVar("R")  # a SCIM resource


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP exchange, for counting and timing (no token, no body)."""

    method: str
    path: str
    status: int | None  # None when no response arrived (timeout, connection error)
    elapsed: float


@dataclass(frozen=True)
class RemoteUser:
    id: str
    attributes: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class RemoteGroup:
    id: str
    display_name: str
    member_ids: frozenset[str]


class AppHttp:
    """One application's HTTP side: its base URL, the headers every request carries, explicit
    timeouts, and an httpx transport (a pool of keep-alive connections, thread-safe).

    ``ScimClient`` hands each request to the transport itself. ``httpx.Client``'s layers (the
    cookie jar, auth and redirect flows, event hooks, URL merging) cost about a third of a SCIM
    call's CPU in a worker, and none of them is wanted here: redirects are refused, there are
    no cookies, and the token is a fixed bearer header."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.secrets = tuple(s for s in (token, *secrets) if s)  # scrubbed from error details
        self.timeout = httpx.Timeout(timeout).as_dict()
        # httpcore sets TCP_NODELAY on its connections: a request's headers and body go out as
        # two writes, and Nagle's algorithm would hold the body for the app's delayed ACK
        self.transport = transport or httpx.HTTPTransport()
        common = [
            ("Authorization", f"Bearer {token}"),
            ("Accept", SCIM_JSON),
            ("Accept-Encoding", "gzip, deflate"),
            ("User-Agent", USER_AGENT),
        ]
        self._headers = httpx.Headers(common)
        self._headers_with_body = httpx.Headers([*common, ("Content-Type", SCIM_JSON)])

    def __repr__(self) -> str:
        return f"AppHttp({self.base_url!r})"  # never the token

    def open(
        self, method: str, path: str, params: Mapping[str, Any] | None, content: bytes | None
    ) -> httpx.Response:
        """Send a request; the response's body is still to be read, then ``close`` it."""
        url = httpx.URL(self.base_url + path, params=params)
        headers = self._headers if content is None else self._headers_with_body
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": self.timeout}
        )
        return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> AppHttp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def make_http_client(
    base_url: str,
    token: str,
    *,
    network: Network | None = None,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> AppHttp:
    """The HTTP side of one application: bearer auth, SCIM JSON, explicit timeouts, and its
    ``network`` (proxy, CA file, client certificate: ``network.http_transport``) unless a
    ``transport`` is given. ``AppError`` when a file of the network does not load."""
    network = network or Network()
    if transport is None:
        transport, secrets = connection(base_url, network)
    else:
        secrets = proxy_secrets(base_url, network)
    return AppHttp(base_url, token, timeout=timeout, transport=transport, secrets=secrets)


def escape_filter_value(value: str) -> str:
    """A SCIM filter string literal (RFC 7644 §3.4.2.2): quoted, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def named(resources: list[R], name: str, name_of: Callable[[R], str | None]) -> R | None:
    """The resource called ``name`` among a lookup's answers: the exact name first, else the
    name but for case (``userName`` and ``displayName`` are not case-exact, RFC 7643). Never a
    resource of another name: a server that ignores the filter answers with every resource,
    and taking one of them would overwrite somebody else's account."""
    exact = [r for r in resources if name_of(r) == name]
    folded = [r for r in resources if (name_of(r) or "").casefold() == name.casefold()]
    found = exact or folded
    return found[0] if found else None


def _build(model: Callable[..., M], **kwargs: Any) -> M:
    """Build a model, turning a validation error of our own data into ``Invalid``."""
    try:
        return model(**kwargs)
    except ValidationError as exc:
        raise Invalid(
            None, f"cannot build {getattr(model, '__name__', model)}: {_short(exc)}"
        ) from None


def _short(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)[:300]
    first = errors[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    return f"{loc}: {first.get('msg', '')}"[:300]


def _email(value: str) -> list[Email]:
    return [_build(Email, type="work", value=value, primary=True)]


class ScimClient:
    """SCIM calls for one application, shaped by its ``Profile``."""

    def __init__(
        self,
        http: AppHttp,
        profile: Profile,
        on_request: Callable[[RequestRecord], None] | None = None,
        bulk: BulkChannel | None = None,
    ) -> None:
        """``bulk``: the app's channel when its writes travel in Bulk requests (``bulk.py``)."""
        self.http = http
        self.profile = profile
        self.on_request = on_request
        self.bulk = bulk
        self.last_bulk = threading.local()

    def __repr__(self) -> str:
        return f"ScimClient({self.http.base_url!r}, profile={self.profile.name!r})"

    def reshaped(self, profile: Profile) -> ScimClient:
        """The same application's client, sending the forms of ``profile`` (learned ones)."""
        if profile == self.profile:
            return self
        twin = ScimClient(self.http, profile, self.on_request, self.bulk)
        twin.last_bulk = self.last_bulk
        return twin

    # -- discovery ---------------------------------------------------------
    def service_provider_config(self) -> ServiceProviderConfig:
        data = self._request("GET", "/ServiceProviderConfig")
        return self._parse(ServiceProviderConfig, data, Context.RESOURCE_QUERY_RESPONSE)

    def verify(self) -> None:
        """Check the base URL and the token with an authenticated read."""
        data = self._request("GET", "/Users", params={"startIndex": 1, "count": 1})
        self._parse(_LIST_OF[ScimUser], data, Context.RESOURCE_QUERY_RESPONSE)

    # -- users -------------------------------------------------------------
    def find_user(self, user_name: str) -> RemoteUser | None:
        """The user whose ``userName`` equals ``user_name`` (filter ``userName eq``), or None.
        Never a user of another name (see ``named``)."""
        found = self._search(ScimUser, "/Users", f"userName eq {escape_filter_value(user_name)}")
        user = named(found, user_name, lambda u: u.user_name)
        return None if user is None else self._remote_user(user)

    def get_user(self, remote_id: str) -> RemoteUser:
        data = self._request("GET", f"/Users/{_seg(remote_id)}")
        return self._remote_user(self._parse(ScimUser, data, Context.RESOURCE_QUERY_RESPONSE))

    def create_user(self, attrs: Mapping[str, Any], ref: str | None = None) -> RemoteUser:
        """POST /Users; a 409 raises ``Conflict`` (look the user up and adopt it). ``ref`` (the
        directory's id) lets a group created in the same Bulk request name the user
        (``bulk_ids``)."""
        user = self._user(attrs)
        ctx, ref = Context.RESOURCE_CREATION_REQUEST, f"user:{ref}" if ref else None
        data = self._write("POST", "/Users", ScimUser, user, ctx, ref=ref)
        return self._remote_user(self._parse(ScimUser, data, Context.RESOURCE_CREATION_RESPONSE))

    def update_user(
        self, remote_id: str, changes: Mapping[str, Any], full: Mapping[str, Any]
    ) -> RemoteUser | None:
        """Send ``changes`` (PATCH, one operation each) or PUT ``full``; nothing if no change."""
        if not changes:
            return None
        if not self.profile.user_patch:
            return self._put_user(remote_id, full)
        ops = [self._user_op(key, value) for key, value in changes.items()]
        ops = [op for op in ops if op is not None]
        if not ops:
            return None
        answer = self._patch(ScimUser, f"/Users/{_seg(remote_id)}", ops)
        return None if answer is None else self._remote_user(answer)

    def set_active(
        self, remote_id: str, active: bool, full: Mapping[str, Any]
    ) -> RemoteUser | None:
        """Activate or deactivate (PATCH replace ``active``, or PUT ``full`` with it)."""
        if not self.profile.user_patch:
            return self._put_user(remote_id, {**full, "active": active})
        op = _build(PatchOperation[ScimUser], op="replace", path="active", value=active)
        answer = self._patch(ScimUser, f"/Users/{_seg(remote_id)}", [op])
        return None if answer is None else self._remote_user(answer)

    def delete_user(self, remote_id: str) -> None:
        """DELETE; 409 raises ``Conflict`` (deactivate instead), 404 raises ``NotFound``."""
        self._write("DELETE", f"/Users/{_seg(remote_id)}", ScimUser)

    def list_users(self, page_size: int = 100) -> Iterator[RemoteUser]:
        """Every user of the application, paging with startIndex/count (a request per page)."""
        for user in self._list(ScimUser, "/Users", page_size):
            yield self._remote_user(user)

    def users_page(self, start: int, count: int) -> tuple[list[RemoteUser], int]:
        """One page of the app's users (``startIndex`` from 1) and the total: one request."""
        users, total = self._page(ScimUser, "/Users", start, count)
        return [self._remote_user(u) for u in users], total

    # -- groups ------------------------------------------------------------
    def groups_page(self, start: int, count: int) -> tuple[list[RemoteGroup], int]:
        """One page of the app's groups, with their members, and the total: one request."""
        groups, total = self._page(Group, "/Groups", start, count)
        return [self._remote_group(g) for g in groups], total

    def find_group(self, display_name: str) -> RemoteGroup | None:
        """The group whose ``displayName`` equals ``display_name``, or None. Never a group of
        another name (see ``named``)."""
        scim_filter = f"displayName eq {escape_filter_value(display_name)}"
        group = named(self._search(Group, "/Groups", scim_filter), display_name,
                       lambda g: g.display_name)  # fmt: skip
        return None if group is None else self._remote_group(group)

    def list_groups(self, page_size: int = 100) -> Iterator[RemoteGroup]:
        """Every group of the application with its members, a request per page."""
        for group in self._list(Group, "/Groups", page_size):
            yield self._remote_group(group)

    def get_group(self, remote_id: str) -> RemoteGroup:
        data = self._request("GET", f"/Groups/{_seg(remote_id)}")
        return self._remote_group(self._parse(Group, data, Context.RESOURCE_QUERY_RESPONSE))

    def create_group(self, display_name: str, member_ids: Iterable[str]) -> RemoteGroup:
        """POST /Groups with its first members (at most ``members_per_patch`` from the caller);
        a member named ``bulkId:<id>`` is a user created in the same Bulk request."""
        member_ids = list(member_ids)
        group = self._group(display_name, member_ids)
        named = [m[len(BULK_ID_PREFIX) :] for m in member_ids if m.startswith(BULK_ID_PREFIX)]
        ctx = Context.RESOURCE_CREATION_REQUEST
        data = self._write("POST", "/Groups", Group, group, ctx, requires=named)
        return self._remote_group(self._parse(Group, data, Context.RESOURCE_CREATION_RESPONSE))

    def rename_group(
        self, remote_id: str, display_name: str, member_ids: Iterable[str] | None = None
    ) -> RemoteGroup | None:
        """PATCH replace ``displayName``; by PUT (with ``member_ids``, then needed) where the
        profile has no group PATCH or renames by PUT."""
        if self.profile.group_patch and self.profile.group_rename == "patch":
            op = _build(PatchOperation[Group], op="replace", path="displayName", value=display_name)
            answer = self._patch(Group, f"/Groups/{_seg(remote_id)}", [op])
            return None if answer is None else self._remote_group(answer)
        if member_ids is None:
            raise ValueError("renaming by PUT needs the full member list")
        return self.replace_group(remote_id, display_name, member_ids)

    def patch_members(
        self, remote_id: str, add: Iterable[str], remove: Iterable[str]
    ) -> RemoteGroup | None:
        """ONE PATCH adding and removing members; the caller chunks to ``members_per_patch``."""
        if not self.profile.group_patch:
            raise ValueError(f"profile {self.profile.name!r} has no group PATCH: use replace_group")
        add, remove = list(add), list(remove)
        if not add and not remove:
            return None
        if len(add) + len(remove) > self.profile.members_per_patch:
            raise ValueError(
                f"{len(add) + len(remove)} member changes exceed "
                f"members_per_patch={self.profile.members_per_patch}"
            )
        op = PatchOperation[Group]
        ops = []
        if add:
            ops.append(_build(op, op="add", path="members", value=_members(add)))
        if remove and self.profile.member_remove_form == "value":
            ops.append(_build(op, op="remove", path="members", value=_members(remove)))
        else:
            ops += [
                _build(op, op="remove", path=f"members[value eq {escape_filter_value(member)}]")
                for member in remove
            ]
        answer = self._patch(Group, f"/Groups/{_seg(remote_id)}", ops)
        return None if answer is None else self._remote_group(answer)

    def replace_group(
        self, remote_id: str, display_name: str, member_ids: Iterable[str]
    ) -> RemoteGroup | None:
        """PUT the whole group: name and every member."""
        group = self._group(display_name, member_ids)
        path = f"/Groups/{_seg(remote_id)}"
        data = self._write("PUT", path, Group, group, Context.RESOURCE_REPLACEMENT_REQUEST)
        answer = self._answer(Group, data, Context.RESOURCE_REPLACEMENT_RESPONSE, path)
        return None if answer is None else self._remote_group(answer)

    def delete_group(self, remote_id: str) -> None:
        self._write("DELETE", f"/Groups/{_seg(remote_id)}", Group)

    # -- models <-> flat dicts ---------------------------------------------
    def _user(self, attrs: Mapping[str, Any]) -> ScimUser:
        """A ``User[EnterpriseUser]`` from a flat attribute dict."""
        unknown = set(attrs) - set(FLAT_KEYS)
        if unknown:
            raise ValueError(f"unknown user attributes: {sorted(unknown)}")
        if not attrs.get("userName"):
            raise Invalid(None, "userName is required")
        given, family = attrs.get("name.givenName"), attrs.get("name.familyName")
        kwargs: dict[str, Any] = {
            "user_name": attrs["userName"],
            "active": attrs.get("active"),
            "display_name": attrs.get("displayName"),
            "external_id": attrs.get("externalId"),
        }
        if given is not None or family is not None:
            kwargs["name"] = _build(Name, given_name=given, family_name=family)
        if attrs.get("emails") is not None:
            kwargs["emails"] = _email(attrs["emails"])
        user = _build(ScimUser, **kwargs)
        department = attrs.get("department")
        if department is not None and self.profile.enterprise_department:
            user[EnterpriseUser] = _build(EnterpriseUser, department=department)
        return user

    def _user_op(self, key: str, value: Any) -> PatchOperation[ScimUser] | None:
        if key not in _PATCH_PATHS:
            raise ValueError(f"unknown user attribute {key!r}")
        if key == "department" and not self.profile.enterprise_department:
            return None
        op = PatchOperation[ScimUser]
        path = _PATCH_PATHS[key]
        if value is None:
            if key in ("userName", "active"):
                raise Invalid(None, f"{key} cannot be removed")
            return _build(op, op="remove", path=path)
        value = _email(value) if key == "emails" else value
        return _build(op, op="replace", path=path, value=value)

    def _put_user(self, remote_id: str, full: Mapping[str, Any]) -> RemoteUser | None:
        path = f"/Users/{_seg(remote_id)}"
        user = self._user(full)
        data = self._write("PUT", path, ScimUser, user, Context.RESOURCE_REPLACEMENT_REQUEST)
        answer = self._answer(ScimUser, data, Context.RESOURCE_REPLACEMENT_RESPONSE, path)
        return None if answer is None else self._remote_user(answer)

    @staticmethod
    def _group(display_name: str, member_ids: Iterable[str]) -> Group:
        members = _members(member_ids)
        return _build(Group, display_name=display_name, members=members or None)

    @staticmethod
    def _remote_user(user: ScimUser) -> RemoteUser:
        if not user.id:
            raise Invalid(None, "user without id in response")
        flat: dict[str, Any] = {"userName": user.user_name, "active": user.active is not False}
        if user.name is not None:
            flat["name.givenName"] = user.name.given_name
            flat["name.familyName"] = user.name.family_name
        flat["displayName"] = user.display_name
        flat["externalId"] = user.external_id
        flat["emails"] = _work_email(user.emails or [])
        extension = user[EnterpriseUser]
        flat["department"] = extension.department if extension is not None else None
        # an empty string is no value (some apps answer "" for every attribute never set)
        return RemoteUser(user.id, {k: v for k, v in flat.items() if v is not None and v != ""})

    @staticmethod
    def _remote_group(group: Group) -> RemoteGroup:
        if not group.id:
            raise Invalid(None, "group without id in response")
        members = frozenset(m.value for m in group.members or [] if m.value)
        return RemoteGroup(group.id, group.display_name or "", members)

    # -- HTTP --------------------------------------------------------------
    def _search(self, model: type[Resource[Any]], path: str, scim_filter: str) -> list[Any]:
        params = {"filter": scim_filter, "startIndex": 1, "count": 10}
        data = self._request("GET", path, params=params)
        page = self._parse(_LIST_OF[model], data, Context.RESOURCE_QUERY_RESPONSE)
        return list(page.resources or [])

    def _list(self, model: type[Resource[Any]], path: str, page_size: int) -> Iterator[Any]:
        """The resources of ``path``, paging with startIndex/count (a request per page)."""
        start = 1
        while True:
            resources, total = self._page(model, path, start, page_size)
            yield from resources
            start += len(resources)
            if not resources or start > total:
                return

    def _page(
        self, model: type[Resource[Any]], path: str, start: int, count: int
    ) -> tuple[list[Any], int]:
        params = {"startIndex": start, "count": count}
        data = self._request("GET", path, params=params)
        page = self._parse(_LIST_OF[model], data, Context.RESOURCE_QUERY_RESPONSE)
        return list(page.resources or []), page.total_results or 0

    def _patch(self, model: type[Resource[Any]], path: str, ops: list[Any]) -> Any:
        """Send a PATCH; the resource the app answered with (200), or None (204)."""
        patch = _build(_PATCH_OF[model], operations=ops)
        data = self._write("PATCH", path, model, patch, Context.RESOURCE_PATCH_REQUEST)
        return self._answer(model, data, Context.RESOURCE_PATCH_RESPONSE, path)

    def _parse(self, model: type[M], data: Any, ctx: Context) -> M:
        if not isinstance(data, dict):
            raise Invalid(None, "empty or non-object response where a SCIM resource was expected")
        _ids_as_text(data)
        try:
            return model.model_validate(data, scim_ctx=ctx)
        except ValidationError as exc:
            if not any("emails" in error["loc"] for error in exc.errors()):
                raise Invalid(None, f"response is not SCIM: {self._scrub(_short(exc))}") from None
        # an address scim2-models refuses: drop it (and only it), so it never hides a user
        _drop_bad_emails(data)
        for resource in data.get("Resources") or []:
            _drop_bad_emails(resource)
        try:
            return model.model_validate(data, scim_ctx=ctx)
        except ValidationError as exc:
            raise Invalid(None, f"response is not SCIM: {self._scrub(_short(exc))}") from None

    def _answer(self, model: type[M], data: Any, ctx: Context, path: str) -> M | None:
        """The resource a write to ``path`` was answered with, or None: no body (204), or one
        that is not that resource (the write was done all the same: the caller keeps what it
        sent)."""
        if data is None:
            return None
        try:
            resource = self._parse(model, data, ctx)
        except Invalid:
            return None
        remote_id = getattr(resource, "id", None)
        return resource if remote_id and path.endswith("/" + _seg(remote_id)) else None

    def scrub(self, text: str) -> str:
        """``text`` without the app's secrets (its token, its proxy's password)."""
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        for secret in self.http.secrets:
            text = scrub(text, secret)
        return text

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request; return the parsed JSON body of a 2xx (None when empty)."""
        content = None if body is None else json.dumps(body).encode()
        status, raw, retry_after = self._exchange(method, path, params, content)
        return self._read(method, path, status, raw, retry_after)

    def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        content: bytes | None,
        limit: int = MAX_BODY_BYTES,
    ) -> tuple[int, bytes, str | None]:
        """One HTTP exchange: the status, the body (at most ``limit`` bytes, else ``Invalid``)
        and ``Retry-After``; ``Transient`` when no answer came."""
        status: int | None = None
        started = time.monotonic()
        try:
            response = self.http.open(method, path, params, content)
            try:
                status = response.status_code
                raw = _read_limited(response, limit)
                retry_after = response.headers.get("Retry-After")
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise Transient(None, f"timeout ({type(exc).__name__}) on {method} {path}") from None
        except httpx.TransportError as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise Transient(None, f"connection error on {method} {path}: {detail}") from None
        finally:
            if self.on_request is not None:
                self.on_request(RequestRecord(method, path, status, time.monotonic() - started))
        assert status is not None
        return status, raw, retry_after

    def bulk_exchange(
        self, method: str, path: str, content: bytes
    ) -> tuple[int, bytes, str | None]:
        """The exchange a ``BulkChannel`` sends its requests with (``bulk.Exchange``)."""
        return self._exchange(method, path, None, content, MAX_BULK_BODY_BYTES)

    def _read(
        self, method: str, path: str, status: int, raw: bytes, retry_after: str | None
    ) -> Any:
        """The JSON body of a 2xx answer (None when empty), or the error of another."""
        if 300 <= status < 400:
            raise Invalid(status, f"redirect not followed ({method} {path})")
        if 200 <= status < 300:
            if not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError:
                raise Invalid(status, f"response is not SCIM JSON ({method} {path})") from None
        detail, scim_type = error_detail(raw, status)
        raise error_for_status(
            status, self._scrub(detail), scim_type, parse_retry_after(retry_after)
        )

    def _write(
        self,
        method: str,
        path: str,
        model: type[Any],
        payload: Any | None = None,
        ctx: Context | None = None,
        *,
        ref: str | None = None,
        requires: Iterable[str] = (),
    ) -> Any:
        """Send a write (``payload``, a resource or a PatchOp of ``model``, dumped in ``ctx``):
        in the app's next Bulk request when it takes them, else alone. Returns the answer's
        JSON body, as ``_request`` does; a created resource answered without its body is what
        was sent, with the id the app gave it."""
        if self.bulk is not None:
            answer = self._bulk_write(method, path, model, payload, ref, requires)
            if answer is not _ALONE:
                return answer
        elif requires:
            raise NotSent("it names resources by bulkId, and this client sends no Bulk request")
        body = None if payload is None else payload.model_dump(scim_ctx=ctx)
        return self._request(method, path, body=body)

    def _bulk_write(
        self,
        method: str,
        path: str,
        model: type[Any],
        payload: Any,
        ref: str | None,
        requires: Iterable[str],
    ) -> Any:
        """``_write`` in a Bulk request: ``_ALONE`` when the write is to go alone after all.

        Before it is sent, the channel says whether a write of its form is read back after it
        (``BulkChannel.check``); the one that is gets the resource read as its answer, unless
        the Bulk answer carried it."""
        assert self.bulk is not None
        bulk_id = self.bulk.new_bulk_id() if method == "POST" else None
        operation = _build(
            BulkOperation[model],  # type: ignore[valid-type]
            method=method,
            path=path,
            bulk_id=bulk_id,
            data=payload,
        ).model_dump(scim_ctx=Context.BULK_REQUEST)
        form = f"{method} /{path.strip('/').split('/')[0]}"  # POST /Groups
        how = HELD if method == "DELETE" else self.bulk.check(form, self.about_object())
        verdict: tuple[list[str] | None, str] = (None, "not answered")
        try:
            answer = self.bulk.submit(operation, ref=ref, requires=requires)
            if answer is None:
                return _ALONE
            self.last_bulk.request = (answer.request, answer.size)
            self.last_bulk.created = answer.created
            if not 200 <= answer.status < 300:
                verdict = (None, f"answered {answer.status}")
                raw = json.dumps(answer.body).encode() if answer.body is not None else b""
                return self._read(method, path, answer.status, raw, None)
            sent = resolve_references(operation.get("data"), answer.created)
            read = answer.body
            if read is None and how == READ_BACK:
                read, why = self._read_back(_located(method, path, answer))
                verdict = (None, why)
            if how == READ_BACK and isinstance(read, dict) and isinstance(sent, dict):
                where = f"{path}/{_seg(str(read.get('id')))}" if method == "POST" else path
                verdict = (not_held(method, sent, read), where)
            if read is not None:
                return read
            if method == "POST" and isinstance(sent, dict):  # as a single POST's body holds it
                return {**sent, "id": created_id(answer)}
            return None
        finally:
            if how == READ_BACK:
                self.bulk.checked(form, *verdict)

    def _read_back(self, target: str) -> tuple[dict[str, Any] | None, str]:
        """The resource at ``target`` read back (a request slot, a GET), or None and why not:
        the write is done all the same, and is taken as sent."""
        assert self.bulk is not None
        try:
            self.bulk.slots(1)
            read = self._request("GET", target)
        except ScimError as error:
            if isinstance(error, Transient) and not isinstance(error, NotSent):
                self.bulk.heard(error)  # a 429 or 5xx slows the pool, as any other would
            return None, f"{target}: {error.detail}"
        return (read, "") if isinstance(read, dict) else (None, f"{target}: no resource")

    def about(self, obj: str | None) -> None:
        """The object (``user:<id>``) this thread's next writes are about: a write taken as sent
        without a check is remembered by it (``BulkChannel.check``)."""
        self.last_bulk.object = obj

    def about_object(self) -> str | None:
        return getattr(self.last_bulk, "object", None)

    def bulk_ids(self, refs: Iterable[str]) -> dict[str, str]:
        """``bulkId:<id>`` of each of these users (directory ids) whose create waits in this
        process's next Bulk request: a group created in it next may name them so."""
        if self.bulk is None:
            return {}
        pending = self.bulk.pending(f"user:{ref}" for ref in refs)
        return {ref[len("user:") :]: BULK_ID_PREFIX + bulk_id for ref, bulk_id in pending.items()}

    def resolved(self, remote_id: str) -> str:
        """The id the app gave a resource this thread's last Bulk request named by bulkId."""
        created = getattr(self.last_bulk, "created", None) or {}
        return str(resolve_references(remote_id, created))

    def bulk_note(self) -> str:
        """What the last write of this thread travelled in, for its audit entry ('' when alone),
        forgotten once read."""
        request = getattr(self.last_bulk, "request", None)
        self.last_bulk.request = None
        if request is None:
            return ""
        return f"in Bulk request {request[0]} of {request[1]} operations"


_ALONE = object()  # what ``_bulk_write`` returns for a write to send as a single call


def _located(method: str, path: str, answer: OpAnswer) -> str:
    """The resource a Bulk operation wrote: its path, or for a POST the one created."""
    return f"{path}/{_seg(created_id(answer))}" if method == "POST" else path


def _seg(remote_id: str) -> str:
    """A remote id as one URL path segment."""
    return quote(remote_id, safe="")


def _members(member_ids: Iterable[str]) -> list[GroupMember]:
    return [_build(GroupMember, value=member) for member in member_ids]


def _ids_as_text(data: dict[str, Any]) -> None:
    """Ids and member values as strings: some applications answer them as JSON numbers,
    which RFC 7643 does not allow but which name the resource all the same."""
    for resource in [data, *(r for r in data.get("Resources") or [] if isinstance(r, dict))]:
        if isinstance(resource.get("id"), int):
            resource["id"] = str(resource["id"])
        for member in resource.get("members") or []:
            if isinstance(member, dict) and isinstance(member.get("value"), int):
                member["value"] = str(member["value"])


def _drop_bad_emails(resource: Any) -> None:
    """Drop the email entries scim2-models refuses, so one odd address never hides a user."""
    emails = resource.get("emails") if isinstance(resource, dict) else None
    if not isinstance(emails, list):
        return
    kept = []
    for entry in emails:
        try:
            Email.model_validate(entry)
        except ValidationError:
            continue
        kept.append(entry)
    resource["emails"] = kept


def _work_email(emails: list[Email]) -> str | None:
    for pick in (
        lambda e: e.type == "work",
        lambda e: bool(e.primary),
        lambda e: True,
    ):
        for email in emails:
            if email.value and pick(email):
                return str(email.value)
    return None


def _read_limited(response: httpx.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refusing more than ``limit`` bytes."""
    too_big = Invalid(response.status_code, f"response body over {limit} bytes refused")
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    buf = bytearray()
    for chunk in response.iter_bytes():
        buf += chunk
        if len(buf) > limit:
            raise too_big
    return bytes(buf)


__all__ = [
    "ENTERPRISE_URN",
    "AppHttp",
    "FLAT_KEYS",
    "MAX_BODY_BYTES",
    "RemoteGroup",
    "RemoteUser",
    "RequestRecord",
    "ScimClient",
    "ScimUser",
    "escape_filter_value",
    "make_http_client",
]
