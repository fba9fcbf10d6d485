"""The one exception tree of the SCIM client.

Every failure of a SCIM call is a ``ScimError``; callers branch on the subclass::

    ScimError                 status: int | None, detail: str, scim_type: str | None
    ├── Transient             429, 5xx, 408, timeouts, connection errors (retry later;
    │   │                     ``retry_after`` seconds from ``Retry-After`` when given)
    │   └── NotSent           the request never left (a Bulk request found no slot, or a
    │                         resource it named failed in the same request): nothing changed
    ├── Unauthorized          401, 403 (pause the integration, do not retry)
    ├── NotFound              404
    ├── Conflict              409 (adopt on create; deactivate instead of delete)
    └── Invalid               400 and any other 4xx, redirects, oversized or non-SCIM
        │                     responses, payloads that cannot be built
        └── Unsupported       501, 405, and 400 with scimType invalidPath, noTarget or
                              invalidSyntax: this form of the request is not implemented
                              (try the next form, see ``compat``; never retried as is)

Messages carry the status and the server's detail, never request headers (so never the
bearer token); ``scrub`` removes a known secret from any text that goes into one.
"""

from __future__ import annotations

import email.utils
import json
import time

import httpx
from pydantic import ValidationError
from scim2_models import Error


class ScimError(Exception):
    """Base of every SCIM client error."""

    def __init__(self, status: int | None, detail: str, scim_type: str | None = None) -> None:
        self.status = status
        self.detail = detail
        self.scim_type = scim_type
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else type(self).__name__
        kind = f" [{self.scim_type}]" if self.scim_type else ""
        return f"{head}{kind}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.detail!r})"

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.status, self.detail, self.scim_type)


class Transient(ScimError):
    """A failure worth retrying later: throttling, server errors, network trouble."""

    def __init__(
        self,
        status: int | None,
        detail: str,
        scim_type: str | None = None,
        retry_after: float | None = None,
        *,
        counted: bool = False,
    ) -> None:
        self.retry_after = retry_after
        self.counted = counted
        """The pool's pace and circuit breaker already know of this failure: a Bulk request's,
        counted once for all of its operations."""
        super().__init__(status, detail, scim_type)

    def __reduce__(self) -> tuple[type, tuple[object, ...], dict[str, object]]:  # type: ignore[override]
        state: dict[str, object] = {"counted": self.counted}  # copies and pickles keep it
        return type(self), (self.status, self.detail, self.scim_type, self.retry_after), state


class NotSent(Transient):
    """A write that never reached the application: it changed nothing (not in doubt)."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(None, detail, None, retry_after, counted=True)

    def __reduce__(self) -> tuple[type, tuple[object, ...], dict[str, object]]:  # type: ignore[override]
        return type(self), (self.detail, self.retry_after), {}


class Unauthorized(ScimError):
    """The token is missing, invalid or lacks the rights (401/403)."""


class NotFound(ScimError):
    """The resource does not exist (404)."""


class Conflict(ScimError):
    """The request conflicts with the application's state (409)."""


class Invalid(ScimError):
    """The request or the response is not acceptable (400, other 4xx, non-SCIM answers)."""


class Unsupported(Invalid):
    """The application does not implement this form of the request: 501 Not Implemented,
    405 Method Not Allowed, or 400 with ``scimType`` ``invalidPath``, ``noTarget`` or
    ``invalidSyntax``. Another form may work (``worker.scim.compat``); the same never will."""


# 400 answers that say the request's shape (a PATCH path, a filter) is not understood
FORM_SCIM_TYPES = frozenset({"invalidPath", "noTarget", "invalidSyntax"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_for_status(
    status: int,
    detail: str,
    scim_type: str | None = None,
    retry_after: float | None = None,
) -> ScimError:
    """The exception of a non-2xx HTTP status."""
    if status in (501, 405) or (status == 400 and scim_type in FORM_SCIM_TYPES):
        return Unsupported(status, detail, scim_type)
    if status == 429 or status == 408 or status >= 500:
        return Transient(status, detail, scim_type, retry_after)
    if status in (401, 403):
        return Unauthorized(status, detail, scim_type)
    if status == 404:
        return NotFound(status, detail, scim_type)
    if status == 409:
        return Conflict(status, detail, scim_type)
    return Invalid(status, detail, scim_type)


def error_detail(raw: bytes, status: int) -> tuple[str, str | None]:
    """The detail and scimType of an error body (SCIM Error when possible)."""
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        try:
            error = Error.model_validate(data)
            return error.detail or _phrase(status), error.scim_type
        except ValidationError:
            detail = data.get("detail")
            if isinstance(detail, str) and detail:
                return detail[:500], None
    text = raw[:200].decode("utf-8", "replace").strip()
    return (f"{_phrase(status)}: {text}" if text else _phrase(status)), None


def _phrase(status: int) -> str:
    return httpx.codes.get_reason_phrase(status) or "error"


def scrub(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text``."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "***")
    return text
