"""The Bulk channel on its own: batching within the app's limits, each operation's own result,
and what a whole request's failure means for each. The application is scim2-server (Bulk
announced), reached through the same client the workers use; a fault hook stands in for the
answers it cannot give."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.scimserver import DROP_AFTER, ScimServer
from worker.scim import Conflict, NotSent, Transient, Unauthorized
from worker.scim.bulk import READ_BACK, UNCHECKED, BulkChannel, BulkLimits
from worker.scim.client import ScimClient, make_http_client
from worker.scim.profiles import profile_by_name


@pytest.fixture
def server() -> Iterator[ScimServer]:
    with ScimServer(bulk=True) as scim:
        yield scim


class Recorder:
    """The channel's hooks: slots taken, Bulk requests sent, failures and refusals heard."""

    def __init__(self, slot_error: Exception | None = None):
        self.slots: list[int] = []
        self.sent: list[tuple[int, int]] = []
        self.transient: list[Transient] = []
        self.refused: list[str] = []
        self.slot_error = slot_error

    def take(self, count: int) -> None:
        self.slots.append(count)
        if self.slot_error is not None:
            raise self.slot_error


def client(server: ScimServer, limits: BulkLimits, hooks: Recorder) -> ScimClient:
    http = make_http_client(server.base_url, server.token)
    profile = profile_by_name("generic")
    plain = ScimClient(http, profile)
    channel = BulkChannel(
        plain.bulk_exchange,
        limits,
        slots=hooks.take,
        on_transient=hooks.transient.append,
        on_refused=hooks.refused.append,
        on_sent=lambda operations, failed: hooks.sent.append((operations, failed)),
    )
    return ScimClient(http, profile, bulk=channel)


def at_once(count: int, write: Any) -> list[Any]:
    """``write(i)`` from ``count`` threads at once; each one's result or exception."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = write(i)
        except Exception as error:  # noqa: BLE001
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def user(i: int) -> dict[str, Any]:
    return {"userName": f"u{i}@example.com", "active": True, "displayName": f"User {i}"}


def bulk_posts(server: ScimServer) -> int:
    return sum(1 for method, path in server.requests if (method, path[-5:]) == ("POST", "/Bulk"))


def test_writes_of_many_threads_share_requests_within_max_operations(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(max_operations=7, max_payload=1 << 20, linger=0.2), hooks)
    created = at_once(20, lambda i: scim.create_user(user(i)))
    assert sorted(u.attributes["userName"] for u in created) == sorted(
        f"u{i}@example.com" for i in range(20)
    )
    assert len({u.id for u in created}) == 20  # each thread got its own user's id
    assert {u["id"] for u in server.users()} == {u.id for u in created}
    assert bulk_posts(server) == len(hooks.sent) == 3  # 7 + 7 + 6
    assert sorted(n for n, _ in hooks.sent) == [6, 7, 7]
    assert hooks.slots == [1, 1, 1]  # one slot per request, not per operation


def test_a_request_never_exceeds_max_payload(server):
    hooks = Recorder()
    limits = BulkLimits(max_operations=1000, max_payload=1200, linger=0.2)
    scim = client(server, limits, hooks)
    at_once(12, lambda i: scim.create_user(user(i)))
    assert len(server.users()) == 12
    assert len(hooks.sent) >= 3 and sum(n for n, _ in hooks.sent) == 12


def test_an_app_counting_operations_takes_a_slot_per_operation(server):
    hooks = Recorder()
    limits = BulkLimits(max_operations=10, max_payload=1 << 20, linger=0.2, counts_operations=True)
    scim = client(server, limits, hooks)
    at_once(4, lambda i: scim.create_user(user(i)))
    assert sum(hooks.slots) == 4 and len(hooks.sent) == 1


def test_each_operation_gets_its_own_answer(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)
    taken = scim.create_user(user(0))
    results = at_once(3, lambda i: scim.create_user(user(i)))  # u0 exists: 409 for it alone
    assert isinstance(results[0], Conflict)
    assert [r.attributes["userName"] for r in results[1:]] == ["u1@example.com", "u2@example.com"]
    assert hooks.sent[-1] == (3, 1)
    group = scim.create_group("eng", [taken.id, results[1].id])
    assert group.member_ids == {taken.id, results[1].id}
    patched = at_once(2, lambda i: scim.patch_members(group.id, [results[2].id], [])
                      if i == 0 else scim.delete_user(results[1].id))  # fmt: skip
    assert patched == [None, None]  # answered 200 without a body: the caller keeps what it sent
    held = {g["displayName"]: g for g in server.groups()}["eng"]
    assert results[2].id in {m["value"] for m in held["members"]}
    assert results[1].id not in {u["id"] for u in server.users()}


def test_a_bulk_request_cut_short_raises_a_transient_error_for_each(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)
    server.inject(lambda environ: DROP_AFTER if environ["PATH_INFO"].endswith("/Bulk") else None)
    results = at_once(3, lambda i: scim.create_user(user(i)))
    assert all(isinstance(r, Transient) and r.status is None and r.counted for r in results)
    assert all("cut short" in r.detail for r in results)
    assert len(hooks.transient) == 1  # the pace and breaker hear of it once
    assert len({id(r) for r in results}) == 3  # an exception of its own for each thread
    assert len(server.users()) == 3  # applied all the same: in doubt, not refused


def test_a_throttled_bulk_request_is_counted_once_and_refused_for_each(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)
    server.inject(lambda e: (429, {"Retry-After": "3"}, b"") if e["PATH_INFO"].endswith("/Bulk")
                  else None)  # fmt: skip
    results = at_once(4, lambda i: scim.create_user(user(i)))
    assert all(isinstance(r, Transient) and r.status == 429 and r.retry_after == 3 for r in results)
    assert all(r.counted for r in results) and len(hooks.transient) == 1
    assert server.users() == []


def test_unauthorized_bulk_request(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.05), hooks)
    server.inject(lambda e: (401, {}, b"") if e["PATH_INFO"].endswith("/Bulk") else None)
    results = at_once(2, lambda i: scim.create_user(user(i)))
    assert all(isinstance(r, Unauthorized) for r in results)


@pytest.mark.parametrize("status", [400, 404, 405, 413, 501])
def test_a_refused_bulk_request_falls_back_to_single_calls(server, status):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)
    refusal = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "detail": "no Bulk"}
    body = json.dumps(refusal).encode()
    server.inject(lambda e: (status, {}, body) if e["PATH_INFO"].endswith("/Bulk") else None)
    created = at_once(3, lambda i: scim.create_user(user(i)))
    assert sorted(u.attributes["userName"] for u in created) == [
        f"u{i}@example.com" for i in range(3)
    ]
    assert hooks.refused == [f"HTTP {status} to a Bulk request of 3 operations: no Bulk"]
    assert not scim.bulk.enabled  # type: ignore[union-attr]
    assert bulk_posts(server) == 1
    assert [m for m, _ in server.requests].count("POST") == 1 + 3
    assert hooks.slots == [1, 1, 1, 1]  # the Bulk request's, then one per single call
    scim.create_user(user(9))  # from now on alone, with no Bulk request tried
    assert bulk_posts(server) == 1


def test_no_slot_in_time_means_not_sent(server):
    hooks = Recorder(slot_error=NotSent("no request slot for 30.0s", 30.0))
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.05), hooks)
    results = at_once(2, lambda i: scim.create_user(user(i)))
    assert all(isinstance(r, NotSent) and r.retry_after == 30.0 for r in results)
    assert server.requests == [] and hooks.sent == []


def test_an_answer_without_an_operation_s_result_leaves_it_in_doubt(server):
    """An app that answers 200 but forgets an operation: that one is in doubt."""
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)

    def forget_last(environ: dict[str, Any]) -> Any:
        if not environ["PATH_INFO"].endswith("/Bulk"):
            return None
        answer: list[bytes] = []
        body = b"".join(server.app(environ, lambda *a: answer.append(b"")))  # type: ignore[arg-type]
        data = json.loads(body)
        data["Operations"] = data["Operations"][:-1]
        return 200, {"Content-Type": "application/scim+json"}, json.dumps(data).encode()

    server.inject(forget_last)
    results = at_once(3, lambda i: scim.create_user(user(i)))
    doubts = [r for r in results if isinstance(r, Transient)]
    assert len(doubts) == 1 and "no result for this operation" in doubts[0].detail
    assert hooks.sent == [(3, 1)]


def test_a_group_names_users_created_in_the_same_request_by_bulk_id(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=1.0), hooks)
    threads = [threading.Thread(target=scim.create_user, args=(user(i), f"d{i}")) for i in range(3)]
    for thread in threads:
        thread.start()
    wanted = ["d0", "d1", "d2"]
    deadline = time.monotonic() + 5
    while len(named := scim.bulk_ids(wanted)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(named) == 3 and all(v.startswith("bulkId:") for v in named.values())
    group = scim.create_group("eng", [named[d] for d in wanted])
    for thread in threads:
        thread.join()
    users = {u["userName"]: u["id"] for u in server.users()}
    assert group.member_ids == set(users.values())  # the ids the app gave, not the bulkIds
    assert {scim.resolved(named[d]) for d in wanted} == set(users.values())
    held = {g["displayName"]: g for g in server.groups()}["eng"]
    assert {m["value"] for m in held["members"]} == set(users.values())
    assert bulk_posts(server) == 1 and hooks.sent == [(4, 0)]


def test_a_group_naming_creates_of_a_request_gone_is_not_sent(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.05), hooks)
    scim.create_user(user(0), "d0")
    with pytest.raises(NotSent, match="no longer on their way"):
        scim.create_group("eng", ["bulkId:op1"])
    assert server.groups() == []


def test_a_group_naming_a_create_that_failed_is_not_sent(server):
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=1.0), hooks)
    scim.create_user(user(0))  # taken: its create in the batch below fails (409)
    failed = threading.Thread(
        target=lambda: pytest.raises(Conflict, scim.create_user, user(0), "d0")
    )
    failed.start()
    deadline = time.monotonic() + 5
    while not (named := scim.bulk_ids(["d0"])) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(NotSent, match="were not created"):
        scim.create_group("eng", [named["d0"]])
    failed.join()
    assert server.groups() == []


def test_an_app_config_keeps_its_bulk_settings_and_ignores_settings_it_does_not_know() -> None:
    """What a newer version saved is read by this one (a rollback): unknown settings are left
    out, the known ones kept."""
    import dataclasses

    from worker.store.apps import AppConfig, parse

    config = AppConfig("zs", "https://scim.example.com", "/run/token", bulk=False, bulk_wait_ms=5,
                       bulk_limits=(1000, 1 << 20))  # fmt: skip
    stored = json.dumps({**dataclasses.asdict(config), "a_later_setting": {"x": 1}})
    assert parse(stored) == config
    assert parse(json.dumps({"id": "zs", "base_url": "https://a", "token_file": "/t"})).bulk


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        ({"supported": True, "maxOperations": 1000, "maxPayloadSize": 1048576}, (1000, 1048576)),
        ({"supported": True, "maxOperations": 50, "maxPayloadSize": 0}, (50, 1 << 20)),
        ({"supported": True, "maxOperations": 1, "maxPayloadSize": 1048576}, None),
        ({"supported": False, "maxOperations": 1000, "maxPayloadSize": 1048576}, None),
    ],
)
def test_what_a_service_provider_config_allows(announced: dict[str, Any], expected: Any) -> None:
    from scim2_models import ServiceProviderConfig

    from worker.store.apps import AppConfig
    from worker.sync import bulk

    spc = ServiceProviderConfig.model_validate(
        {"bulk": announced, "patch": {"supported": True}, "filter": {"supported": True}}
    )
    app = AppConfig("zs", "https://scim.example.com", "/t", bulk_wait_ms=7)
    limits = bulk.limits_of(bulk.announced(spc), app, profile_by_name("zscaler"))
    got = None if limits is None else (limits.max_operations, limits.max_payload)
    assert got == expected
    if limits is not None:
        assert limits.linger == 0.007 and not limits.counts_operations


def test_a_failing_hook_changes_nothing_of_what_the_operations_got(server):
    """The counters' Redis being away when a Bulk request is answered: every operation still
    gets its own result, and no thread is left waiting."""
    http = make_http_client(server.base_url, server.token)
    plain = ScimClient(http, profile_by_name("generic"))

    def broken(*_: object) -> None:
        raise ConnectionError("Redis is away")

    channel = BulkChannel(plain.bulk_exchange, BulkLimits(10, 1 << 20, linger=0.2),
                          slots=lambda n: None, on_sent=broken, on_transient=broken)  # fmt: skip
    scim = ScimClient(http, profile_by_name("generic"), bulk=channel)
    created = at_once(3, lambda i: scim.create_user(user(i)))
    assert sorted(u.attributes["userName"] for u in created) == [
        f"u{i}@example.com" for i in range(3)
    ]


def test_a_bulk_refusal_echoing_the_token_is_scrubbed(server):
    """An app that echoes the credentials in its refusal of a Bulk request: the reason learned
    (audited, shown by status) never holds the token."""
    http = make_http_client(server.base_url, server.token)
    plain = ScimClient(http, profile_by_name("generic"))
    hooks = Recorder()
    channel = BulkChannel(plain.bulk_exchange, BulkLimits(10, 1 << 20, linger=0.05),
                          slots=hooks.take, on_refused=hooks.refused.append,
                          scrub=plain.scrub)  # fmt: skip

    def echo(environ: dict[str, Any]) -> Any:
        if environ["PATH_INFO"].endswith("/Bulk"):
            body = {"detail": f"bad header {environ.get('HTTP_AUTHORIZATION')}"}
            return 400, {}, json.dumps(body).encode()
        return None

    server.inject(echo)
    ScimClient(http, profile_by_name("generic"), bulk=channel).create_user(user(0))
    assert hooks.refused and "bad header Bearer ***" in hooks.refused[0]
    assert server.token not in hooks.refused[0]


def test_an_answer_too_large_to_read_leaves_every_operation_in_doubt(server):
    """The app did the work but its answer is over the client's limit: nothing is known of
    the operations, so they are in doubt (re-read), never refused (parked)."""
    hooks = Recorder()
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.2), hooks)
    huge = b" " * (17 << 20)
    server.inject(lambda e: (200, {}, huge) if e["PATH_INFO"].endswith("/Bulk") else None)
    results = at_once(2, lambda i: scim.create_user(user(i)))
    assert all(isinstance(r, Transient) and r.status is None for r in results)
    assert all("over" in r.detail for r in results)


class Checks:
    """The channel's check hooks: which forms are claimed (for which object), and what each
    check found."""

    def __init__(self, answer: str = READ_BACK):
        self.answer = answer
        self.claimed: list[tuple[str, str | None]] = []
        self.found: list[tuple[str, list[str] | None, str]] = []

    def claim(self, form: str, obj: str | None) -> str:
        self.claimed.append((form, obj))
        return self.answer

    def heard(self, form: str, not_held: list[str] | None, what: str) -> None:
        self.found.append((form, not_held, what))


def checking_client(server: ScimServer, hooks: Recorder, checks: Checks) -> ScimClient:
    scim = client(server, BulkLimits(10, 1 << 20, linger=0.01), hooks)
    assert scim.bulk is not None
    scim.bulk.claim_check, scim.bulk.on_checked = checks.claim, checks.heard
    return scim


def drop_members_of_creates(environ: dict[str, Any]) -> None:
    if environ.get("PATH_INFO", "").endswith("/Bulk"):
        body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        for operation in body["Operations"]:
            if operation["method"] == "POST" and operation["path"] == "/Groups":
                operation["data"].pop("members", None)
        raw = json.dumps(body).encode()
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))


def test_a_write_answered_without_its_resource_is_read_back_with_a_slot(server):
    """scim2-server answers Bulk operations without their resources: the claimed write is read
    back (a GET, after a slot), and the caller gets what the app holds, not what was sent."""
    hooks, checks = Recorder(), Checks()
    scim = checking_client(server, hooks, checks)
    scim.about("user:u1")
    ann = scim.create_user(user(1))
    assert checks.claimed == [("POST /Users", "user:u1")]
    assert checks.found == [("POST /Users", [], f"/Users/{ann.id}")]
    assert scim.bulk is not None and "POST /Users" in scim.bulk.held  # not checked again
    assert hooks.slots == [1, 1]  # the Bulk request's, the read-back's
    server.inject(drop_members_of_creates)
    group = scim.create_group("eng", [ann.id])
    assert group.member_ids == set()  # as held, so the caller completes it
    assert checks.found[-1] == ("POST /Groups", ["members"], f"/Groups/{group.id}")
    assert "POST /Groups" not in scim.bulk.held
    gets = [path for method, path in server.requests if method == "GET"]
    assert gets == [f"/v2/Users/{ann.id}", f"/v2/Groups/{group.id}"]
    scim.create_user(user(2))  # the form is held: neither claimed nor read back
    assert len(checks.found) == 2 and [form for form, _ in checks.claimed] == [
        "POST /Users",
        "POST /Groups",
    ]
    scim.delete_user(ann.id)  # a DELETE has nothing to hold
    assert len(checks.claimed) == 2


def test_a_write_answered_with_its_resource_is_checked_against_it(server):
    """An app that answers each operation with its resource: no read-back, the answer is
    compared."""
    hooks, checks = Recorder(), Checks()
    scim = checking_client(server, hooks, checks)

    def with_resources(environ: dict[str, Any]) -> Any:
        if not environ.get("PATH_INFO", "").endswith("/Bulk"):
            return None
        answer = json.loads(b"".join(server.app(environ, lambda *args: None)))
        for result in answer["Operations"]:
            result["response"] = {"id": result["location"].rsplit("/", 1)[-1],
                                  "userName": "u1@example.com", "active": True}  # fmt: skip
        return 200, {"Content-Type": "application/scim+json"}, json.dumps(answer).encode()

    server.inject(with_resources)
    ann = scim.create_user(user(1))  # its displayName is not in the answer
    assert checks.found == [("POST /Users", ["displayName"], f"/Users/{ann.id}")]
    assert not [path for method, path in server.requests if method == "GET"]
    assert hooks.slots == [1]


def test_a_write_not_checked_is_taken_as_sent_and_its_object_remembered(server):
    hooks, checks = Recorder(), Checks(UNCHECKED)  # another write of the form is checked
    scim = checking_client(server, hooks, checks)
    scim.about("user:u1")
    ann = scim.create_user(user(1))
    assert ann.attributes["userName"] == "u1@example.com" and checks.found == []
    assert checks.claimed == [("POST /Users", "user:u1")]
    checks.answer = READ_BACK

    def fail_reads(environ: dict[str, Any]) -> Any:
        if environ["REQUEST_METHOD"] == "GET":
            return 503, {"Content-Type": "application/scim+json"}, b'{"detail": "busy"}'
        return None

    server.inject(fail_reads)  # the read-back fails: the write is done all the same
    bob = scim.create_user(user(2))
    assert bob.attributes["userName"] == "u2@example.com" and bob.id
    [(form, found, what)] = checks.found
    assert (form, found) == ("POST /Users", None) and "busy" in what, what
    assert [e.status for e in hooks.transient] == [503]  # the pool's pace and breaker heard it


def test_a_checked_write_that_fails_releases_its_claim(server):
    hooks, checks = Recorder(), Checks()
    scim = checking_client(server, hooks, checks)
    scim.create_user(user(1))
    with pytest.raises(Conflict):
        scim.create_user(user(1))  # already there: 409, after the form was held...
    checks.answer, scim.bulk.held = READ_BACK, frozenset()  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        scim.create_user(user(1))  # ...and while it is checked: the claim is released
    assert checks.found[-1] == ("POST /Users", None, "answered 409")
