"""Fewer calls than one lookup per object (issue 10): activating an app lists its users and
groups in pages and seeds the mirror, so the initial provisioning sends no lookup; the
listing falls back to lookups where the app holds far more than we would look up; its
requests keep to the app's rate limit. Counted on the real SCIM application's request log."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.support import drift
from worker.store import audit, keys
from worker.store.mirror import Mirror

U1, U2, U3 = "u1@example.com", "u2@example.com", "u3@example.com"


class RequestLog:
    """An ``inject`` hook that logs each request's arrival with its query string."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), environ["REQUEST_METHOD"],
                               environ["PATH_INFO"], environ.get("QUERY_STRING", "")))  # fmt: skip

    def lookups(self) -> list[str]:
        return [q for _, m, _, q in self.calls if m == "GET" and "filter=" in q]

    def pages(self, resource: str) -> list[tuple[float, str]]:
        """The listing's pages of /Users or /Groups (the activation's check reads count=1)."""
        return [(t, q) for t, m, p, q in self.calls
                if m == "GET" and p.endswith(resource) and "filter=" not in q
                and "count=1&" not in q + "&"]  # fmt: skip

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for _, m, p, _ in self.calls if m != "GET"]


def directory(h) -> list[dict]:  # noqa: ANN001
    """Three users in two groups, both associated with the app, before it is activated."""
    return [
        h.user("u1", department="Eng"), h.user("u2"), h.user("u3"),
        h.group("g1", "eng"), h.group("g2", "ops"),
        h.member("g1", "u1"), h.member("g1", "u2"), h.member("g2", "u3"),
        h.associate("zs", "g1"), h.associate("zs", "g2"),
    ]  # fmt: skip


def test_activation_lists_the_app_and_sends_no_lookup(harness):
    """u2 exists in the app under another case and "ops" exists: adopted and taken over from
    the listing (one page each); u1, u3 and "eng" are created without a lookup."""
    h = harness
    h.send(*directory(h))  # the app is not active yet: nothing is sent
    theirs = drift.add_user(h.scim, "someone@example.com")  # not ours: left alone
    u2 = drift.add_user(h.scim, "U2@Example.com")
    ops = drift.add_group(h.scim, "ops", [theirs])
    log = RequestLog()
    h.scim.inject(log)
    h.activate("zs")
    h.wait()

    assert log.lookups() == []
    assert len(log.pages("/Users")) == 1 and len(log.pages("/Groups")) == 1
    posts = [p for m, p in log.writes() if m == "POST"]
    assert sorted(posts) == ["/v2/Groups", "/v2/Users", "/v2/Users"]  # u1, u3 and "eng"
    users = h.users()
    assert users[U2]["id"] == u2 and len(users) == 4  # adopted (its userName then set), once
    assert users["someone@example.com"]["active"] is True
    assert h.groups()["ops"]["id"] == ops
    assert h.members("ops") == {U3}  # taken over: its member list is ours to sync
    assert h.members("eng") == {U1, U2}
    mirror = Mirror(h.redis, "zs")
    assert mirror.user("u2").remote_id == u2 and mirror.group("g2").remote_id == ops
    [entry] = audit.read(h.redis, app="zs", name="idm_integration_activate")
    assert (
        "listing: 2 of the app's 2 users read in 1 call: 1 adopted, 2 to create"
        in (entry["detail"])
    )


def test_without_listing_every_object_is_looked_up(harness):
    """``--no-listing`` (the benchmark's baseline): a lookup per user and per group."""
    h = harness
    h.send(*directory(h))
    log = RequestLog()
    h.scim.inject(log)
    h.activate("zs", "--no-listing")
    h.wait()
    assert len(log.lookups()) == 5 and log.pages("/Users") == log.pages("/Groups") == []
    assert h.members("eng") == {U1, U2} and h.members("ops") == {U3}


def test_listing_falls_back_to_lookups_when_the_app_is_huge(harness):
    """The app holds 450 users (5 pages) and 3 would be looked up: one page is read, then the
    users are looked up one by one. Its one group page costs no more than the group lookups
    it replaces (2): listed."""
    h = harness
    h.send(*directory(h))
    drift.add_users(h.scim, [f"other{i}@example.com" for i in range(450)])
    log = RequestLog()
    h.scim.inject(log)
    h.activate("zs")
    h.wait()
    [(_, first)] = log.pages("/Users")
    assert "startIndex=1" in first
    lookups = log.lookups()
    assert len(lookups) == 3 and all("userName" in q for q in lookups)
    assert len(log.pages("/Groups")) == 1
    assert h.members("eng") == {U1, U2} and h.members("ops") == {U3}
    detail = audit.read(h.redis, app="zs", name="idm_integration_activate")[0]["detail"]
    assert "listing all would cost more than the 3 lookups" in detail


def test_the_listing_keeps_to_the_apps_rate_limit(harness):
    """Five pages at 4 requests/s, burst 1: a page every 250 ms, never sooner."""
    h = harness
    users = [f"w{i}" for i in range(8)]
    h.send(*(h.user(u) for u in users),
           *(h.event("app.user_associated", app_id="zs", user_id=u) for u in users))  # fmt: skip
    drift.add_users(h.scim, [f"other{i}@example.com" for i in range(420)])
    log = RequestLog()
    h.scim.inject(log)
    h.activate("zs", "--rate", "4", "--burst", "1")
    times = [t for t, _ in log.pages("/Users")]
    assert len(times) == 5 and log.lookups() == []
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.2, gaps  # 252 ms apart as the limiter paces 4/s, less the trip
    h.wait()
    assert log.lookups() == [] and len([p for m, p in log.writes() if m == "POST"]) == 8


def test_seeding_never_overwrites_an_entry_or_a_write_in_doubt(r):
    from worker.contract.model import MirrorGroup, MirrorUser

    mirror = Mirror(r, "zs")
    mirror.save_user("u1", MirrorUser("mine", {"userName": "a"}))
    mirror.begin_write("user", "u2")
    mirror.remember_absent("user", "u3")
    saved, marked = mirror.seed(
        "user",
        {"u1": MirrorUser("theirs", {}), "u2": MirrorUser("r2", {}), "u3": MirrorUser("r3", {})},
        ["u4", "u1", "u2"],
    )
    assert (saved, marked) == (1, 1)
    assert mirror.user("u1").remote_id == "mine" and mirror.user("u2") is None
    assert mirror.user("u3").remote_id == "r3" and not mirror.looked_up("user", "u3")
    assert mirror.looked_up("user", "u4") and not mirror.looked_up("user", "u1")
    assert r.sismember(keys.mirror_doubt("zs", "user"), "u2")
    assert mirror.seed("group", {"g1": MirrorGroup("rg", "eng", {"u1": "mine"})}, []) == (1, 0)
    assert mirror.group("g1") == MirrorGroup("rg", "eng", {"u1": "mine"})
