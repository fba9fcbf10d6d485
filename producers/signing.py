"""Webhook signatures: HMAC-SHA256 over ``"<t>.<raw body>"`` (DESIGN §7).

The header is ``X-Provisioner-Signature: t=<unix seconds>,v1=<hex>``. Several secrets may be
configured at once (comma-separated) so that a secret can be rotated without downtime: the first
one signs, any of them verifies. Secrets are never logged nor put in an error message.

``python -m producers.signing [--secret-file F] < body.json`` (``provisioner sign``) prints the
header for a body, ready for ``curl -H``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HEADER = "X-Provisioner-Signature"
SCHEME = "v1"
WINDOW = 300  # seconds a signature stays valid either side of its timestamp
MAX_SIGNATURES = 8  # v1 entries accepted in one header (a sender may sign with several secrets)

SECRET_ENV = "PROVISIONER_WEBHOOK_SECRET"
SECRET_FILE_ENV = "PROVISIONER_WEBHOOK_SECRET_FILE"

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_SECONDS = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """A refused signature; ``reason`` is safe to send back to the client."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class SecretsError(RuntimeError):
    """The secrets cannot be loaded (the message never holds a secret)."""


@dataclass(frozen=True)
class Signature:
    """A verified signature: its timestamp and the canonical (lowercase) hex digest."""

    timestamp: int
    digest: str


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
    if abs(now - timestamp) > window:
        raise SignatureError(f"signature expired: timestamp outside the {window} s window")
    return Signature(timestamp, matched)


def verify(
    header: str | None, body: bytes, secrets: Sequence[bytes], now: float, window: int = WINDOW
) -> None:
    """Raise ``SignatureError`` unless ``header`` is a valid, fresh signature of ``body``."""
    check(header, body, secrets, now, window)


def split_secrets(text: str) -> list[bytes]:
    """Secrets from a comma- (or newline-) separated text, blanks dropped."""
    parts = (p.strip() for p in re.split(r"[,\n]", text))
    return [p.encode() for p in parts if p]


def load_secrets(environ: dict[str, str] | None = None) -> list[bytes]:
    """The configured secrets: ``PROVISIONER_WEBHOOK_SECRET`` then ``…_SECRET_FILE``'s content.

    Both are comma-separated lists; the first secret is the one that signs.
    """
    env = os.environ if environ is None else environ
    secrets = split_secrets(env.get(SECRET_ENV, ""))
    path = env.get(SECRET_FILE_ENV, "").strip()
    if path:
        try:
            secrets += split_secrets(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as error:
            name = error.__class__.__name__
            raise SecretsError(f"cannot read {SECRET_FILE_ENV} ({path}): {name}") from None
    return list(dict.fromkeys(secrets))


def main(argv: Sequence[str] | None = None) -> int:
    """``provisioner sign``: print the signature header of the body read on stdin."""
    parser = argparse.ArgumentParser(
        prog="provisioner sign",
        description=f"Print the {HEADER} header for the request body read on stdin.",
    )
    parser.add_argument(
        "--secret-file",
        help=f"file holding the secret (default: ${SECRET_ENV} "
        f"or ${SECRET_FILE_ENV}; the first secret signs)",
    )
    parser.add_argument("--timestamp", type=int, help="unix seconds to sign with (default: now)")
    parser.add_argument("--value", action="store_true", help="print the value only")
    args = parser.parse_args(argv)
    env = {SECRET_FILE_ENV: args.secret_file} if args.secret_file else None
    try:
        secrets = load_secrets(env)
    except SecretsError as error:
        parser.exit(2, f"provisioner sign: {error}\n")
    if not secrets:
        parser.exit(2, f"provisioner sign: no secret: set {SECRET_ENV} or use --secret-file\n")
    body = sys.stdin.buffer.read()
    timestamp = int(time.time()) if args.timestamp is None else args.timestamp
    value = sign(secrets[0], body, timestamp)
    print(value if args.value else f"{HEADER}: {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
