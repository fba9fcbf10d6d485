"""The pool's side of checking Bulk writes (``worker.sync.bulk``), against a real Redis: one
check of a form at a time, the objects taken as sent meanwhile, and what each verdict does."""

from __future__ import annotations

import pytest
import redis

from worker.scim.bulk import HELD, READ_BACK, UNCHECKED
from worker.store import audit, codec, keys, learned
from worker.store.mirror import Mirror
from worker.sync import bulk

pytestmark = pytest.mark.unit

FORM = "POST /Groups"


def unchecked(r: redis.Redis) -> set[str]:
    return set(codec.texts(r.smembers(keys.app_bulk_unchecked("zs", FORM))))


def test_one_check_of_a_form_at_a_time_and_the_others_remembered(r):
    assert bulk._claim_check("zs", FORM, "group:g1") == READ_BACK
    assert bulk._claim_check("zs", FORM, "group:g2") == UNCHECKED
    assert bulk._claim_check("zs", FORM, None) == UNCHECKED  # an object unknown: nothing kept
    assert bulk._claim_check("zs", "POST /Users", "user:u1") == READ_BACK  # a form of its own
    assert unchecked(r) == {"group:g2"}
    assert 0 < r.ttl(keys.app_bulk_unchecked("zs", FORM)) <= 86400  # a lost check's, bounded
    ttl = r.ttl(keys.app_bulk_check("zs", FORM))
    assert 0 < ttl <= bulk.CHECK_SECONDS  # a check whose thread died lapses


def test_a_check_that_could_not_read_releases_the_form(r):
    bulk._claim_check("zs", FORM, "group:g1")
    bulk._claim_check("zs", FORM, "group:g2")
    bulk._checked("zs", FORM, None, "/Groups/1: timeout")
    assert bulk._claim_check("zs", FORM, "group:g3") == READ_BACK  # the next write checks
    assert unchecked(r) == {"group:g2"}  # still to be settled by that check
    assert not learned.load(r, "zs").bulk_held


def test_a_write_held_as_sent_teaches_the_pool_and_trusts_the_others(r):
    bulk._claim_check("zs", FORM, "group:g1")
    bulk._claim_check("zs", FORM, "group:g2")
    bulk._checked("zs", FORM, [], "/Groups/1")
    assert learned.load(r, "zs").bulk_held == {FORM}
    assert unchecked(r) == set()
    assert bulk._claim_check("zs", FORM, "group:g3") == HELD
    assert unchecked(r) == set() and not r.exists(keys.app_bulk_check("zs", FORM))
    [entry] = audit.read(r, app="zs")
    assert entry["outcome"] == "learned" and "was held as sent (/Groups/1)" in entry["detail"]
    bulk._checked("zs", FORM, [], "/Groups/3")  # news no more: no second entry
    assert len(audit.read(r, app="zs")) == 1


def test_a_write_not_held_as_sent_has_the_others_read_back(r):
    mirror = Mirror(r, "zs")  # (the app is not active: its keys are not marked)
    bulk._claim_check("zs", FORM, "group:g1")
    for group in ("g2", "g3"):
        bulk._claim_check("zs", FORM, f"group:{group}")
    bulk._checked("zs", FORM, ["members"], "/Groups/1")
    assert unchecked(r) == set() and not learned.load(r, "zs").bulk_held
    # each is read back by its next run, whatever a run in flight records meanwhile
    for group in ("g2", "g3"):
        assert mirror.load("group", group)[2]
    assert not mirror.load("group", "g1")[2]  # its own run completes it from what it read
    mirror.end_write("group", "g2")  # a write of g2 in flight recorded: still to be re-read
    assert mirror.load("group", "g2")[2]
    mirror.reread_done("group", "g2")
    assert not mirror.load("group", "g2")[2]
    [entry] = audit.read(r, app="zs")
    assert "was not held as sent (members): 2 writes of POST /Groups" in entry["detail"]
