"""SCIM Bulk end to end: real worker processes and scim2-server announcing Bulk; each test
checks what the application holds, what the pool recorded, and how many requests it took."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis

from tests.support.harness import Harness, WorkerPool, wait_until
from tests.support.scimserver import DROP_AFTER, ScimServer
from worker.devstack.redis_server import RedisServer
from worker.store import audit, learned
from worker.store.mirror import Mirror
from worker.sync import bulk

USERS = 120


@pytest.fixture
def bulk_harness(r, worker_pool, tmp_path):  # noqa: ANN001, ANN201
    with ScimServer(bulk=True) as server:
        yield Harness(r, server, tmp_path)


def directory(h: Harness, users: int = USERS, groups: int = 4) -> list[dict[str, Any]]:
    """``users`` users spread over ``groups`` groups, every group associated with ``zs``."""
    return [
        *(h.user(f"u{i}") for i in range(users)),
        *(h.group(f"g{n}", f"team{n}") for n in range(groups)),
        *(h.member(f"g{i % groups}", f"u{i}") for i in range(users)),
        *(h.associate("zs", f"g{n}") for n in range(groups)),
    ]


def provision(h: Harness, *options: str) -> None:
    """The directory first, then the app activated on it (listing, then a full sync)."""
    h.send(*directory(h))
    h.activate("zs", *options)
    h.wait()


def bulk_requests(h: Harness) -> int:
    return sum(1 for method, path in h.scim.requests if (method, path[-5:]) == ("POST", "/Bulk"))


def assert_converged(h: Harness, users: int = USERS, groups: int = 4) -> None:
    held = h.users()
    assert len(held) == users and all(u["active"] for u in held.values())
    for n in range(groups):
        assert h.members(f"team{n}") == {
            f"u{i}@example.com" for i in range(users) if i % groups == n
        }
    mirror = Mirror(h.redis, "zs")
    assert len(mirror.known_keys()) == users + groups
    assert not h.parked()


def test_initial_provisioning_under_a_rate_limit_takes_few_requests(bulk_harness):
    h = bulk_harness
    provision(h, "--rate", "5", "--burst", "5")
    assert_converged(h)
    writes = h.writes()
    assert {path[-5:] for _, path in writes} == {"/Bulk"}, writes  # no write went alone
    counted = bulk.stats(h.redis, "zs")
    # one per object, and maybe a late member's PATCH where a group stopped waiting for it
    assert USERS + 4 <= counted["operations"] <= USERS + 8 and counted["failed"] == 0
    # a slot per request at 5/s (a burst of 5 at once): the writes wait together for the next
    # slot, so a few requests carry them all (124 single calls without Bulk)
    assert counted["requests"] == len(writes) <= 16, counted
    # what the app announces was read once, by the activation's check, not by each worker
    assert [p for _, p in h.scim.requests if p.endswith("/ServiceProviderConfig")] == [
        "/v2/ServiceProviderConfig"
    ]
    shown = json.loads(h.cli("apps", "show", "zs", "--json").stdout)["bulk"]
    assert shown == {"on": True, "wait_ms": 20,
                     "announced": "up to 1,000 operations and 1,048,576 bytes a request"}  # fmt: skip
    entries = audit.read(h.redis, app="zs", name="user_create_provision")
    assert len(entries) == USERS
    assert all("in Bulk request" in e["detail"] for e in entries)


def test_bulk_off_sends_single_calls(bulk_harness):
    h = bulk_harness
    provision(h, "--no-bulk")
    assert_converged(h)
    assert bulk_requests(h) == 0
    assert Counter(m for m, _ in h.writes())["POST"] == USERS + 4


def test_an_app_that_refuses_bulk_falls_back_to_single_calls_and_learns_it(bulk_harness):
    h = bulk_harness
    refused = Counter()

    def no_bulk(environ: dict[str, Any]) -> Any:
        if environ.get("PATH_INFO", "").endswith("/Bulk"):
            refused["bulk"] += 1
            error = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "501",
                     "detail": "Bulk is not implemented"}  # fmt: skip
            return 501, {"Content-Type": "application/scim+json"}, json.dumps(error).encode()
        return None

    h.scim.inject(no_bulk)
    provision(h)
    assert_converged(h)
    # the first refusal teaches the whole pool; only the Bulk requests already on their way
    # then are refused too (a few), and every write went alone in the end
    assert 1 <= refused["bulk"] < 10
    assert Counter(m for m, _ in h.writes())["POST"] == refused["bulk"] + USERS + 4
    assert "HTTP 501" in (learned.load(h.redis, "zs").bulk_refused or "")
    assert h.app_row()["learned"]["bulk_refused"]
    assert "Bulk: refused (HTTP 501" in h.cli("apps", "show", "zs").stdout
    notes = audit.read(h.redis, app="zs", name="idm_integration_update")
    assert any("one by one" in e["detail"] for e in notes)
    # `apps update --bulk` forgets it: the next writes go in Bulk requests again
    h.scim.inject(None)
    h.cli("apps", "update", "zs", "--bulk")
    assert learned.load(h.redis, "zs").bulk_refused is None
    before = bulk_requests(h)
    h.send(*(h.user(f"u{i}", department="Ops") for i in range(USERS)))
    assert bulk_requests(h) > before


def test_one_refused_operation_fails_only_its_own_key(bulk_harness):
    """The app refuses one operation of a Bulk request (here: its userName taken away in
    flight, a 400): that user's key is parked with the app's reason, every other operation of
    the same request is recorded as done."""
    h = bulk_harness

    def spoil_u7(environ: dict[str, Any]) -> None:
        if not environ.get("PATH_INFO", "").endswith("/Bulk"):
            return None
        body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        for operation in body["Operations"]:
            if (operation.get("data") or {}).get("userName") == "u7@example.com":
                del operation["data"]["userName"]
        raw = json.dumps(body).encode()
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
        return None

    h.scim.inject(spoil_u7)
    h.send(*directory(h))
    h.activate("zs")
    h.wait()
    parked = h.parked()
    assert list(parked) == ["zs user u7"], parked
    assert "HTTP 400" in parked["zs user u7"]
    held = h.users()
    assert "u7@example.com" not in held and len(held) == USERS - 1
    failures = audit.read(h.redis, app="zs", failed=True)
    assert [e["object"] for e in failures] == ["user:u7"]
    # the fix arrives (the operation is no longer spoilt): `retry` provisions it
    h.scim.inject(None)
    h.cli("retry", "zs")
    h.wait()
    assert_converged(h)


def test_a_create_answered_409_inside_a_bulk_request_adopts_the_account(bulk_harness):
    h = bulk_harness
    h.activate("zs")  # listed while empty: the mirror expects no account
    h.seed("Users", {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                     "userName": "u3@example.com", "active": False})  # fmt: skip
    blind = Counter()

    def lookups_miss(environ: dict[str, Any]) -> Any:
        """The app's search lags behind its writes: the first lookup of u3 finds nobody."""
        query = environ.get("QUERY_STRING", "")
        if environ["REQUEST_METHOD"] == "GET" and "u3%40example.com" in query:
            blind["lookups"] += 1
            page = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                    "totalResults": 0, "Resources": []}  # fmt: skip
            if blind["lookups"] == 1:
                return 200, {"Content-Type": "application/scim+json"}, json.dumps(page).encode()
        return None

    h.scim.inject(lookups_miss)
    h.send(*directory(h, users=8, groups=1))
    held = h.users()
    assert len(held) == 8 and held["u3@example.com"]["active"] is True  # adopted, not doubled
    conflicts = [e for e in audit.read(h.redis, app="zs", failed=True) if e["status"] == 409]
    assert [e["object"] for e in conflicts] == ["user:u3"]
    assert "in Bulk request" in conflicts[0]["detail"]
    assert blind["lookups"] == 2  # the blind one, and the one after the 409


def test_a_bulk_request_cut_short_leaves_its_operations_in_doubt_and_converges(bulk_harness):
    """The app applies a Bulk request but the connection dies before its answer: every
    operation is in doubt, is re-read, and nothing is created twice."""
    h = bulk_harness
    cut = Counter()

    def cut_first(environ: dict[str, Any]) -> Any:
        if environ.get("PATH_INFO", "").endswith("/Bulk") and not cut["bulk"]:
            cut["bulk"] += 1
            return DROP_AFTER
        return None

    h.scim.inject(cut_first)
    provision(h)
    assert cut["bulk"] == 1
    assert_converged(h)
    dropped = [e for e in audit.read(h.redis, app="zs", failed=True) if e["status"] is None]
    assert dropped and all("cut short" in e["detail"] for e in dropped), dropped
    # what the cut request had created was found by the re-read, not created again (a 409)
    assert not [e for e in audit.read(h.redis, app="zs", failed=True) if e["status"] == 409]


def test_a_throttled_bulk_request_is_counted_once(bulk_harness):
    """A 429 to a Bulk request of many operations lowers the pool's pace once, not once per
    operation, and every operation is sent again."""
    h = bulk_harness
    throttled = Counter()
    first = threading.Lock()

    def throttle_first(environ: dict[str, Any]) -> Any:
        """The first Bulk request (of each worker process: they send at once) gets a 429."""
        if environ.get("PATH_INFO", "").endswith("/Bulk"):
            with first:
                now = time.monotonic()
                if not throttled["bulk"] or (
                    throttled["bulk"] < 2 and now - throttled["at"] < 0.05
                ):
                    throttled["bulk"] += 1
                    throttled["at"] = throttled["at"] or now
                    return 429, {"Retry-After": "1"}, b""
        return None

    h.scim.inject(throttle_first)
    provision(h, "--bulk-wait", "300")  # the first Bulk requests carry many operations
    assert_converged(h)
    status = json.loads(h.cli("status", "--json").stdout)
    # once per Bulk request refused, however many operations it carried
    assert status["apps"]["zs"]["pace"]["refused"] == throttled["bulk"] >= 1
    refusals = [e for e in audit.read(h.redis, app="zs", failed=True) if e["status"] == 429]
    assert len(refusals) > throttled["bulk"]


def ignore_members_on_create(environ: dict[str, Any]) -> None:
    """A fault: the app creates the groups of a Bulk request without their members, and
    answers as scim2-server does, without the resources."""
    if not environ.get("PATH_INFO", "").endswith("/Bulk"):
        return None
    body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
    for operation in body["Operations"]:
        if (operation.get("method"), operation.get("path")) == ("POST", "/Groups"):
            operation["data"].pop("members", None)
    raw = json.dumps(body).encode()
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
    return None


def reads_back(h: Harness, endpoint: str) -> int:
    """GETs of single resources of ``endpoint`` (``Users``, ``Groups``)."""
    return sum(1 for m, p in h.scim.requests if m == "GET" and f"/{endpoint}/" in p)


def test_members_an_app_ignores_in_bulk_creates_are_read_back_and_completed(bulk_harness):
    """A Bulk answer without the resources does not show that the app dropped the members of
    each group's create. The first group create is read back: its members are missing, so it
    is completed (a PATCH), and the group creates taken as sent meanwhile are read back in
    turn and completed. No verify needed; nothing is learned as held for group creates."""
    h = bulk_harness
    h.scim.inject(ignore_members_on_create)
    provision(h)
    assert_converged(h)
    # every group was read back (the first by its create, the others by their next run)
    assert reads_back(h, "Groups") >= 4
    knowledge = learned.load(h.redis, "zs")
    assert "POST /Groups" not in knowledge.bulk_held and "POST /Users" in knowledge.bulk_held
    notes = [e["detail"] for e in audit.read(h.redis, app="zs", name="idm_integration_update")]
    assert any("POST /Groups in a Bulk request, read back, was not held as sent (members)" in n
               for n in notes), notes  # fmt: skip
    assert any("ignored" in n and "members sent on create" in n for n in notes), notes
    # what the repair sent went in Bulk requests too
    assert {path[-5:] for _, path in h.writes()} == {"/Bulk"}


def test_an_app_that_holds_bulk_writes_is_read_back_once_per_form(bulk_harness):
    """An app that holds what it is sent: one write of each form is read back, then the form
    is learned and the writes are taken as sent; `apps show` tells it, `apps update` forgets."""
    h = bulk_harness
    provision(h)
    assert_converged(h)
    # a read-back per form (POST /Users, POST /Groups), maybe one more by a worker process
    # that had not heard yet
    assert 1 <= reads_back(h, "Users") <= 2 and 1 <= reads_back(h, "Groups") <= 2
    assert learned.load(h.redis, "zs").bulk_held == {"POST /Users", "POST /Groups"}
    shown = h.cli("apps", "show", "zs").stdout
    assert "Bulk writes held as sent: POST /Groups, POST /Users" in shown, shown
    before = reads_back(h, "Users")
    h.send(*(h.user(f"u{i}", department="Ops") for i in range(USERS)))  # a new form: PUT
    assert 1 <= reads_back(h, "Users") - before <= 2
    assert "PUT /Users" in learned.load(h.redis, "zs").bulk_held
    h.cli("apps", "update", "zs")
    assert not learned.load(h.redis, "zs").bulk_held


def test_status_shows_bulk_requests(bulk_harness):
    h = bulk_harness
    provision(h)
    row = json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["bulk"]
    # every write was an operation of a Bulk request, and each left an audit entry; without a
    # rate limit a group may go out before some of its members exist and add them later, so
    # there can be more operations than the 124 objects
    carried = [e for e in audit.read(h.redis, app="zs") if "in Bulk request" in e["detail"]]
    assert row["state"] == "on" and row["operations"] == len(carried) >= USERS + 4
    assert {path[-5:] for _, path in h.writes()} == {"/Bulk"}
    assert row["announced"] == "up to 1,000 operations and 1,048,576 bytes a request"
    assert row["requests"] == bulk_requests(h)
    text = h.cli("status").stdout
    assert "bulk: on" in text


def test_a_group_and_its_new_members_go_in_one_bulk_request(tmp_path):
    """The group's create names its members by bulkId, in the request that creates them. One
    worker process on a Redis of its own: the keys of the group and its members meet in its
    lanes."""
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    pool = WorkerPool(server.url, processes=1, concurrency=2).start()
    try:
        with ScimServer(bulk=True) as scim:
            h = Harness(client, scim, tmp_path, redis_url=server.url)
            wait_until(lambda: pool.ready(client), what="the worker")
            h.send(*directory(h, users=10, groups=1))
            h.activate("zs", "--bulk-wait", "1000")  # a second for the group to join them
            h.wait()
            assert_converged(h, users=10, groups=1)
            created = audit.read(client, app="zs", name="group_create_provision")
            assert [e["outcome"] for e in created] == ["success"]
            request = created[0]["detail"].split("in Bulk request ")[1].split()[0]
            members = audit.read(client, app="zs", name="user_create_provision")
            assert all(request in e["detail"] for e in members)  # the same request
            assert bulk_requests(h) == 1
            assert len(h.writes()) == 1
    finally:
        pool.stop()
        server.stop()


@pytest.mark.parametrize("bulk", [False, True], ids=["single-calls", "bulk"])
def test_an_interrupted_create_renamed_meanwhile_is_found_by_the_name_it_was_sent(
    r, worker_pool, tmp_path, bulk
):  # noqa: ANN001
    """A group's create reaches the app but its answer is lost, and the group is renamed in
    the directory before the retry: the re-read looks up the new name (nothing) and the name
    the create was sent with (the group), which it takes over and renames. Without the second
    lookup the group was created twice (found by the chaos test with Bulk on)."""
    with ScimServer(bulk=bulk) as server:
        h = Harness(r, server, tmp_path)
        h.activate("zs")
        renamed, dropped = threading.Event(), Counter()

        def drop_the_group_create(environ: dict[str, Any]) -> Any:
            if environ["REQUEST_METHOD"] != "POST" or dropped["create"]:
                return None
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(raw)
            if b'"displayName": "eng"' not in raw and b'"displayName":"eng"' not in raw:
                return None
            dropped["create"] += 1
            renamed.wait(10)  # the rename is published while the create is on its way
            return DROP_AFTER

        h.scim.inject(drop_the_group_create)
        h.send(h.user("u1"), h.group("g1", "eng"), h.member("g1", "u1"),
               h.associate("zs", "g1"), wait=False)  # fmt: skip
        wait_until(lambda: dropped["create"], what="the group's create")
        h.send(h.event("group.renamed", group_id="g1", name="eng2"), wait=False)
        renamed.set()
        h.wait()
        assert sorted(h.groups()) == ["eng2"]
        assert h.members("eng2") == {"u1@example.com"}
        assert not h.parked()


def test_the_deletion_guard_holds_operations_of_bulk_requests_until_approved(bulk_harness):
    """The guard counts each deactivation, Bulk or not: past its threshold they are held, not
    put in a Bulk request, until an administrator approves."""
    h = bulk_harness
    ids = [f"u{i}" for i in range(30)]
    h.send(h.group("g1"), h.associate("zs", "g1"), *[h.user(i) for i in ids],
           *[h.member("g1", i) for i in ids])  # fmt: skip
    h.activate("zs")
    h.wait()
    assert sum(u["active"] for u in h.users().values()) == 30
    h.send(h.associate("zs", "g1", associated=False))  # 30 users lose access at once
    assert sum(u["active"] for u in h.users().values()) == 10  # 20 (the minimum) went
    assert len(json.loads(h.cli("status", "--json").stdout)["apps"]["zs"]["held"]) == 10
    h.cli("approve", "zs")
    h.wait()
    assert sum(u["active"] for u in h.users().values()) == 0
    gone = audit.read(h.redis, app="zs", name="user_deprovision")
    done = [e for e in gone if e["outcome"] == "success"]
    assert len(done) == 30 and all("in Bulk request" in e["detail"] for e in done)
    assert len([e for e in gone if e["outcome"] == "held"]) == 10


def test_bulk_requests_keep_to_a_gateway_s_token_bucket(r, worker_pool, tmp_path):
    """A gateway that counts requests (an exact bucket of 5/s, burst 5, answering 429): the
    pool takes a slot per Bulk request, so it keeps to the limit while sending them."""
    with ScimServer(rate_limit=(5, 5), bulk=True) as server:
        h = Harness(r, server, tmp_path)
        provision(h, "--rate", "5", "--burst", "5")
        assert_converged(h)
        assert bulk_requests(h) >= 5
        bucket = server.bucket
        assert bucket is not None
        # the activation's own check spends tokens the pool's pace does not know of: a
        # refusal or two within its first burst, none once the pace is kept
        start = bucket.arrivals[0][0]
        late = [request for t, ok, request in bucket.arrivals if not ok and t - start > 2.0]
        assert bucket.refused <= 3 and late == [], bucket.arrivals
