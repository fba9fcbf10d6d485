"""HMAC signatures of webhook requests: signing, verification, secrets, ``provisioner sign``."""

from __future__ import annotations

import hashlib
import hmac
import io
import subprocess
import sys
from pathlib import Path

import pytest

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
