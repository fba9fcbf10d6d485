"""Synthetic directory workloads (v1 events as plain dicts), deterministic for a seed."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BASE_EPOCH = 1_790_000_000  # 2026-09-21, a fixed origin so runs are comparable
DEPARTMENTS = ("Engineering", "Sales", "Finance", "Support", "Marketing", "Legal", "HR", "IT")
FIRST = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia", "Edsger")
LAST = ("Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie",
        "Perlman", "Dijkstra")  # fmt: skip


class Clock:
    """Strictly increasing RFC 3339 timestamps, one millisecond apart."""

    def __init__(self, start: int = BASE_EPOCH) -> None:
        self.ms = start * 1000
        self._second = -1
        self._prefix = ""

    def next(self) -> str:
        self.ms += 1
        second, milli = divmod(self.ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{milli:03d}Z"


def user_record(uid: str, rng: random.Random, state: str = "active") -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    n = uid.rsplit("-", 1)[-1]
    return {
        "id": uid,
        "username": f"{first.lower()}.{last.lower()}.{n}@example.com",
        "email": f"{first.lower()}.{last.lower()}.{n}@example.com",
        "firstname": first,
        "lastname": last,
        "displayname": f"{first} {last}",
        "employee_id": f"E{int(n):07d}" if n.isdigit() else f"E-{n}",
        "department": rng.choice(DEPARTMENTS),
        "state": state,
    }


def ingest_events(
    n: int, *, seed: int = 1, app_id: str = "bench-inactive"
) -> Iterator[dict[str, Any]]:
    """``n`` events of a directory's life, for an app that is NOT active (no SCIM involved).

    The directory is created first (users ~5% of the events, groups 0.05%, app associations),
    then changes follow with a realistic mix: memberships 52% (40% added, 12% removed), user
    updates 20%, new users 5%, suspensions and reactivations 8%, renames 2%, associations 2%,
    deletions 0.2%.
    """
    rng = random.Random(seed)
    clock = Clock()
    ids = iter(range(n))
    users_n = max(50, n // 20)
    groups_n = max(5, n // 2000)
    users = [f"u-{i}" for i in range(users_n)]
    groups = [f"g-{i}" for i in range(groups_n)]
    records: dict[str, dict[str, Any]] = {}
    emitted = 0

    def event(type_: str, **data: Any) -> dict[str, Any]:
        nonlocal emitted
        emitted += 1
        return {"id": f"evt-{seed}-{next(ids)}", "type": type_, "occurred_at": clock.next(),
                "data": data}  # fmt: skip

    initial: list[tuple[str, dict[str, Any]]] = []
    for uid in users:
        records[uid] = user_record(uid, rng)
        initial.append(("user.created", {"user": records[uid]}))
    for i, gid in enumerate(groups):
        initial.append(("group.created", {"group": {"id": gid, "name": f"team-{i}"}}))
    for gid in groups[: max(1, groups_n // 5)]:
        initial.append(("app.group_associated", {"app_id": app_id, "group_id": gid}))
    for type_, data in initial[:n]:
        yield event(type_, **data)

    weights = {
        "group.member_added": 40, "group.member_removed": 12, "user.updated": 20,
        "user.created": 5, "user.suspended": 4, "user.activated": 4, "group.renamed": 2,
        "app.group_associated": 0.5, "app.group_disassociated": 0.5,
        "app.user_associated": 0.6, "app.user_disassociated": 0.4, "user.deleted": 0.2,
        "group.deleted": 0.01,
    }  # fmt: skip
    kinds, cumulative = list(weights), []
    total = 0.0
    for k in kinds:
        total += weights[k]
        cumulative.append(total)
    next_user = users_n
    next_group = groups_n
    while emitted < n:
        kind = rng.choices(kinds, cum_weights=cumulative)[0]
        uid = rng.choice(users)
        gid = rng.choice(groups)
        if kind in ("group.member_added", "group.member_removed"):
            yield event(kind, group_id=gid, user_id=uid)
        elif kind == "user.updated":
            record = dict(records[uid])
            record["department"] = rng.choice(DEPARTMENTS)
            record["displayname"] = (
                f"{record['firstname']} {record['lastname']} ({rng.randint(1, 99)})"
            )
            records[uid] = record
            yield event(kind, user=record)
        elif kind == "user.created":
            uid = f"u-{next_user}"
            next_user += 1
            users.append(uid)
            records[uid] = user_record(uid, rng)
            yield event(kind, user=records[uid])
        elif kind in ("user.suspended", "user.activated"):
            yield event(kind, user_id=uid)
        elif kind == "user.deleted":
            # a deleted user sends no more events (the directory forgets it)
            i = users.index(uid)
            users[i] = users[-1]
            users.pop()
            yield event(kind, user_id=uid)
        elif kind == "group.renamed":
            yield event(kind, group_id=gid, name=f"team-{gid[2:]}-{rng.randint(1, 9999)}")
        elif kind in ("app.group_associated", "app.group_disassociated"):
            yield event(kind, app_id=app_id, group_id=gid)
        elif kind in ("app.user_associated", "app.user_disassociated"):
            yield event(kind, app_id=app_id, user_id=uid)
        elif kind == "group.deleted":
            groups.remove(gid)
            yield event(kind, group_id=gid)
            # the directory creates another group in its place
            gid = f"g-{next_group}"
            next_group += 1
            groups.append(gid)
            if emitted < n:
                yield event("group.created", group={"id": gid, "name": f"team-{gid[2:]}"})


def write_jsonl(path: Path, events: Iterator[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for document in events:
            f.write(json.dumps(document, separators=(",", ":")))
            f.write("\n")
            count += 1
    return count
