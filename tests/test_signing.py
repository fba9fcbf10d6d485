"""HMAC signatures of webhook requests: signing, verification, secrets, ``provisioner sign``;
the Standard Webhooks scheme checked against the ``standardwebhooks`` package, both ways."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from producers import signing
from producers.signing import SignatureError, load_secrets, sign, verify

SECRET = b"new-secret-0123456789"
OLD = b"old-secret-9876543210"
BODY = b'{"id":"evt-1"}'
NOW = 1_800_000_000


def reason(header: str | None, body: bytes = BODY, secrets: list[bytes] | None = None,
           now: float = NOW) -> str:  # fmt: skip
    with pytest.raises(SignatureError) as caught:
        verify(header, body, secrets or [SECRET], now)
    return caught.value.reason


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW) == f"t=1800000000,v1={expected}"


def test_a_valid_signature_verifies_within_the_window() -> None:
    header = sign(SECRET, BODY, NOW)
    verify(header, BODY, [SECRET], NOW)
    verify(header, BODY, [SECRET], NOW + 300)
    verify(header, BODY, [SECRET], NOW - 300)  # a sender's clock slightly ahead


def test_check_returns_the_canonical_digest() -> None:
    header = sign(SECRET, BODY, NOW)
    upper = header.replace(header.split("v1=")[1], header.split("v1=")[1].upper())
    result = signing.check(upper, BODY, [SECRET], NOW)
    assert result == signing.Signature(NOW, header.split("v1=")[1])


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing(header: str | None) -> None:
    assert reason(header) == "missing signature"


@pytest.mark.parametrize("header", [
    "garbage",
    "v1=" + "a" * 64,
    "t=abc,v1=" + "a" * 64,
    "t=-5,v1=" + "a" * 64,
    "t=1,t=2,v1=" + "a" * 64,
    f"t={NOW}",
    f"t={NOW},v1=xyz",
    f"t={NOW},v1=" + "a" * 63,
    f"t={NOW}," + ",".join(["v1=" + "a" * 64] * 9),
])  # fmt: skip
def test_malformed(header: str) -> None:
    assert reason(header).startswith(("malformed", "missing"))


def test_wrong_secret() -> None:
    assert "does not match" in reason(sign(b"another", BODY, NOW))


def test_tampered_body() -> None:
    assert "does not match" in reason(sign(SECRET, BODY, NOW), body=BODY + b" ")


def test_tampered_timestamp() -> None:
    digest = sign(SECRET, BODY, NOW).split("v1=")[1]
    assert "does not match" in reason(f"t={NOW + 1},v1={digest}")


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_expired(offset: int) -> None:
    assert "expired" in reason(sign(SECRET, BODY, NOW), now=NOW + offset)


def test_rotation_any_secret_verifies() -> None:
    for secret in (OLD, SECRET):
        verify(sign(secret, BODY, NOW), BODY, [SECRET, OLD], NOW)
    assert "does not match" in reason(sign(OLD, BODY, NOW), secrets=[SECRET])


def test_several_v1_entries_and_unknown_schemes() -> None:
    header = f"{sign(OLD, BODY, NOW)},v1={'0' * 64},v0=ignored"
    verify(header, BODY, [OLD], NOW)


def test_load_secrets_from_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file-1, from-file-2\n")
    env = {signing.SECRET_ENV: " a-secret ,b-secret,,", signing.SECRET_FILE_ENV: str(path)}
    assert load_secrets(env) == [b"a-secret", b"b-secret", b"from-file-1", b"from-file-2"]
    assert load_secrets({}) == []
    assert load_secrets({signing.SECRET_ENV: "x,x"}) == [b"x"]


def test_an_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(signing.SecretsError, match="PROVISIONER_WEBHOOK_SECRET_FILE"):
        load_secrets({signing.SECRET_FILE_ENV: str(tmp_path / "missing")})


def test_errors_never_hold_the_secret() -> None:
    for header in (sign(b"wrong", BODY, NOW), "bad", None):
        with pytest.raises(SignatureError) as caught:
            verify(header, BODY, [SECRET], NOW)
        assert SECRET.decode() not in str(caught.value)


def test_sign_command_prints_a_header_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("new-secret-0123456789,old-secret-9876543210")
    done = subprocess.run(
        [sys.executable, "-m", "producers.signing", "--secret-file", str(path)],
        input=BODY, capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    name, _, value = done.stdout.decode().strip().partition(": ")
    assert name == signing.HEADER
    timestamp = int(value.split(",")[0][2:])
    verify(value, BODY, [SECRET], timestamp)  # signed with the first secret


def test_sign_command_without_a_secret_fails_clearly() -> None:
    done = subprocess.run([sys.executable, "-m", "producers.signing"], input=BODY,
                          capture_output=True, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 2
    assert b"no secret" in done.stderr


def test_sign_main_value_and_timestamp(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv(signing.SECRET_ENV, "new-secret-0123456789")
    monkeypatch.delenv(signing.SECRET_FILE_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BODY)))
    assert signing.main(["--value", "--timestamp", str(NOW)]) == 0
    assert capsys.readouterr().out.strip() == sign(SECRET, BODY, NOW)


# --- Standard Webhooks ---------------------------------------------------------------------------

MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def standard_reason(headers: dict[str, str], body: bytes = BODY,
                    secrets: list[bytes] | None = None, now: float = NOW) -> str:  # fmt: skip
    values = [headers.get(name) for name in signing.STANDARD_HEADERS]
    with pytest.raises(SignatureError) as caught:
        signing.check_standard(*values, body, secrets or [SECRET], now)
    return caught.value.reason


def lib_headers(secret: str | bytes, body: bytes = BODY, msg_id: str = MSG_ID,
                timestamp: int = NOW) -> dict[str, str]:  # fmt: skip
    """The headers the ``standardwebhooks`` package's signer sends."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def check_headers(
    headers: dict[str, str],
    body: bytes = BODY,
    secrets: list[bytes] | None = None,
    now: float = NOW,
) -> signing.Signature:
    values = [headers.get(name) for name in signing.STANDARD_HEADERS]
    return signing.check_standard(*values, body, secrets or [SECRET], now)


def test_standard_signature_is_base64_hmac_over_id_timestamp_body() -> None:
    expected = hmac.new(SECRET, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    header = signing.standard_sign(SECRET, MSG_ID, NOW, BODY)
    assert header == "v1," + base64.b64encode(expected).decode()
    headers = signing.standard_headers(SECRET, BODY, NOW, MSG_ID)
    assert headers == {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW),
                       "webhook-signature": header}  # fmt: skip
    assert check_headers(headers) == signing.Signature(NOW, expected.hex())


def test_the_standard_package_signer_verifies_here_with_whsec_or_raw_secrets() -> None:
    """A sender using ``standardwebhooks`` with the ``whsec_`` secret, or with the raw bytes of a
    secret configured as is, is accepted; both spellings of one key load as the same key."""
    key = b"\x00\x01binary key \xff" + bytes(range(20))
    whsec = "whsec_" + base64.b64encode(key).decode()
    secrets = load_secrets({signing.SECRET_ENV: f"{whsec},{SECRET.decode()}"})
    assert secrets == [key, SECRET]
    check_headers(lib_headers(whsec), secrets=secrets)
    check_headers(lib_headers(key), secrets=secrets)
    check_headers(lib_headers(SECRET), secrets=secrets)  # the raw secret we already had
    raw_as_whsec = "whsec_" + base64.b64encode(SECRET).decode()
    check_headers(lib_headers(raw_as_whsec), secrets=secrets)
    assert load_secrets({signing.SECRET_ENV: raw_as_whsec}) == [SECRET]
    assert "does not match" in standard_reason(lib_headers(b"another key"), secrets=secrets)


def test_the_standard_package_verifies_our_signatures() -> None:
    now = int(time.time())  # the package reads the clock itself
    headers = signing.standard_headers(SECRET, BODY, now, MSG_ID)
    assert Webhook(SECRET).verify(BODY, headers) == {"id": "evt-1"}
    whsec = "whsec_" + base64.b64encode(SECRET).decode()
    assert Webhook(whsec).verify(BODY, headers) == {"id": "evt-1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(BODY, headers)


def test_standard_rotation_several_signatures_and_other_versions() -> None:
    """Space-separated signatures: any one made with any configured secret verifies; a ``v1a``
    (asymmetric) entry is not ours to check and is skipped."""
    old = signing.standard_sign(OLD, MSG_ID, NOW, BODY)
    wrong = signing.standard_sign(b"wrong", MSG_ID, NOW, BODY)
    header = f"v1a,{'A' * 86}== {wrong} {old}"
    check_headers({"webhook-id": MSG_ID, "webhook-timestamp": str(NOW),
                   "webhook-signature": header}, secrets=[SECRET, OLD])  # fmt: skip
    unpadded = old.rstrip("=")
    check_headers({"webhook-id": MSG_ID, "webhook-timestamp": str(NOW),
                   "webhook-signature": unpadded}, secrets=[OLD])  # fmt: skip
    assert "does not match" in standard_reason(lib_headers(OLD), secrets=[SECRET])


def test_standard_body_id_and_timestamp_are_all_signed() -> None:
    headers = lib_headers(SECRET)
    assert "does not match" in standard_reason(headers, body=BODY + b" ")
    assert "does not match" in standard_reason(headers | {"webhook-id": "msg_other"})
    assert "does not match" in standard_reason(headers | {"webhook-timestamp": str(NOW + 1)})


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_standard_expired(offset: int) -> None:
    reason = standard_reason(lib_headers(SECRET), now=NOW + offset)
    assert "expired" in reason
    check_headers(lib_headers(SECRET), now=NOW + (300 if offset > 0 else -300))


@pytest.mark.parametrize(("change", "header", "words"), [
    ({"webhook-id": None}, "webhook-id", "missing webhook-id"),
    ({"webhook-timestamp": None}, "webhook-timestamp", "missing webhook-timestamp"),
    ({"webhook-signature": " "}, "webhook-signature", "missing webhook-signature"),
    ({"webhook-id": "msg 1"}, "webhook-id", "malformed webhook-id"),
    ({"webhook-id": "x" * 257}, "webhook-id", "malformed webhook-id"),
    ({"webhook-id": "msg-é"}, "webhook-id", "malformed webhook-id"),
    ({"webhook-timestamp": "1e9"}, "webhook-timestamp", "malformed webhook-timestamp"),
    ({"webhook-timestamp": "-5"}, "webhook-timestamp", "malformed webhook-timestamp"),
    ({"webhook-signature": "v1"}, "webhook-signature", "expected v1,<base64>"),
    ({"webhook-signature": "v1,!!!"}, "webhook-signature", "base64 of 32 bytes"),
    ({"webhook-signature": "v1,AAAA"}, "webhook-signature", "base64 of 32 bytes"),
    ({"webhook-signature": "v1a,AAAA"}, "webhook-signature", "expected 1 to 8"),
    ({"webhook-signature": " ".join(["v1," + "A" * 43 + "="] * 9)}, "webhook-signature",
     "expected 1 to 8"),
    ({"webhook-signature": " ".join(["v2,x"] * 17)}, "webhook-signature", "expected 1 to 8"),
])  # fmt: skip
def test_standard_malformed_headers_name_the_header(
    change: dict[str, str | None], header: str, words: str
) -> None:
    headers = {k: v for k, v in (lib_headers(SECRET) | change).items() if v is not None}
    values = [headers.get(name) for name in signing.STANDARD_HEADERS]
    with pytest.raises(SignatureError) as caught:
        signing.check_standard(*values, BODY, [SECRET], NOW)
    assert words in caught.value.reason and caught.value.header == header


@pytest.mark.parametrize("text", ["whsec_!!!notbase64", "whsec_", "whsec_===="])
def test_a_bad_whsec_secret_is_a_clear_error_without_the_secret(text: str) -> None:
    with pytest.raises(signing.SecretsError, match="whsec_") as caught:
        load_secrets({signing.SECRET_ENV: f"fine-secret,{text}"})
    assert "notbase64" not in str(caught.value)


def test_sign_command_standard_headers_verify(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("whsec_" + base64.b64encode(SECRET).decode())
    done = subprocess.run(
        [sys.executable, "-m", "producers.signing", "--secret-file", str(path), "--standard",
         "--id", MSG_ID],
        input=BODY, capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    headers = dict(line.split(": ", 1) for line in done.stdout.decode().splitlines())
    assert set(headers) == set(signing.STANDARD_HEADERS) and headers["webhook-id"] == MSG_ID
    assert Webhook(SECRET).verify(BODY, headers) == {"id": "evt-1"}
