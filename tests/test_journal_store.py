"""The journal's storage, with no worker around: retention by size and age (with the duplicate
filter), duplicates, group commit, range reads and time parsing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from tests.conftest import own_redis
from tests.test_journal import events, instant
from worker import config
from worker.devstack.redis_server import RedisServer
from worker.queue.publish import Request, publish, publish_requests
from worker.store import journal, keys


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: a worker's sweep sets the journal's age limit (30 days by
    default), which would race the limits these tests set."""
    yield from own_redis(tmp_path_factory)


@pytest.fixture
def small_journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PROVISIONER_JOURNAL_MAXLEN", "100")
    config.settings.cache_clear()
    yield
    monkeypatch.undo()
    config.settings.cache_clear()


# -- retention ---------------------------------------------------------------------------------
def test_retention_by_size_bounds_the_journal_and_the_duplicate_filter(
    r: redis.Redis, small_journal: None
) -> None:
    for start in range(0, 1000, 50):
        publish(r, events("e", 1000)[start : start + 50], notify=False)
    assert 100 <= r.xlen(keys.JOURNAL) < 300  # MAXLEN ~: whole stream nodes of 100 entries
    assert r.zcard(keys.RECENT_EVENTS) == 100  # exact: the newest 100 ids
    again = publish(r, events("e", 1000)[890:910], notify=False)
    assert again.duplicates == [f"e-{i}" for i in range(900, 910)]  # remembered
    assert again.accepted == [f"e-{i}" for i in range(890, 900)]  # forgotten: harmless again


def test_retention_by_age_trims_the_journal_and_the_duplicate_filter(r: redis.Redis) -> None:
    publish(r, events("old", 50), notify=False)
    assert journal.trim(r, max_age_seconds=0.5, approximate=False) == 0
    time.sleep(0.6)
    publish(r, events("new", 20), notify=False)  # forgets the old ids beyond the age itself
    assert r.zcard(keys.RECENT_EVENTS) == 20
    assert journal.trim(r, max_age_seconds=0.5, approximate=False) == 50
    assert [json.loads(d)["id"] for d in journal.read_range(r)] == [f"new-{i}" for i in range(20)]
    assert publish(r, events("old", 3), notify=False).accepted == ["old-0", "old-1", "old-2"]
    assert publish(r, events("new", 3), notify=False).duplicates == ["new-0", "new-1", "new-2"]


def test_the_age_limit_comes_from_the_environment(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_JOURNAL_MAX_AGE_DAYS", "7")
    journal.trim(r)
    assert int(r.get(keys.JOURNAL_MAX_AGE)) == 7 * 86_400_000
    monkeypatch.setenv("PROVISIONER_JOURNAL_MAX_AGE_DAYS", "0")
    with pytest.raises(ValueError, match="positive"):
        journal.trim(r)


def test_a_duplicate_within_one_batch_is_reported(r: redis.Redis) -> None:
    twice = events("d", 2) + events("d", 1)
    result = publish(r, twice, notify=False)
    assert result.accepted == ["d-0", "d-1"] and result.duplicates == ["d-0"]
    assert r.xlen(keys.JOURNAL) == 2


def test_grouped_requests_are_stored_whole_and_a_request_again_is_duplicates(
    r: redis.Redis,
) -> None:
    """The webhook's group commit: requests packed whole into batches of about 1,000 events;
    a request sent again (a retry), even within the same commit, is only duplicates."""
    publish(r, events("c", 5), notify=False)  # a request accepted before
    requests = [
        Request(events("a", 600)),
        Request(events("b", 600)),  # does not fit beside a: next batch
        Request(events("c", 5)),  # sent again: nothing of it is stored
        Request(events("a", 1) + events("d", 2)),  # a-0: a duplicate
        Request(events("b", 600)),  # b again, within the same commit
        Request(events("f", 2)),
    ]
    a, b, c, d, b_again, f = publish_requests(r, requests, notify=False)
    assert a.accepted == [f"a-{i}" for i in range(600)] and a.duplicates == []
    assert len(b.accepted) == 600
    assert c.accepted == [] and c.duplicates == [f"c-{i}" for i in range(5)]
    assert d.accepted == ["d-0", "d-1"] and d.duplicates == ["a-0"]
    assert b_again.accepted == [] and b_again.duplicates == b.accepted
    assert f.accepted == ["f-0", "f-1"]
    assert len(a.batches) == 3 and a.batches == f.batches == c.batches  # [a] [b c d] [b f]
    stored = [json.loads(doc)["id"] for doc in journal.read_range(r)]
    assert len(stored) == 5 + 1204 and len(set(stored)) == len(stored)
    assert int(r.hget(keys.COUNTERS, "published")) == 5 + 1204
    assert int(r.zcard(keys.PENDING_BATCHES)) == 1 + 3


def test_read_range_is_half_open_and_pages(r: redis.Redis) -> None:
    publish(r, events("a", 1500), notify=False)
    middle = instant()
    publish(r, events("b", 10), notify=False)
    documents = list(journal.read_range(r))
    assert len(documents) == 1510 and json.loads(documents[0])["v"].endswith(" a-0")
    assert len(list(journal.read_range(r, until=middle))) == 1500
    assert [json.loads(d)["id"] for d in journal.read_range(r, since=middle)] == [
        f"b-{i}" for i in range(10)
    ]
    assert list(journal.read_range(r, since=datetime.now(UTC))) == []


def test_times_are_rfc3339_or_relative() -> None:
    assert journal.parse_time("2026-11-28T17:50:51Z") == datetime(2026, 11, 28, 17, 50, 51, 0, UTC)
    assert abs((datetime.now(UTC) - journal.parse_time("-2h")).total_seconds() - 7200) < 5
    assert abs((datetime.now(UTC) - journal.parse_time("-30m")).total_seconds() - 1800) < 5
    for bad in ("2026-11-28T17:50:51", "yesterday", "-2x"):
        with pytest.raises(ValueError):
            journal.parse_time(bad)
