"""``provisioner jumpcloud sync|follow`` end to end: the local JumpCloud double, the real pool
(Redis, worker processes) and a real SCIM application; nothing is written to the pool by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.harness import ROOT, TEST_ENV, Harness
from tests.support.jumpcloud import FakeJumpCloud
from worker.store import keys

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def fake() -> Iterator[FakeJumpCloud]:
    with FakeJumpCloud() as double:
        yield double


@pytest.fixture
def h(harness: Harness, tmp_path: Path) -> Harness:
    harness.env["PROVISIONER_HOME"] = str(tmp_path)  # the snapshot spool: var/jumpcloud/
    return harness


def key_file(tmp: Path, key: str) -> str:
    path = tmp / "jumpcloud.key"
    path.write_text(key + "\n")
    return str(path)


def jc(h: Harness, fake: FakeJumpCloud, command: str, *args: str, key: str | None = None,
       check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    keyfile = key_file(h.tmp, key or fake.api_key)
    return h.cli("jumpcloud", command, "--api-key-file", keyfile, "--api-url", fake.url, *args,
                 check=check)  # fmt: skip


class Follower:
    """``provisioner jumpcloud follow`` as a process of its own, its output in a file."""

    def __init__(self, h: Harness, fake: FakeJumpCloud, *args: str, key: str = "") -> None:
        self.log = h.tmp / "follow.log"
        self.argv = [sys.executable, "-m", "worker.cli.main", "jumpcloud", "follow", "--api-key-file",
                     key_file(h.tmp, key or fake.api_key), "--api-url", fake.url, "--interval", "0.2",
                     "--sync-every", "off", "--rate", "1000", *args]  # fmt: skip
        self.env = {**os.environ, **TEST_ENV, **h.env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Follower:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out,
                                            stderr=out, start_new_session=True)  # fmt: skip
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def following(h: Harness, fake: FakeJumpCloud) -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(*args: str, key: str = "") -> Follower:
        started.append(Follower(h, fake, *args, key=key).start())
        return started[-1]

    yield start
    for follower in started:
        if follower.process and follower.process.poll() is None:
            follower.kill()


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def journal(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields[b"e"]) for _, fields in r.xrange(keys.JOURNAL)]


def directory(fake: FakeJumpCloud) -> dict[str, str]:
    """ann and bo in Sales, cy in Eng; Sales and cy bound to the application."""
    ids = {name: fake.add_user(name, firstname=name.title(), lastname="Doe",
                               department=dept, employeeIdentifier=f"E-{name}")
           for name, dept in (("ann", "Sales"), ("bo", "Sales"), ("cy", "Engineering"))}  # fmt: skip
    ids["sales"], ids["eng"] = fake.add_group("Sales"), fake.add_group("Eng")
    fake.add_member(ids["sales"], ids["ann"])
    fake.add_member(ids["sales"], ids["bo"])
    fake.add_member(ids["eng"], ids["cy"])
    ids["app"] = fake.add_application("zscaler")
    fake.bind(ids["app"], "user_group", ids["sales"])
    fake.bind(ids["app"], "user", ids["cy"])
    return ids


# -- sync ----------------------------------------------------------------------------------------
def test_sync_end_to_end_the_application_follows_the_directory(
    h: Harness, fake: FakeJumpCloud, tmp_path: Path
) -> None:
    ids = directory(fake)
    h.activate("zs")
    result = jc(h, fake, "sync", "--app", f"zs={ids['app']}")
    assert "read 3 users, 2 groups and 1 apps" in result.stdout
    h.wait()
    users = h.users()
    assert set(users) == {"ann", "bo", "cy"} and all(u["active"] for u in users.values())
    assert users["ann"][ENTERPRISE]["department"] == "Sales"
    assert users["ann"]["name"]["givenName"] == "Ann" and users["ann"]["externalId"] == "E-ann"
    assert set(h.groups()) == {"Sales"} and h.members("Sales") == {"ann", "bo"}

    # changes no event tells of: the next sync finds them
    fake.delete_user(ids["bo"], event=False)
    fake.update_user(ids["ann"], event=False, state="SUSPENDED", suspended=True)
    fake.groups[ids["sales"]]["name"] = "Sales EMEA"
    fake.bind(ids["app"], "user", ids["cy"], bound=False, event=False)
    result = jc(h, fake, "sync", "--app", f"zs={ids['app']}")
    assert "user.deleted" in result.stdout and "app.user_disassociated" in result.stdout, (
        result.stdout
    )
    h.wait()
    users = h.users()
    active = {name: user["active"] for name, user in users.items()}
    assert active == {"ann": False, "bo": False, "cy": False}, (result.stdout, h.parked())
    assert set(h.groups()) == {"Sales EMEA"} and h.members("Sales EMEA") == {"ann"}

    writes = len(h.writes())
    result = jc(h, fake, "sync", "--app", f"zs={ids['app']}")
    assert "published 0 events" in result.stdout  # a sync again changes nothing
    h.wait()
    assert len(h.writes()) == writes

    spool = tmp_path / "var" / "jumpcloud" / "default.snapshot.jsonl"
    assert spool.stat().st_mode & 0o777 == 0o600
    assert fake.api_key not in spool.read_text()
    assert all(r.headers.get("x-api-key") == fake.api_key for r in fake.requests)


def test_sync_dry_run_publishes_nothing_and_a_bad_key_is_refused(
    h: Harness, fake: FakeJumpCloud
) -> None:
    directory(fake)
    result = jc(h, fake, "sync", "--dry-run")
    assert "nothing published (--dry-run)" in result.stdout
    assert h.redis.xlen(keys.JOURNAL) == 0
    refused = jc(h, fake, "sync", key="not-the-key-4242", check=False)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert "--api-key-file" in refused.stderr and "not-the-key-4242" not in refused.stderr


def test_an_interrupted_sync_publishes_nothing_and_running_it_again_resumes(
    h: Harness, fake: FakeJumpCloud
) -> None:
    for i in range(300):
        fake.add_user(f"user{i:03d}", event=False)
    fake.delay = 0.2  # 4 pages of users: about a second
    argv = [sys.executable, "-m", "worker.cli.main", "jumpcloud", "sync", "--api-key-file",
            key_file(h.tmp, fake.api_key), "--api-url", fake.url]  # fmt: skip
    sync = subprocess.Popen(argv, env={**os.environ, **TEST_ENV, **h.env}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(lambda: any(r.query.get("skip") == "90" for r in fake.requests), what="page 2")
    sync.send_signal(signal.SIGTERM)
    _, err = sync.communicate(timeout=30)
    assert sync.returncode == 1 and "nothing was published" in err
    assert h.redis.xlen(keys.JOURNAL) == 0
    fake.delay = 0
    result = jc(h, fake, "sync")
    assert "read 300 users" in result.stdout and "published 300 events" in result.stdout


# -- follow --------------------------------------------------------------------------------------
def test_follow_publishes_changes_as_they_come(
    h: Harness, fake: FakeJumpCloud, following: Callable[..., Follower]
) -> None:
    ids = directory(fake)
    h.activate("zs")
    jc(h, fake, "sync", "--app", f"zs={ids['app']}")
    h.wait()
    follower = following("--app", f"zs={ids['app']}")
    wait_until(lambda: h.redis.exists(keys.jumpcloud("default", "cursor")), what="the cursor")

    # a membership that arrives only as an association event
    dee = fake.add_user("dee", department="Sales")
    fake.add_member(ids["sales"], dee)
    wait_until(lambda: "dee" in h.members("Sales"), what="dee in Sales")
    assert h.users()["dee"][ENTERPRISE]["department"] == "Sales"

    # an event about a user deleted since: the read answers 404, which becomes user.deleted
    update = fake.update_user(ids["ann"], department="Support")
    assert update is not None
    fake.delete_user(ids["ann"], event=False)
    wait_until(lambda: not h.users()["ann"]["active"], what="ann deactivated")
    deleted = [e for e in journal(h.redis) if e["id"] == f"jc-{update['id']}"]
    assert [(e["type"], e["data"]) for e in deleted] == [("user.deleted", {"user_id": ids["ann"]})]

    # a rename, a suspension, a group unbound from the application
    fake.rename_group(ids["sales"], "Sales EMEA")
    fake.suspend_user(ids["bo"])
    wait_until(lambda: "Sales EMEA" in h.groups(), what="the rename")
    wait_until(lambda: not h.users()["bo"]["active"], what="bo suspended")
    fake.bind(ids["app"], "user_group", ids["sales"], bound=False)
    wait_until(lambda: not h.users()["dee"]["active"], what="dee no longer covered")
    fake.record_event("user_login_attempt", resource={"type": "user", "id": ids["cy"]})

    assert follower.stop() == 0  # SIGTERM: a clean stop
    h.wait()
    assert "stopped" in follower.output() and fake.api_key not in follower.output()
    assert all(fake.api_key not in json.dumps(e) for e in journal(h.redis))
    cursor = json.loads(h.redis.get(keys.jumpcloud("default", "cursor")))
    # at the last event asked for: the unbinding (a login is not a directory change)
    assert fake.rows[-1].event["event_type"] == "user_login_attempt"
    assert cursor["search_after"] == list(fake.rows[-2].key)


def test_follow_killed_mid_way_resumes_without_loss_or_duplicates(
    h: Harness, fake: FakeJumpCloud, following: Callable[..., Follower]
) -> None:
    users = [fake.add_user(f"user{i:02d}", event=False) for i in range(20)]
    for round_ in range(10):
        for uid in users:
            fake.update_user(uid, department=f"Dept {round_}")
    expected = {f"jc-{row.event['id']}" for row in fake.rows}
    assert len(expected) == 200
    cursor = {"start_time": "2020-01-01T00:00:00Z", "search_after": None}
    h.redis.set(keys.jumpcloud("default", "cursor"), json.dumps(cursor))
    fake.delay = 0.01

    def published() -> list[str]:
        return [e["id"] for e in journal(h.redis) if e["id"].startswith("jc-")]

    first = following("--page-size", "10")
    wait_until(lambda: len(published()) >= 40, what="some pages published")
    first.kill()
    before = len(published())
    assert before < 200, "the follower finished before it was killed"
    resumed_from = len(fake.requests)
    second = following("--page-size", "10")
    wait_until(lambda: len(published()) >= 200, timeout=60, what="every event published")
    assert second.stop() == 0
    ids = published()
    assert set(ids) == expected  # nothing lost
    assert len(ids) == len(set(ids))  # nothing twice in the journal
    first_poll = next(r for r in fake.requests[resumed_from:] if r.method == "POST")
    assert first_poll.body.get("search_after")  # resumed at the cursor, not from the start
    h.wait()


def test_follow_stops_on_a_refused_key_without_showing_it(
    h: Harness, fake: FakeJumpCloud, following: Callable[..., Follower]
) -> None:
    follower = following(key="wrong-key-987")
    assert follower.process is not None and follower.process.wait(timeout=20) == 1
    out = follower.output()
    assert "401" in out and "--api-key-file" in out and "wrong-key-987" not in out
    assert "wrong-key-987" not in " ".join(follower.argv)  # a path on the command line, not the key
    for name in h.redis.scan_iter(match="prov:jumpcloud:*"):
        assert b"wrong-key-987" not in (h.redis.get(name) or b"")


def test_follow_syncs_at_start_then_on_schedule(
    h: Harness, fake: FakeJumpCloud, following: Callable[..., Follower]
) -> None:
    ids = directory(fake)
    h.activate("zs")
    follower = following("--app", f"zs={ids['app']}", "--sync-every", "3s")
    # nothing synced yet: the follower starts with a sync, which provisions the directory
    wait_until(lambda: h.redis.exists(keys.jumpcloud("default", "synced")), what="a first sync")
    h.wait()
    assert set(h.users()) == {"ann", "bo", "cy"} and h.members("Sales") == {"ann", "bo"}
    # a change no event tells of: the next scheduled sync finds it
    fake.remove_member(ids["sales"], ids["bo"], event=False)
    wait_until(lambda: h.members("Sales") == {"ann"}, timeout=30, what="the scheduled sync")
    assert "scheduled sync: read 3 users" in follower.output()
    assert follower.stop() == 0
