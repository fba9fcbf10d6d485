"""Error reports (issue 4): with a capturing transport, no token or secret appears in any event,
breadcrumb or local variable, and the reports stay useful (frames, harmless variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker.observability import init_sentry, scrub_text, sensitive

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-9f8e7d6c5b4a-s3cr3t"
SECRET = "whsec-0a1b2c3d4e5f"

# Runs in its own interpreter: sentry_sdk.init patches libraries for the whole process.
SCRIPT = r"""
import logging, os, sys
import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import Transport
from worker.observability import init_sentry

TOKEN, SECRET, OUT = os.environ["TEST_TOKEN"], os.environ["TEST_SECRET"], sys.argv[1]


class Capture(Transport):
    def __init__(self):
        super().__init__()
        self.envelopes = []

    def capture_envelope(self, envelope):
        self.envelopes.append(envelope)


transport = Capture()
assert init_sentry("worker", dsn="https://public@sentry.invalid/1", transport=transport)
assert sentry_sdk.get_client().get_integration(CeleryIntegration) is not None
log = logging.getLogger("provisioner.reconcile")
log.warning("sending with Authorization: Bearer %s", TOKEN)
sentry_sdk.add_breadcrumb(category="http", message="PUT /Users/1",
                          data={"headers": {"Authorization": "Bearer " + TOKEN}, "token": TOKEN})


def call_app(token):
    scim_token = token
    headers = {"Authorization": "Bearer " + token, "Accept": "application/scim+json"}
    settings = {"token_file": "/run/secrets/scim.token", "bearer": token}
    raise RuntimeError("the application refused " + token)


def verify_webhook(body):
    signature = "t=1,v1=" + SECRET
    raise ValueError("no secret matches: " + SECRET)


try:
    call_app(TOKEN)
except RuntimeError:
    sentry_sdk.capture_exception()
try:
    verify_webhook(b"{}")
except ValueError:
    log.exception("webhook refused a request")
sentry_sdk.capture_message("retrying with token=" + TOKEN)
sentry_sdk.flush()
with open(OUT, "wb") as out:
    for envelope in transport.envelopes:
        out.write(envelope.serialize() + b"\n")
"""


def test_no_secret_in_any_captured_event(tmp_path):
    out = tmp_path / "envelopes"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROVISIONER_WEBHOOK_SECRET": SECRET,
           "TEST_TOKEN": TOKEN, "TEST_SECRET": SECRET}  # fmt: skip
    env.pop("SENTRY_DSN", None)
    subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=ROOT, check=True,
                   timeout=60)  # fmt: skip
    payload = out.read_bytes()
    items = [json.loads(line) for line in payload.splitlines() if line.startswith(b"{")]
    events = [i for i in items if "exception" in i or "logentry" in i or "message" in i]
    assert len(events) >= 3
    assert TOKEN.encode() not in payload
    assert SECRET.encode() not in payload
    assert b"[Filtered]" in payload
    # still useful: the frames, their harmless variables and the breadcrumbs are there
    assert b"call_app" in payload and b"verify_webhook" in payload
    assert b"/run/secrets/scim.token" in payload and b"application/scim+json" in payload
    assert b"PUT /Users/1" in payload


def test_scrubbing_rules():
    assert scrub_text(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer [Filtered]"
    assert scrub_text(f"sent bearer {TOKEN}!") == "sent bearer [Filtered]!"
    assert scrub_text(f'{{"token": "{TOKEN}"}}') == '{"token": "[Filtered]"}'
    assert scrub_text("a b c", [TOKEN]) == "a b c"
    assert scrub_text(f"x{TOKEN}y", [TOKEN]) == "x[Filtered]y"
    assert all(map(sensitive, ("token", "scim_token", "Authorization", "X-Provisioner-Signature",
                               "webhook_secret", "SENTRY_DSN")))  # fmt: skip
    assert not any(map(sensitive, ("token_file", "secret_path", "user_id", "detail")))


def test_off_without_a_dsn(monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert init_sentry("worker") is False
