"""The integration's lifecycle through the CLI (issue 4): activate (and its refusals), update,
reauth, deactivate (in the middle of a large sync), remove; each step audited."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.store import apps, audit, keys
from worker.store.mirror import Mirror

U1, U2, U3 = "u1@example.com", "u2@example.com", "u3@example.com"


class _Html(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"<html><body>Welcome to our portal</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[int]:
    """A plain HTTP server answering HTML to everything: not SCIM (and not TLS)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entries(h, name: str, app: str = "zs") -> list[dict]:  # noqa: ANN001
    """The entries of the app's lifecycle (not what the pool learned of it meanwhile)."""
    return [e for e in audit.read(h.redis, app=app, name=name) if e["outcome"] != "learned"]


def activate_refused(h, base_url: str, token_file: str | None = None) -> str:  # noqa: ANN001
    result = h.cli("apps", "activate", "zs", "--base-url", base_url, "--token-file",
                   token_file or str(h.token_file), check=False)  # fmt: skip
    assert result.returncode == 1, result
    assert apps.load(h.redis, "zs") is None  # nothing activated, nothing saved
    [entry] = entries(h, "idm_integration_activate")
    assert entry["outcome"] == "failure" and entry["detail"] in result.stderr
    assert h.scim.token not in result.stderr + result.stdout + entry["detail"]
    return result.stderr


def test_activate_refuses_a_bad_token(harness):
    bad = harness.tmp / "bad.token"
    bad.write_text("not-the-token")
    message = activate_refused(harness, harness.scim.base_url, str(bad))
    assert "refused the token (HTTP 401)" in message


def test_activate_refuses_an_unreachable_url(harness):
    message = activate_refused(harness, f"http://127.0.0.1:{free_port()}/v2")
    assert "unreachable" in message


def test_activate_refuses_a_server_that_is_not_scim(harness, html_server):
    message = activate_refused(harness, f"http://127.0.0.1:{html_server}/scim/v2")
    assert "is not a SCIM 2.0 service" in message


def test_activate_refuses_a_tls_error(harness, html_server):
    message = activate_refused(harness, f"https://127.0.0.1:{html_server}/scim/v2")
    assert "TLS error" in message


def test_activate_then_update_group_management_off_and_on(harness):
    h = harness
    h.activate("zs")
    [entry] = entries(h, "idm_integration_activate")
    assert entry["outcome"] == "success" and "full sync" in entry["detail"]
    h.send(h.user("u1"), h.user("u2"), h.user("u3"), h.group("g1", "eng"), h.member("g1", "u1"),
           h.member("g1", "u2"), h.associate("zs", "g1"))  # fmt: skip
    group_id = h.groups()["eng"]["id"]

    h.scim.clear_requests()
    out = h.cli("apps", "update", "zs", "--no-group-management").stdout
    # (with Bulk, what was learned of its writes is forgotten too, and said between the two)
    assert "group management True -> False;" in out and out.endswith("; 0 reconciles\n")
    h.send(h.member("g1", "u2", added=False), h.member("g1", "u3"))
    assert not any("/Groups" in path for _, path in h.scim.requests)  # left as-is
    assert h.members("eng") == {U1, U2}
    users = h.users()
    assert users[U2]["active"] is False and users[U3]["active"] is True  # users still managed

    h.scim.clear_requests()
    out = h.cli("apps", "update", "zs", "--group-management").stdout
    assert "group management False -> True;" in out and out.endswith("; 1 reconciles\n")
    h.wait()
    assert ("GET", "/v2/Groups") in h.scim.requests  # looked up by name, taken over
    assert ("POST", "/v2/Groups") not in h.scim.requests
    assert h.groups()["eng"]["id"] == group_id
    assert h.members("eng") == {U1, U3}
    update = entries(h, "idm_integration_update")
    assert [e["outcome"] for e in update] == ["success", "success"]


def test_update_reverifies_a_new_base_url_and_applies_the_delete_policy(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.group("g1"), h.member("g1", "u1"), h.associate("zs", "g1"))
    h.send(h.event("user.deleted", user_id="u1"))
    assert h.users()[U1]["active"] is False  # the default policy deactivates

    result = h.cli("apps", "update", "zs", "--base-url", f"http://127.0.0.1:{free_port()}/v2",
                   check=False)  # fmt: skip
    assert result.returncode == 1 and "unreachable" in result.stderr
    assert apps.load(h.redis, "zs").base_url == h.scim.base_url
    assert entries(h, "idm_integration_update")[-1]["outcome"] == "failure"

    h.scim.clear_requests()
    out = h.cli("apps", "update", "zs", "--profile", "generic").stdout
    assert "profile zscaler -> generic;" in out and out.endswith("; 0 reconciles\n")
    assert ("GET", "/v2/ServiceProviderConfig") in h.scim.requests
    h.wait()
    assert h.writes() == []

    out = h.cli("apps", "update", "zs", "--user-delete-policy", "delete").stdout
    assert "1 reconciles" in out
    h.wait()
    assert U1 not in h.users()


def test_reauth_only_while_deactivated(harness):
    h = harness
    h.activate("zs")
    result = h.cli("apps", "reauth", "zs", "--token-file", str(h.token_file), check=False)
    assert result.returncode == 1 and "deactivate" in result.stderr
    assert entries(h, "idm_integration_reauth")[-1]["outcome"] == "failure"

    apps.update(h.redis, "zs", paused="the application refused our credentials")
    h.cli("apps", "deactivate", "zs")
    bad = h.tmp / "bad.token"
    bad.write_text("wrong")
    result = h.cli("apps", "reauth", "zs", "--token-file", str(bad), check=False)
    assert result.returncode == 1 and "refused the token" in result.stderr
    assert apps.load(h.redis, "zs").token_file == str(h.token_file)

    fresh = h.tmp / "fresh.token"
    fresh.write_text(h.scim.token)
    assert "verified" in h.cli("apps", "reauth", "zs", "--token-file", str(fresh)).stdout
    app = apps.load(h.redis, "zs")
    assert app.token_file == str(fresh) and app.paused is None and not app.active
    assert [e["outcome"] for e in entries(h, "idm_integration_reauth")] == [
        "failure", "failure", "success"]  # fmt: skip

    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    assert h.users() == {}  # deactivated: nothing synced
    h.cli("apps", "activate", "zs")  # the known settings are kept
    h.wait()
    assert h.users()[U1]["active"] is True


def test_deactivate_refused_twice_and_remove(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    result = h.cli("apps", "remove", "zs", check=False)
    assert result.returncode == 1 and "deactivate it first" in result.stderr
    h.cli("apps", "deactivate", "zs")
    result = h.cli("apps", "deactivate", "zs", check=False)
    assert result.returncode == 1 and "not active" in result.stderr
    assert [e["outcome"] for e in entries(h, "idm_integration_delete")] == [
        "failure", "success", "failure"]  # fmt: skip
    # what a Bulk app's read-backs leave (its claims, the writes taken as sent, re-reads)
    h.redis.set(keys.app_bulk_check("zs", "POST /Users"), 1)
    h.redis.sadd(keys.app_bulk_unchecked("zs", "PATCH /Groups"), "group:g1")
    Mirror(h.redis, "zs").reread_later("user", ["u1"])
    h.cli("apps", "remove", "zs")
    assert apps.load(h.redis, "zs") is None
    assert Mirror(h.redis, "zs").counts() == (0, 0)
    left = [*h.redis.scan_iter(match="prov:app:zs*"), *h.redis.scan_iter(match="prov:mirror:zs:*")]
    assert left == [], left  # nothing of the app is left in Redis
    assert h.users()[U1]["active"] is True  # nothing removed from the application


def test_deactivation_in_the_middle_of_a_large_sync(harness):
    """Deactivated while 300 users are being created: no call after `deactivate` returns,
    every user in the app is fully written and in the mirror; reactivation finishes the job
    without duplicates."""
    h = harness
    count = 300

    def slow(environ):  # noqa: ANN001, ANN202
        time.sleep(0.02)
        return None

    h.activate("zs")
    h.scim.inject(slow)
    users = [h.user(f"u{i}") for i in range(count)]
    members = [h.member("g1", f"u{i}") for i in range(count)]
    h.send(*users, h.group("g1"), *members, h.associate("zs", "g1"), wait=False)
    mirror = Mirror(h.redis, "zs")
    deadline = time.monotonic() + 60
    while mirror.counts()[0] < 40:
        assert time.monotonic() < deadline, "the sync did not start"
        time.sleep(0.05)

    out = h.cli("apps", "deactivate", "zs").stdout
    returned = len(h.scim.requests)
    assert "syncing stopped" in out
    # Once nothing is queued or in flight, no call can come any more: the calls the pool sent
    # after `deactivate` returned are all there is.
    h.wait()
    assert len(h.scim.requests) - returned <= 4, "calls were sent after deactivation"

    held = {e.remote_id: e.attributes for e in map(mirror.user, _mirror_ids(mirror)) if e}
    in_app = {u["id"]: u for u in h.scim.users()}
    assert 40 <= len(in_app) < count
    assert set(in_app) == set(held)  # nothing written that the mirror does not know
    for remote_id, user in in_app.items():
        assert user["active"] is True and user["userName"] == held[remote_id]["userName"]

    h.scim.inject(None)
    h.cli("apps", "activate", "zs")
    h.wait(timeout=120)
    names = [u["userName"] for u in h.scim.users()]
    assert len(names) == count == len(set(names))
    assert len(h.members("g1")) == count


def _mirror_ids(mirror: Mirror) -> list[str]:
    return mirror.known_ids("user")
