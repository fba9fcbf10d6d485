"""Error reports to Sentry (``SENTRY_DSN``), with secrets scrubbed.

``init_sentry(component)`` is called by the worker (with the Celery integration) and by the
webhook receiver. Nothing leaves the process before it went through ``Scrubber``:

- a value under a sensitive name (``token``, ``secret``, ``authorization``, ``signature``,
  ``password``, ``dsn``, ... anywhere in the name: ``token_file`` is kept, ``scim_token`` not)
  is replaced, in local variables, request data, extras, contexts and breadcrumbs;
- those values, and secrets registered with ``remember_secret`` (the webhook's), are then
  removed from every other string of the event: messages, exception values, reprs;
- ``Bearer …``/``Basic …`` credentials and ``token=…``-style pairs are removed from any text.

``send_default_pii`` stays off; local variables are kept (they make reports useful) but
scrubbed.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

if TYPE_CHECKING:
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

from worker import config

log = logging.getLogger("provisioner.sentry")

FILTERED = "[Filtered]"
EXTRA_DENYLIST = ("token", "secret", "authorization", "signature")
SENSITIVE_WORDS = (
    *EXTRA_DENYLIST,
    *("password", "passwd", "api_key", "apikey", "cookie", "dsn", "credential", "private_key"),
)
HARMLESS_SUFFIXES = ("_file", "_path", "_env")  # names of where a secret lives, not the secret
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_PAIR = re.compile(
    r"(?i)\b([\w-]*(?:token|secret|signature|password|authorization)[\w-]*)"
    r"""(["']?\s*[:=]\s*["']?)((?!(?:bearer|basic)\s)[^\s"',;&]+)"""
)
_CREDENTIAL_VALUE = re.compile(r"(?i)\b(?:bearer|basic)\s+([^\s'\"]{6,})")
_SECRETS: set[str] = set()


def remember_secret(value: str | None) -> None:
    """A value to remove from every report wherever it appears (at least 6 characters)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def sensitive(name: object) -> bool:
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    if lowered.endswith(HARMLESS_SUFFIXES):
        return False
    return any(word in lowered for word in SENSITIVE_WORDS)


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in sorted({*_SECRETS, *secrets}, key=len, reverse=True):
        text = text.replace(secret, FILTERED)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} {FILTERED}", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{FILTERED}", text)


def _collect(value: Any, found: set[str], under_sensitive: bool = False, depth: int = 0) -> None:
    """Strings held under a sensitive name, anywhere in ``value``."""
    if depth > 20:
        return
    if isinstance(value, str):
        if under_sensitive:
            # local variables arrive as reprs: 'value' (quoted), or "Bearer value"
            for text in (value, value.strip("'\"")):
                if len(text) >= 6:
                    found.add(text)
                found.update(m.group(1) for m in _CREDENTIAL_VALUE.finditer(text))
    elif isinstance(value, dict):
        for k, v in value.items():
            _collect(v, found, under_sensitive or sensitive(k), depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _collect(v, found, under_sensitive, depth + 1)


def _scrub(value: Any, secrets: set[str], depth: int = 0) -> Any:
    """``value`` with the values of sensitive names replaced and secrets removed from every
    string."""
    if depth > 20:
        return FILTERED
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {
            k: FILTERED if sensitive(k) else _scrub(v, secrets, depth + 1) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secrets, depth + 1) for v in value]
    return value  # numbers, timestamps, AnnotatedValue; frame variables are already reprs


class Scrubber(EventScrubber):
    """Sentry's EventScrubber (exact names, extra words) plus the scrubbing described above."""

    def __init__(self) -> None:
        super().__init__(
            denylist=[*DEFAULT_DENYLIST, *EXTRA_DENYLIST, "x-provisioner-signature"],
            recursive=True,
            send_default_pii=False,
        )

    def scrub_event(self, event: Event) -> None:
        found: set[str] = set()
        _collect(event, found)
        super().scrub_event(event)
        fields = cast("dict[str, Any]", event)  # every field alike, whatever its key
        for key in list(fields):
            fields[key] = _scrub(fields[key], found)


def before_send(event: Event, hint: Hint) -> Event:
    """Last pass on the serialized event (the scrubber ran before serialization)."""
    found: set[str] = set()
    _collect(event, found)
    return cast("Event", {k: _scrub(v, found) for k, v in event.items()})


def before_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb:
    found: set[str] = set()
    _collect(crumb, found)
    return {k: _scrub(v, found) for k, v in crumb.items()}


def init_sentry(component: str, *, dsn: str | None = None, **options: Any) -> bool:
    """Initialise Sentry when ``SENTRY_DSN`` (or ``dsn``) is set; False when it is not.
    ``options`` go to ``sentry_sdk.init`` (a test passes ``transport``)."""
    conf = config.load()
    dsn = dsn or conf.sentry_dsn_text
    if not dsn:
        return False
    integrations = list(options.pop("integrations", []))
    if component == "worker":
        from sentry_sdk.integrations.celery import CeleryIntegration

        integrations.append(CeleryIntegration())
    _remember_webhook_secrets(conf)
    sentry_sdk.init(
        dsn=dsn,
        send_default_pii=False,
        include_local_variables=True,
        event_scrubber=Scrubber(),
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        integrations=integrations,
        server_name=None,
        environment=conf.sentry_environment,
        **options,
    )
    sentry_sdk.set_tag("component", component)
    log.info("Sentry error reports on (%s)", component)
    return True


def _remember_webhook_secrets(conf: config.Settings) -> None:
    texts = [conf.webhook_secret_text]
    if conf.webhook_secret_file:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append(conf.webhook_secret_file.read_text())
    for text in texts:
        for secret in text.replace("\n", ",").split(","):
            remember_secret(secret.strip())
