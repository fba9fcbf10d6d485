"""Manual import (issue 4): listing New / Imported users (suspended ones skipped), importing a
selection, and a background import of 250 users."""

from __future__ import annotations

import json
import time

import httpx

from worker.store import audit, keys

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"


def app_users(h, *users: dict) -> dict[str, str]:  # noqa: ANN001
    """Create users in the application directly, as its administrator would; userName -> id."""
    ids = {}
    headers = {"Authorization": f"Bearer {h.scim.token}"}
    with httpx.Client(base_url=h.scim.base_url, headers=headers, timeout=10) as http:
        for user in users:
            resp = http.post("/Users", json={"schemas": [CORE], "active": True, **user})
            resp.raise_for_status()
            ids[user["userName"]] = resp.json()["id"]
    return ids


def directory_user(h, user_name: str) -> tuple[str, dict] | None:  # noqa: ANN001
    for key in h.redis.scan_iter(keys.user("*")):
        raw = h.redis.hget(key, "rec")
        if raw and json.loads(raw)["username"] == user_name:
            return key.decode().split(":")[-1], json.loads(raw)
    return None


def listing(h, *args: str) -> dict[str, dict]:  # noqa: ANN001
    rows = json.loads(h.cli("import", "zs", "--list", "--json", *args).stdout)
    return {row["user_name"]: row for row in rows}


def test_list_and_import_a_selection(harness):
    h = harness
    h.activate("zs")
    h.send(h.user("d1", "bob@example.com"))  # already in the directory
    ids = app_users(
        h,
        {"userName": "ann@example.com", "name": {"givenName": "Ann", "familyName": "Lee"},
         "displayName": "Ann Lee", "emails": [{"value": "ann@example.com", "type": "work"}],
         "externalId": "E-7"},
        {"userName": "bob@example.com"},
        {"userName": "cat@example.com", "active": False},  # suspended in the application
        {"userName": "dan@example.com"},
    )  # fmt: skip
    rows = listing(h)
    assert list(rows) == ["ann@example.com", "dan@example.com", "bob@example.com"]  # New first
    assert rows["ann@example.com"]["status"] == "New"
    assert rows["bob@example.com"]["status"] == "Imported"
    assert rows["bob@example.com"]["directory_id"] == "d1"
    assert "cat@example.com" not in rows
    assert set(listing(h, "--new-only")) == {"ann@example.com", "dan@example.com"}
    text = h.cli("import", "zs", "--list")
    assert "1 suspended in the application (skipped)" in text.stderr

    for wrong in (ids["cat@example.com"], "nobody"):
        result = h.cli("import", "zs", "--select", wrong, check=False)
        assert result.returncode == 2 and "not among the importable users" in result.stderr

    h.scim.clear_requests()
    out = h.cli("import", "zs", "--select", ids["ann@example.com"], "bob@example.com")
    assert "imported 1 users" in out.stdout
    assert "skipped bob@example.com: already in the directory (d1)" in out.stderr
    user_id, rec = directory_user(h, "ann@example.com")
    assert rec == {"id": user_id, "username": "ann@example.com", "firstname": "Ann",
                   "lastname": "Lee", "displayname": "Ann Lee", "email": "ann@example.com",
                   "employee_id": "E-7"}  # fmt: skip
    h.wait()
    assert h.writes() == []  # bound to nothing: the application is not touched
    [entry] = audit.read(h.redis, name="user_import")
    assert entry["object"] == f"user:{user_id}" and "source=import" in entry["detail"]
    assert entry["causes"][0].startswith("import-")
    [done] = audit.read(h.redis, name="import_complete")
    assert done["outcome"] == "success" and "1 users created" in done["detail"]
    assert listing(h)["ann@example.com"]["status"] == "Imported"


def test_background_import_of_250_users(harness):
    h = harness
    h.activate("zs")
    names = [f"user{i:03}@example.com" for i in range(250)]
    app_users(h, *({"userName": n, "displayName": n.split("@")[0]} for n in names))
    out = h.cli("import", "zs", "--all-new").stdout
    assert "importing 250 users in the background" in out
    deadline = time.monotonic() + 60
    while not audit.read(h.redis, name="import_complete"):
        assert time.monotonic() < deadline, "no completion entry"
        time.sleep(0.2)
    [done] = audit.read(h.redis, name="import_complete")
    assert done["outcome"] == "success" and "250 users created in the directory" in done["detail"]
    h.wait()
    status = json.loads(h.cli("status", "--json").stdout)
    [job] = status["imports"]
    assert (job["state"], job["done"], job["total"], job["imported"]) == (
        "done",
        "250",
        "250",
        "250",
    )
    assert "250/250 published" in h.cli("status").stdout
    assert {r["user_name"] for r in listing(h, "--new-only")} == set()
    assert all(directory_user(h, n) for n in names[::25])
    assert len(audit.read(h.redis, name="user_import")) == 250
