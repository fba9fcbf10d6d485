"""Retries, parking, quarantine and the deletion guard (issue 5), against a real app."""

import json

from worker.store import keys


def audit_entries(h, **match):
    entries = [json.loads(fields[b"e"]) for _, fields in h.redis.xrange(keys.AUDIT)]
    return [e for e in entries if all(e.get(k) == v for k, v in match.items())]


def associated_users(h, *ids):
    events = [h.event("app.user_associated", app_id="zs", user_id=i) for i in ids]
    return events + [h.user(i) for i in ids]


def test_transient_failures_are_retried_until_they_succeed(harness):
    h = harness
    h.activate("zs")
    failures = {"left": 3}

    def flaky(environ):
        if environ["REQUEST_METHOD"] == "POST" and failures["left"] > 0:
            failures["left"] -= 1
            return 503, {}, b'{"detail": "try later"}'
        return None

    h.scim.inject(flaky)
    h.send(*associated_users(h, "u1"))
    assert h.users()["u1@example.com"]["active"] is True
    failed = audit_entries(h, name="user_create_provision", outcome="failure")
    assert [e["status"] for e in failed] == [503, 503, 503]
    assert audit_entries(h, name="user_create_provision", outcome="success")


def test_a_permanent_failure_parks_the_key_until_retry(harness):
    h = harness
    h.activate("zs")
    h.scim.inject(lambda env: (400, {}, b'{"detail": "bad userName"}')
                  if env["REQUEST_METHOD"] == "POST" else None)  # fmt: skip
    h.send(*associated_users(h, "u1"))
    assert h.users() == {}
    status = json.loads(h.cli("status", "--json").stdout)
    assert "zs user u1" in status["apps"]["zs"]["parked"]
    h.scim.inject(None)
    h.cli("retry", "zs", "--object", "u1")
    h.wait()
    assert "u1@example.com" in h.users()
    assert json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["parked"] == {}


def test_bad_credentials_pause_the_integration_instead_of_retrying(harness):
    h = harness
    h.activate("zs")
    h.scim.inject(lambda env: (401, {}, b'{"detail": "token revoked"}'))
    h.send(*associated_users(h, "u1", "u2"))
    h.scim.clear_requests()
    h.send(*associated_users(h, "u3"))
    assert h.scim.requests == []  # paused: nothing is sent any more
    status = json.loads(h.cli("status", "--json").stdout)
    assert status["apps"]["zs"]["state"] == "paused"
    assert audit_entries(h, name="idm_integration_update", outcome="failure")
    # The administrator brings a new token: deactivate, reauth, activate; nothing was lost.
    h.scim.inject(None)
    h.cli("apps", "deactivate", "zs")
    h.cli("apps", "reauth", "zs", "--token-file", str(h.token_file))
    h.activate("zs")
    h.wait()
    assert set(h.users()) == {"u1@example.com", "u2@example.com", "u3@example.com"}


def test_deletion_guard_holds_mass_deactivations_until_approved(harness, monkeypatch):
    h = harness
    h.activate("zs")
    ids = [f"u{i}" for i in range(30)]
    h.send(h.group("g1"), h.associate("zs", "g1"), *[h.user(i) for i in ids],
           *[h.member("g1", i) for i in ids])  # fmt: skip
    assert sum(u["active"] for u in h.users().values()) == 30
    h.send(h.associate("zs", "g1", associated=False))  # 30 users lose access at once
    active = sum(u["active"] for u in h.users().values())
    assert active == 10  # the first 20 (the minimum threshold) went, 10 are held
    status = json.loads(h.cli("status", "--json").stdout)
    assert len(status["apps"]["zs"]["held"]) == 10
    assert len(audit_entries(h, outcome="held")) == 10
    h.cli("reject", "zs")
    h.wait()
    assert sum(u["active"] for u in h.users().values()) == 10  # rejected: left as they are
    h.send(h.associate("zs", "g1"))  # access back, then removed again
    h.send(h.associate("zs", "g1", associated=False))
    assert json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["held"]
    h.cli("approve", "zs")
    h.wait()
    assert sum(u["active"] for u in h.users().values()) == 0
