"""Faults the guarantees name: a worker SIGKILLed mid-reconcile, Redis restarted with AOF,
bad input to replay. Nothing accepted is lost, nothing is duplicated."""

import json
import time

import redis

from tests.support.harness import InFlight, leases_held, wait_until
from tests.support.scimserver import DROP_AFTER
from worker.contract.events import parse_events
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import publish
from worker.store import keys


def test_a_worker_killed_mid_reconcile_loses_nothing_and_duplicates_nothing(harness, worker_pool):
    h = harness
    h.activate("zs")

    def slow(environ):  # every create takes a while, so the kill lands mid-reconcile
        if environ["REQUEST_METHOD"] == "POST":
            time.sleep(0.3)
        return None

    posting = InFlight(slow)
    h.scim.inject(posting)
    events = [h.group("g1", "eng"), h.associate("zs", "g1")]
    for i in range(30):
        events += [h.user(f"u{i}"), h.member("g1", f"u{i}")]
    h.send(*events, wait=False)
    # Killed once both workers reconcile (3 leases held: 2 threads each) and a create is being
    # answered, after some users were created.
    wait_until(lambda: leases_held(h.redis) >= 3 and posting.now and len(h.scim.users()) >= 3,
               timeout=60, what="both workers mid-reconcile")  # fmt: skip
    worker_pool.kill_one()
    h.wait(timeout=120)
    h.scim.inject(None)
    users = h.scim.users()
    names = [u["userName"] for u in users]
    assert sorted(names) == sorted(f"u{i}@example.com" for i in range(30))
    assert len(names) == len(set(names))  # adopt on 409 / lookup: no duplicate users
    assert h.members("eng") == set(names)


def test_published_events_survive_a_redis_crash_with_aof(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        document = {
            "id": "e1",
            "type": "user.suspended",
            "occurred_at": "2026-01-01T00:00:00Z",
            "data": {"user_id": "u1"},
        }
        result = publish(client, parse_events(json.dumps([document])), notify=False)
        server.restart(kill=True)  # SIGKILL: no clean shutdown
        client = redis.Redis.from_url(server.url)
        assert client.zrange(keys.PENDING_BATCHES, 0, -1) == [result.batches[0].encode()]
        assert client.xlen(keys.JOURNAL) == 1
        assert client.exists(keys.batch(result.batches[0]))
    finally:
        server.stop()


def test_replay_refuses_a_bad_file_whole_naming_line_and_field(harness, tmp_path):
    h = harness
    good = h.user("u1")
    bad = {**h.member("g1", "u1"), "data": {"group_id": "g1"}}
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    result = h.cli("replay", str(path), check=False)
    assert result.returncode == 1
    assert "line 3: /data/user_id: Field required" in result.stderr
    assert h.redis.xlen(keys.JOURNAL) == 0 and h.redis.zcard(keys.PENDING_BATCHES) == 0
    path.write_text(json.dumps([good, bad]))
    result = h.cli("replay", str(path), check=False)
    assert "event #2 (index 1): /data/user_id" in result.stderr


def test_activation_is_refused_with_a_bad_token(harness, tmp_path):
    h = harness
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token")
    result = h.cli(
        "apps",
        "activate",
        "zs",
        "--base-url",
        h.scim.base_url,
        "--token-file",
        str(wrong),
        check=False,
    )
    assert result.returncode == 1 and "401" in result.stderr
    assert "not-the-token" not in result.stderr + result.stdout
    assert h.cli("apps", "list", "--json").stdout.strip() == "[]"


def test_a_poison_message_is_parked_and_the_worker_goes_on(harness):
    from worker.queue.celery_app import celery, send_ingest

    h = harness
    h.activate("zs")
    h.redis.set(keys.batch("poison"), b'[{"type": "user.created", "data": 42}, "garbage"]')
    h.redis.zadd(keys.PENDING_BATCHES, {"poison": 1})
    send_ingest(["poison"])
    celery().send_task("prov.reconcile", args=[["not", "a", "key"]], queue="prov.reconcile")
    celery().send_task("prov.ingest", args=[], queue="prov.ingest")  # a malformed message
    h.send(h.event("app.user_associated", app_id="zs", user_id="u1"), h.user("u1"))
    assert "u1@example.com" in h.users()  # the pool went on
    reason = h.redis.hget(keys.PARKED_BATCHES, "poison")
    assert reason and b"poison batch" in reason
    assert h.redis.exists(keys.batch("poison"))  # kept for inspection, never retried
    status = json.loads(h.cli("status", "--json").stdout)
    assert status["queue"]["parked_batches"] == 1 and status["idle"]


def _drop_the_first_create(h, path: str, before_answer) -> list[str]:  # noqa: ANN001
    """Inject: the first POST to ``path`` is done by the app, but its answer is lost; before
    the connection drops (the worker is still waiting), ``before_answer()`` runs."""
    dropped: list[str] = []

    def fault(environ):  # noqa: ANN001, ANN202
        post = environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"].endswith(path)
        if post and not dropped:
            dropped.append(path)
            before_answer()
            return DROP_AFTER
        return None

    h.scim.inject(fault)
    return dropped


def _publish_and_apply(h, *documents) -> None:  # noqa: ANN001
    """Publish and wait until the projection has applied them (a key may be in flight)."""
    applied = int(h.redis.hget(keys.COUNTERS, "applied") or 0)
    publish(h.redis, parse_events(json.dumps(list(documents))))
    deadline = time.monotonic() + 10
    while int(h.redis.hget(keys.COUNTERS, "applied") or 0) < applied + len(documents):
        assert time.monotonic() < deadline, "the events were not applied"
        time.sleep(0.02)


def test_an_interrupted_create_of_a_user_no_longer_wanted_is_found_and_undone(harness):
    """The create reached the app but its answer was lost, and meanwhile the user left the
    app: the next run looks the user up anyway and deactivates it (found by the chaos test:
    the user stayed active in the app)."""
    h = harness
    h.activate("zs")

    def leave() -> None:  # made when it happens: newer than the association
        _publish_and_apply(h, h.event("app.user_disassociated", app_id="zs", user_id="u1"))

    dropped = _drop_the_first_create(h, "/Users", leave)
    h.send(h.user("u1"), h.event("app.user_associated", app_id="zs", user_id="u1"))
    h.scim.inject(None)
    assert dropped == ["/Users"]
    (user,) = h.scim.users()
    assert user["userName"] == "u1@example.com" and user["active"] is False


def test_an_interrupted_create_of_a_group_deleted_meanwhile_is_found_and_deleted(harness):
    """The same for a group: created, answer lost, deleted in the directory meanwhile: found
    by its name and deleted in the app, its member deactivated."""
    h = harness
    h.activate("zs")

    def leave() -> None:
        _publish_and_apply(h, h.event("group.deleted", group_id="g1"))

    dropped = _drop_the_first_create(h, "/Groups", leave)
    h.send(h.group("g1", "Group One"), h.user("u1"), h.member("g1", "u1"),
           h.associate("zs", "g1"))  # fmt: skip
    h.scim.inject(None)
    assert dropped == ["/Groups"]
    assert h.scim.groups() == []
    assert [u["active"] for u in h.scim.users()] == [False]
