"""Webhook signatures: ours, and the Standard Webhooks convention, both HMAC-SHA256.

Two schemes verify a request; a sender uses either:

- ``X-Provisioner-Signature: t=<unix seconds>,v1=<hex>``, the hex HMAC-SHA256 of
  ``"<t>.<raw body>"``; several ``v1=`` entries may be sent.
- Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``, ``webhook-timestamp``
  (unix seconds) and ``webhook-signature: v1,<base64>``, the base64 HMAC-SHA256 of
  ``"<id>.<timestamp>.<raw body>"``; several space-separated signatures may be sent, and
  those of other versions (``v1a,…``) are skipped.

Both allow 5 minutes either side of the timestamp. Several secrets may be configured at once
(comma-separated) so that a secret can be rotated without downtime: the first one signs, any of
them verifies, for either scheme. A configured secret is the HMAC key as written (its UTF-8
bytes), or, written ``whsec_<base64>`` as Standard Webhooks senders hand them out, the bytes
that the base64 encodes. The two spellings of one key are the same secret: the raw secret
``s3cret`` and ``whsec_czNjcmV0`` (``printf %s s3cret | base64``) verify the same signatures.
Secrets are never logged nor put in an error message.

We implement the Standard Webhooks scheme here rather than call the ``standardwebhooks``
package (MIT, no dependencies): its verifier lets malformed headers and non-UTF-8 bodies out
as ``ValueError`` and ``UnicodeDecodeError`` (a 500, not a 401), checks one secret per object,
and does not say which check failed. The tests check interoperability with its signer and
verifier, both ways.

``python -m producers.signing [--secret-file F] [--standard] < body.json`` (``provisioner
sign``) prints the headers for a body, ready for ``curl -H``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from worker import config

HEADER = "X-Provisioner-Signature"
SCHEME = "v1"
WINDOW = 300  # seconds a signature stays valid either side of its timestamp
MAX_SIGNATURES = 8  # v1 entries accepted in one header (a sender may sign with several secrets)

# Standard Webhooks
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
STANDARD_HEADERS = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
SECRET_PREFIX = "whsec_"
MAX_ID_LENGTH = 256
MAX_ENTRIES = 16  # signatures of any version in one webhook-signature header

SECRET_ENV = "PROVISIONER_WEBHOOK_SECRET"
SECRET_FILE_ENV = "PROVISIONER_WEBHOOK_SECRET_FILE"

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SECONDS = re.compile(r"[0-9]{1,12}")
_BASE64_DIGEST = re.compile(r"[A-Za-z0-9+/]{43}=?")  # 32 bytes (the padding may be left out)
_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_LENGTH}}}")  # printable ASCII, no space


class SignatureError(Exception):
    """A refused signature; ``reason`` is safe to send back, ``header`` names the header."""

    def __init__(self, reason: str, header: str = HEADER):
        self.reason = reason
        self.header = header
        super().__init__(reason)


class SecretsError(RuntimeError):
    """The secrets cannot be loaded (the message never holds a secret)."""


@dataclass(frozen=True)
class Signature:
    """A verified signature: its timestamp and the canonical (lowercase) hex digest."""

    timestamp: int
    digest: str


# --- X-Provisioner-Signature ---------------------------------------------------------------------


def digest(secret: bytes, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value ``t=<timestamp>,v1=<hex>`` for ``body``."""
    return f"t={timestamp},{SCHEME}={digest(secret, body, timestamp)}"


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """Split a header into its timestamp and its v1 digests; raise ``SignatureError``."""
    if header is None or not header.strip():
        raise SignatureError("missing signature")
    timestamps: list[str] = []
    digests: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header: expected t=<seconds>,v1=<hex>")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            digests.append(value)
    if len(timestamps) != 1 or not _SECONDS.fullmatch(timestamps[0]):
        raise SignatureError("malformed signature header: expected one t=<unix seconds>")
    if not digests or len(digests) > MAX_SIGNATURES:
        raise SignatureError("malformed signature header: expected v1=<hex>")
    if not all(_HEX.fullmatch(d) for d in digests):
        raise SignatureError("malformed signature header: v1 must be 64 hex digits")
    return int(timestamps[0]), [d.lower() for d in digests]


def check(
    header: str | None, body: bytes, secrets: Sequence[bytes], now: float, window: int = WINDOW
) -> Signature:
    """Verify ``header`` against ``body`` and return the signature that matched.

    Every configured secret is tried (rotation); digests are compared in constant time.
    """
    timestamp, given = parse_header(header)
    matched = None
    for secret in secrets:
        expected = digest(secret, body, timestamp)
        for candidate in given:
            if hmac.compare_digest(expected, candidate):
                matched = expected
    if matched is None:
        raise SignatureError("signature does not match the body (wrong secret or altered body)")
    _check_window(timestamp, now, window, HEADER)
    return Signature(timestamp, matched)


def verify(
    header: str | None, body: bytes, secrets: Sequence[bytes], now: float, window: int = WINDOW
) -> None:
    """Raise ``SignatureError`` unless ``header`` is a valid, fresh signature of ``body``."""
    check(header, body, secrets, now, window)


def _check_window(timestamp: int, now: float, window: int, header: str) -> None:
    if abs(now - timestamp) > window:
        reason = f"signature expired: timestamp outside the {window} s window"
        raise SignatureError(reason, header)


# --- Standard Webhooks ---------------------------------------------------------------------------


def standard_digest(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    """The HMAC-SHA256 of ``"<id>.<timestamp>.<body>"`` (the id as the header's bytes)."""
    signed = msg_id.encode("latin-1") + b".%d." % timestamp + body
    return hmac.new(secret, signed, hashlib.sha256).digest()


def standard_sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,<base64>`` for ``body``."""
    return "v1," + base64.b64encode(standard_digest(secret, msg_id, timestamp, body)).decode()


def standard_headers(secret: bytes, body: bytes, timestamp: int, msg_id: str) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    signature = standard_sign(secret, msg_id, timestamp, body)
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature}


def parse_standard(
    msg_id: str | None, timestamp: str | None, signature: str | None
) -> tuple[str, int, list[bytes]]:
    """The id, timestamp and v1 digests of the three headers; raise ``SignatureError``."""
    for name, value in zip(STANDARD_HEADERS, (msg_id, timestamp, signature), strict=True):
        if value is None or not value.strip():
            raise SignatureError(f"missing {name} header (Standard Webhooks)", name)
    assert msg_id is not None and timestamp is not None and signature is not None
    msg_id, timestamp = msg_id.strip(), timestamp.strip()
    if not _ID.fullmatch(msg_id):
        reason = f"malformed {ID_HEADER}: 1 to {MAX_ID_LENGTH} printable ASCII characters"
        raise SignatureError(reason, ID_HEADER)
    if not _SECONDS.fullmatch(timestamp):
        raise SignatureError(
            f"malformed {TIMESTAMP_HEADER}: expected unix seconds", TIMESTAMP_HEADER
        )
    entries = signature.split()
    digests: list[bytes] = []
    for entry in entries[: MAX_ENTRIES + 1]:
        version, sep, value = entry.partition(",")
        if not sep:
            reason = f"malformed {SIGNATURE_HEADER}: expected v1,<base64> (space-separated)"
            raise SignatureError(reason, SIGNATURE_HEADER)
        if version != "v1":
            continue  # another scheme (v1a: asymmetric), not ours to check
        if not _BASE64_DIGEST.fullmatch(value):
            reason = f"malformed {SIGNATURE_HEADER}: v1 must be the base64 of 32 bytes"
            raise SignatureError(reason, SIGNATURE_HEADER)
        digests.append(base64.b64decode(value[:43] + "="))
    if not digests or len(digests) > MAX_SIGNATURES or len(entries) > MAX_ENTRIES:
        reason = f"malformed {SIGNATURE_HEADER}: expected 1 to {MAX_SIGNATURES} v1,<base64>"
        raise SignatureError(reason, SIGNATURE_HEADER)
    return msg_id, int(timestamp), digests


def check_standard(
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    secrets: Sequence[bytes],
    now: float,
    window: int = WINDOW,
) -> Signature:
    """Verify Standard Webhooks headers against ``body``; the signature that matched (hex).

    Every configured secret is tried against every v1 signature, in constant time.
    """
    msg_id, stamp, given = parse_standard(msg_id, timestamp, signature)
    matched = None
    for secret in secrets:
        expected = standard_digest(secret, msg_id, stamp, body)
        for candidate in given:
            if hmac.compare_digest(expected, candidate):
                matched = expected
    if matched is None:
        reason = "signature does not match the body (wrong secret, altered body or webhook-id)"
        raise SignatureError(reason, SIGNATURE_HEADER)
    _check_window(stamp, now, window, TIMESTAMP_HEADER)
    return Signature(stamp, matched.hex())


# --- secrets -------------------------------------------------------------------------------------


def secret_key(text: str) -> bytes:
    """The HMAC key a configured secret stands for: ``whsec_<base64>`` decoded, else its bytes."""
    if not text.startswith(SECRET_PREFIX):
        return text.encode()
    encoded = text[len(SECRET_PREFIX) :]
    try:  # padding may be left out, as Standard Webhooks libraries allow
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsError(f"a {SECRET_PREFIX} secret is not valid base64") from None
    if not key:
        raise SecretsError(f"a {SECRET_PREFIX} secret is empty")
    return key


def split_secrets(text: str) -> list[bytes]:
    """Secrets from a comma- (or newline-) separated text, blanks dropped, ``whsec_`` decoded."""
    parts = (p.strip() for p in re.split(r"[,\n]", text))
    return [secret_key(p) for p in parts if p]


def load_secrets(environ: Mapping[str, str] | None = None) -> list[bytes]:
    """The configured secrets: ``PROVISIONER_WEBHOOK_SECRET`` then ``…_SECRET_FILE``'s content,
    from the settings (read now), or from ``environ`` when given (the same two names).

    Both are comma-separated lists; the first secret is the one that signs.
    """
    if environ is None:
        conf = config.load()
        text, path = conf.webhook_secret_text, str(conf.webhook_secret_file or "")
    else:
        text, path = environ.get(SECRET_ENV, ""), environ.get(SECRET_FILE_ENV, "")
    secrets = split_secrets(text)
    path = path.strip()
    if path:
        try:
            secrets += split_secrets(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as error:
            name = error.__class__.__name__
            raise SecretsError(f"cannot read {SECRET_FILE_ENV} ({path}): {name}") from None
    return list(dict.fromkeys(secrets))


@click.command(
    name="sign",
    short_help="print the signature header for a body read on stdin",
    help=f"Print the {HEADER} header (or, with --standard, the Standard Webhooks headers) for "
    "the request body read on stdin.",
)
@click.option(
    "--secret-file",
    help=f"file holding the secret (default: ${SECRET_ENV} or ${SECRET_FILE_ENV}; the first "
    "secret signs)",
)
@click.option("--timestamp", type=int, help="unix seconds to sign with (default: now)")
@click.option("--value", "value_only", is_flag=True, help="print the value only")
@click.option(
    "--standard",
    is_flag=True,
    help="print the Standard Webhooks headers (webhook-id, -timestamp, -signature)",
)
@click.option("--id", "msg_id", help="the webhook-id to sign with --standard (default: a new one)")
def sign_command(secret_file: str | None, timestamp: int | None, value_only: bool,
                 standard: bool, msg_id: str | None) -> int:  # fmt: skip
    """``provisioner sign``: print the signature header(s) of the body read on stdin; exit 2
    without a usable secret."""
    try:
        secrets = load_secrets({SECRET_FILE_ENV: secret_file} if secret_file else None)
    except (SecretsError, config.SettingsError) as error:
        return _refuse(str(error))
    if not secrets:
        return _refuse(f"no secret: set {SECRET_ENV} or use --secret-file")
    if standard and msg_id and not _ID.fullmatch(msg_id):
        return _refuse(f"--id: 1 to {MAX_ID_LENGTH} printable ASCII")
    body = sys.stdin.buffer.read()
    timestamp = int(time.time()) if timestamp is None else timestamp
    if standard:
        headers = standard_headers(secrets[0], body, timestamp, msg_id or f"msg_{uuid.uuid4().hex}")
        for name, value in headers.items():
            print(value if value_only else f"{name}: {value}")
        return 0
    value = sign(secrets[0], body, timestamp)
    print(value if value_only else f"{HEADER}: {value}")
    return 0


def _refuse(problem: str) -> int:
    print(f"provisioner sign: {problem}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m producers.signing``: ``provisioner sign`` on its own; returns the exit code."""
    try:
        return sign_command.main(args=argv, prog_name="provisioner sign", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        return error.exit_code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
