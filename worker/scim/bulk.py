"""SCIM Bulk (RFC 7644 §3.7): the writes of many reconciles of one application, combined into
Bulk requests.

A reconcile's thread hands its write to the app's ``BulkChannel`` (through ``ScimClient``) and
waits for that operation's own result, which the client then reads as a single call's answer:
the reconcile records it as it always does (mirror, audit entry, doubt, park or retry). The
first write of a batch makes its thread the batch's sender. It waits ``linger`` (or until the
batch is full: ``maxOperations`` operations or ``maxPayloadSize`` bytes), then for a request
slot of the app while the batch goes on filling, then sends the batch as one request.

| the app answered the Bulk request | each of its operations |
|---|---|
| 2xx, with the operation's result | that status and body, as if sent alone |
| 2xx, without it, or not readable | in doubt (``Transient``): its key runs again and re-reads |
| 501, 405, 404, 400, 413 | the app refuses Bulk: learned for good (``on_refused``), and the operation is sent as a single call |
| 401, 403 | ``Unauthorized`` |
| 429, 5xx, 408, timeout, no answer | ``Transient``; the pool's pace and breaker count it once (``on_transient``) |

``failOnErrors`` is never sent: the app runs every operation, and one failed operation fails
only its own key. Operations on one object keep their order: a reconcile's thread sends the
next write of its object only once the previous one is answered.

An operation that succeeded may be answered without its resource, which a single call's answer
would show (what the app kept of the write). Until the app has been seen to hold a write of a
form (``POST /Groups``) as sent, one write of that form at a time is checked (``check``, before
it is sent): read back when its answer leaves the resource out, and the resource read is its
answer. The others are taken as sent and remembered, and are read back in turn if that one was
not held as sent (``worker.sync.bulk``).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError
from scim2_models import BulkResponse, Context, EnterpriseUser, Group, User

from .errors import (
    NotSent,
    ScimError,
    Transient,
    error_detail,
    error_for_status,
    parse_retry_after,
)

log = logging.getLogger("provisioner.bulk")

BULK_REQUEST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
REFUSALS = frozenset({400, 404, 405, 413, 501})  # the app does not take this Bulk request
ENVELOPE_BYTES = 96  # the request's schemas and brackets, around its operations
BULK_ID_PREFIX = "bulkId:"

HELD, READ_BACK, UNCHECKED = "held", "read back", "unchecked"
"""What ``BulkChannel.check`` says of a write of a form answered without its resource: the app
holds such writes as sent; read this one back; take it as sent for now (another is read back)."""

Exchange = Callable[[str, str, bytes], "tuple[int, bytes, str | None]"]
"""``exchange(method, path, body)``: one HTTP request to the app: (status, body, Retry-After);
raises ``Transient`` when no answer came."""


@dataclass(frozen=True)
class BulkLimits:
    """What one Bulk request may hold, and how long a batch waits for company."""

    max_operations: int
    max_payload: int  # bytes
    linger: float = 0.02  # seconds
    counts_operations: bool = False  # the app's rate limit counts each operation


@dataclass(frozen=True)
class OpAnswer:
    """One operation's result in a Bulk request's answer."""

    status: int
    body: dict[str, Any] | None
    location: str | None
    created: Mapping[str, str]  # bulkId -> id of every resource the request created
    request: str  # the Bulk request's id (audit)
    size: int  # operations in that request


@dataclass
class _Pending:
    operation: dict[str, Any]
    size: int
    ref: str | None = None  # what a create makes, for later writes of the batch to name
    requires: frozenset[str] = frozenset()  # the bulkIds of the batch it names
    answer: OpAnswer | None = None
    error: ScimError | None = None
    single: bool = False  # send it as a single call (the app refused Bulk)

    @property
    def method(self) -> str:
        return str(self.operation.get("method"))

    @property
    def path(self) -> str:
        return str(self.operation.get("path"))

    @property
    def bulk_id(self) -> str | None:
        return self.operation.get("bulkId")


@dataclass
class _Batch:
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    ops: list[_Pending] = field(default_factory=list)
    size: int = ENVELOPE_BYTES
    closed: bool = False
    sent: bool = False  # the request left: its operations' outcome is the app's
    creates: dict[str, str] = field(default_factory=dict)  # ref -> bulkId of its create
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def fits(self, pending: _Pending, limits: BulkLimits) -> bool:
        return (
            not self.closed
            and len(self.ops) < limits.max_operations
            and self.size + pending.size + 1 <= limits.max_payload
        )

    def add(self, pending: _Pending, limits: BulkLimits) -> None:
        self.ops.append(pending)
        self.size += pending.size + 1
        if pending.ref is not None and pending.bulk_id is not None:
            self.creates[pending.ref] = pending.bulk_id
        if len(self.ops) >= limits.max_operations or self.size >= limits.max_payload:
            self.full.set()


class BulkChannel:
    """Combines the writes of one process's threads to one application into Bulk requests."""

    def __init__(
        self,
        exchange: Exchange,
        limits: BulkLimits,
        *,
        slots: Callable[[int], None],
        on_transient: Callable[[Transient], None] = lambda error: None,
        on_refused: Callable[[str], None] = lambda why: None,
        on_sent: Callable[[int, int], None] = lambda operations, failed: None,
        scrub: Callable[[str], str] = lambda text: text,
        claim_check: Callable[[str, str | None], str] = lambda form, obj: UNCHECKED,
        on_checked: Callable[[str, list[str] | None, str], None] = lambda *verdict: None,
    ):
        """``slots(n)`` takes n request slots of the app, waiting for them (``NotSent`` when
        it would wait too long); ``on_transient`` hears a Bulk request's throttling or server
        error once, ``on_refused`` why the app refuses Bulk, ``on_sent`` each request's
        operation count and how many of them failed; ``scrub`` removes the app's secrets from
        what the app answered (an app may echo the token in an error).

        ``claim_check(form, obj)`` claims the check of a write of ``form`` about ``obj``: one
        at a time, pool-wide (``READ_BACK``; else ``UNCHECKED``, and ``obj`` is remembered; or
        ``HELD`` when another process learned it meanwhile). ``on_checked(form, not_held,
        what)`` hears what the check found: the attributes not held as sent, or None when it
        could not tell."""
        self.exchange = exchange
        self.limits = limits
        self.slots = slots
        self.on_transient = on_transient
        self.on_refused = on_refused
        self.on_sent = on_sent
        self.scrub = scrub
        self.claim_check = claim_check
        self.on_checked = on_checked
        self.refused: str | None = None  # why the app refuses Bulk (then every write is single)
        self.held: frozenset[str] = frozenset()  # forms of write the app holds as sent
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self._ids = itertools.count(1)
        self._local = threading.local()

    def __repr__(self) -> str:
        state = f"refused: {self.refused}" if self.refused else "on"
        return f"BulkChannel(max {self.limits.max_operations} operations, {state})"

    @property
    def enabled(self) -> bool:
        return self.refused is None

    # -- the calling thread ------------------------------------------------------------------
    def admit(self) -> bool:
        """Before a write, instead of a request slot: True when the write will travel in a
        Bulk request (whose sender takes the slot). Noted for this thread, so that a write
        that ends up sent alone still takes one."""
        self._local.admitted = self.enabled
        return self._local.admitted

    def new_bulk_id(self) -> str:
        return f"op{next(self._ids)}"

    def pending(self, refs: Iterable[str]) -> dict[str, str]:
        """The bulkIds of the creates of ``refs`` (as ``submit`` was given them) waiting in the
        batch now filling: a write submitted next may name them (``bulkId:<id>``)."""
        with self._lock:
            batch = self._open
            if batch is None or batch.closed:
                return {}
            return {ref: batch.creates[ref] for ref in refs if ref in batch.creates}

    def submit(
        self,
        operation: dict[str, Any],
        *,
        ref: str | None = None,
        requires: Iterable[str] = (),
    ) -> OpAnswer | None:
        """Send one operation (a ``BulkOperation`` as dumped in ``Context.BULK_REQUEST``) in the
        next Bulk request, and wait for its result; None: send it as a single call (a request
        slot was taken for it if ``admit`` promised none). Raises a whole request's error.

        ``ref`` names what a create makes (``pending``); an operation that ``requires`` the
        bulkIds of creates goes in their batch, or is not sent (``NotSent``) when that batch
        has left or has no room."""
        admitted = getattr(self._local, "admitted", False)
        self._local.admitted = False
        pending = _Pending(operation, len(json.dumps(operation)), ref, frozenset(requires))
        lead = False
        with self._lock:
            batch = self._open
            single = not self.enabled or pending.size + ENVELOPE_BYTES > self.limits.max_payload
            stale = bool(pending.requires) and (
                single
                or batch is None
                or not pending.requires <= set(batch.creates.values())
                or not batch.fits(pending, self.limits)
            )
            if not (single or stale):
                if batch is None or not batch.fits(pending, self.limits):
                    if batch is not None:
                        batch.full.set()  # its sender stops waiting for company
                    batch = self._open = _Batch()
                    lead = True
                batch.add(pending, self.limits)
        if stale:
            raise NotSent("the resources it names by bulkId are no longer on their way")
        if single:
            if admitted:
                self.slots(1)
            return None
        assert batch is not None
        if lead:
            self._lead(batch)
        else:
            batch.done.wait()
        if pending.single:
            self.slots(1)  # admitted without a slot, now sent alone
            return None
        if pending.error is not None:
            raise pending.error
        return pending.answer

    # -- the batch's sender ------------------------------------------------------------------
    def _lead(self, batch: _Batch) -> None:
        """Wait for company and a slot, send the batch, hand out the results; whatever
        happens, every operation of the batch leaves with a result or an error."""
        try:
            batch.full.wait(self.limits.linger)
            if not self.limits.counts_operations:
                self.slots(1)  # meanwhile the batch fills on
            self._close(batch)
            if self.limits.counts_operations:
                self.slots(len(batch.ops))
            self._send(batch)
        except ScimError as error:  # no slot soon enough: nothing sent
            self._close(batch)
            self._fail(batch.ops, error)
        except BaseException as error:  # a bug, or the thread stopped: never leave others waiting
            self._close(batch)
            if batch.sent:  # what it did at the app is unknown: in doubt
                lost = Transient(
                    None, f"the Bulk request's answer was lost: {error!r}", counted=True
                )
            else:
                lost = NotSent(f"the Bulk request was not sent: {error!r}")
            self._fail((p for p in batch.ops if p.answer is None and not p.single), lost)
            raise
        finally:
            batch.done.set()

    def _close(self, batch: _Batch) -> None:
        with self._lock:
            batch.closed = True
            if self._open is batch:
                self._open = None

    def _send(self, batch: _Batch) -> None:
        ops = batch.ops
        body = {"schemas": [BULK_REQUEST_SCHEMA], "Operations": [p.operation for p in ops]}
        what = f"Bulk request of {len(ops)} operations"
        content = json.dumps(body).encode()
        batch.sent = True
        try:
            status, raw, retry_after = self.exchange("POST", "/Bulk", content)
        except Transient as error:
            self._fail(ops, Transient(None, f"{what} cut short: {error.detail}", counted=True))
            _hear(self.on_transient, error)
            _hear(self.on_sent, len(ops), len(ops))
            return
        except ScimError as error:  # answered, but not readable (too large): in doubt
            self._fail(ops, Transient(None, f"{what}: {error.detail}", counted=True))
            _hear(self.on_sent, len(ops), len(ops))
            return
        if 200 <= status < 300:
            failed = self._distribute(batch, raw, what)
            _hear(self.on_sent, len(ops), failed)
            return
        detail = self.scrub(error_detail(raw, status)[0])
        if status in REFUSALS:
            for pending in ops:
                pending.single = True
            self._refuse(f"HTTP {status} to a {what}: {detail}")
            return
        failure = error_for_status(
            status, f"{what}: {detail}", None, parse_retry_after(retry_after)
        )
        if isinstance(failure, Transient):
            failure.counted = True
            _hear(self.on_transient, failure)
        self._fail(ops, failure)
        _hear(self.on_sent, len(ops), len(ops))

    def _refuse(self, why: str) -> None:
        with self._lock:
            first = self.refused is None
            self.refused = self.refused or why
        if first:
            _hear(self.on_refused, why)

    def learned(self, why: str | None, held: frozenset[str] = frozenset()) -> None:
        """What the pool knows: the app refuses Bulk (``why``), or that was forgotten (None,
        ``apps update``) and Bulk is tried again; the forms of write it holds as sent."""
        with self._lock:
            self.refused = why
            self.held = held

    # -- reading a write back ----------------------------------------------------------------
    def check(self, form: str, obj: str | None = None) -> str:
        """Before a write of ``form`` about ``obj`` is sent: ``HELD`` (the app holds such
        writes as sent), ``READ_BACK`` (read it back if its answer leaves its resource out;
        ``checked`` must follow) or ``UNCHECKED`` (taken as sent; ``obj`` remembered)."""
        if form in self.held or not self.enabled:  # (refused: its writes go alone)
            return HELD
        try:
            how = self.claim_check(form, obj)
        except Exception:  # Redis away: the write is taken as sent, as before any check
            log.warning("the read-back of a Bulk write could not be claimed", exc_info=True)
            return UNCHECKED
        if how == HELD:
            with self._lock:
                self.held = self.held | {form}
        return how

    def heard(self, error: Transient) -> None:
        """A request of the channel's own besides its Bulk requests (a read-back) was throttled
        or failed: the pool's pace and breaker hear it, as they would a Bulk request's."""
        _hear(self.on_transient, error)

    def checked(self, form: str, not_held: list[str] | None, what: str) -> None:
        """The read-back of a write of ``form`` found ``not_held`` (None: not read)."""
        if not_held == []:
            with self._lock:
                self.held = self.held | {form}
        _hear(self.on_checked, form, not_held, what)

    def _distribute(self, batch: _Batch, raw: bytes, what: str) -> int:
        """Hand each operation its result; returns how many failed."""
        ops = batch.ops
        try:
            data = json.loads(raw)
            answers = _BULK_RESPONSE.model_validate(data, scim_ctx=Context.BULK_RESPONSE)
            entries = [e for e in data.get("Operations") or [] if isinstance(e, dict)]
        except (ValueError, ValidationError, AttributeError):
            doubt = Transient(None, f"{what}: the answer is not a SCIM BulkResponse", counted=True)
            self._fail(ops, doubt)
            return len(ops)
        results = list(zip(answers.operations or [], entries, strict=False))
        created = {
            str(result.bulk_id): _last_segment(result.location)
            for result, _ in results
            if result.bulk_id and result.location and result.status and result.status < 300
        }
        matched = _match(ops, [result for result, _ in results])
        failed = 0
        for pending, index in zip(ops, matched, strict=True):
            if index is None:
                pending.error = Transient(
                    None, f"{what}: the answer has no result for this operation", counted=True
                )
                failed += 1
                continue
            result, entry = results[index]
            response = entry.get("response")
            status = int(result.status or 0)
            failed += not 200 <= status < 300
            lost = pending.requires - set(created)
            if lost and not 200 <= status < 300:  # refused for a create that failed
                pending.error = NotSent(f"{what}: the resources it names by bulkId ("
                                        f"{', '.join(sorted(lost))}) were not created")  # fmt: skip
                continue
            pending.answer = OpAnswer(
                status,
                response if isinstance(response, dict) else None,
                result.location,
                created,
                batch.id,
                len(ops),
            )
        return failed

    @staticmethod
    def _fail(ops: Iterable[_Pending], error: ScimError) -> None:
        for pending in ops:  # an exception of its own for each thread that raises it
            pending.error = copy.copy(error)


# the operations' status, location and bulkId are read from it; their bodies, as the client reads
# a single call's answer
_BULK_RESPONSE = BulkResponse[User[EnterpriseUser] | Group]


def _hear(hook: Callable[..., None], *args: Any) -> None:
    """Tell a hook (the pool's pace, the counters): its failure (Redis away) changes nothing
    of what the operations got."""
    try:
        hook(*args)
    except Exception:
        log.warning("a Bulk hook failed", exc_info=True)


def _match(ops: list[_Pending], results: list[Any]) -> list[int | None]:
    """The index of each operation's result: a POST by its bulkId, another by its method and
    the location of its resource; by position when the app answered every one in order."""
    by_bulk_id = {str(r.bulk_id): i for i, r in enumerate(results) if r.bulk_id}
    by_place: dict[tuple[str, str], int] = {}
    for i, r in enumerate(results):
        if r.location and r.method:
            by_place.setdefault((str(r.method.value), _tail(r.location)), i)
    in_order = len(results) == len(ops) and all(
        r.method is None or str(r.method.value) == p.method
        for r, p in zip(results, ops, strict=False)
    )
    matched: list[int | None] = []
    for position, pending in enumerate(ops):
        found = by_bulk_id.get(pending.bulk_id) if pending.bulk_id else None
        if found is None and pending.method != "POST":
            found = by_place.get((pending.method, _tail(pending.path)))
        if found is None and in_order:
            found = position
        matched.append(found)
    return matched


def _tail(location: str) -> str:
    """The last two segments of a resource's location or path: ``Users/<id>``."""
    return "/".join(location.rstrip("/").split("/")[-2:])


def _last_segment(location: str) -> str:
    return unquote(location.rstrip("/").rsplit("/", 1)[-1])


def resolve_references(value: Any, created: Mapping[str, str]) -> Any:
    """``value`` with each ``bulkId:<id>`` it holds replaced by the id the app gave it."""
    if isinstance(value, str) and value.startswith(BULK_ID_PREFIX):
        return created.get(value[len(BULK_ID_PREFIX) :], value)
    if isinstance(value, list):
        return [resolve_references(item, created) for item in value]
    if isinstance(value, dict):
        return {key: resolve_references(item, created) for key, item in value.items()}
    return value


def created_id(answer: OpAnswer) -> str:
    """The id of the resource a POST created, from its location."""
    if not answer.location:
        raise Transient(None, "the application created the resource without its location",
                        counted=True)  # fmt: skip
    return _last_segment(answer.location)


__all__ = [
    "BULK_REQUEST_SCHEMA",
    "HELD",
    "READ_BACK",
    "UNCHECKED",
    "BulkChannel",
    "BulkLimits",
    "Exchange",
    "OpAnswer",
    "created_id",
    "resolve_references",
]
