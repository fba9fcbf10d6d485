"""Writes the sample that `make run` replays: examples/directory.jsonl, then changes.jsonl;
and examples/snapshot.jsonl, a full-state snapshot of the next morning (docs/snapshot.md).

A small company: 24 people in Engineering, Sales, Support and Contractors; Engineering, Sales
and Support are associated with the local Zscaler app, Contractors are not (implicitly denied),
Finance is associated but empty (not created). Then the day's changes: a suspension, a rename,
a department move, Sales disassociated (its members who are in no other group are
deactivated), a departure (user deleted) and a contractor given direct access.

The snapshot is the directory after those changes, plus what happened overnight without an
event reaching the provisioner: a new hire in Engineering (u-25), a departure (u-14), a move
from Support to Engineering (u-17, department and groups) and Finance renamed.
"""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

APP = "zscaler-local"
FIRST = ["Ada", "Grace", "Alan", "Barbara", "Ken", "Linus", "Margaret", "Dennis", "Frances",
         "John", "Radia", "Edsger", "Donald", "Hedy", "Tim", "Leslie", "Niklaus", "Shafi",
         "Vint", "Whitfield", "Sophie", "Guido", "Bjarne", "Anita"]  # fmt: skip
LAST = ["Lovelace", "Hopper", "Turing", "Liskov", "Thompson", "Torvalds", "Hamilton", "Ritchie",
        "Allen", "McCarthy", "Perlman", "Dijkstra", "Knuth", "Lamarr", "Berners-Lee", "Lamport",
        "Wirth", "Goldwasser", "Cerf", "Diffie", "Wilson", "van Rossum", "Stroustrup", "Borg"]  # fmt: skip
GROUPS = {"g-eng": "Engineering", "g-sales": "Sales", "g-support": "Support",
          "g-contractors": "Contractors", "g-finance": "Finance"}  # fmt: skip
DEPARTMENT = {"g-eng": "Engineering", "g-sales": "Sales", "g-support": "Support",
              "g-contractors": "External"}  # fmt: skip


def main() -> None:
    clock = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    events = []

    def emit(kind: str, **data: object) -> None:
        nonlocal clock
        clock += timedelta(seconds=1)
        stamp = clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events.append({"id": f"evt-{len(events) + 1:04d}", "type": kind, "occurred_at": stamp,
                       "data": data})  # fmt: skip

    for gid, name in GROUPS.items():
        emit("group.created", group={"id": gid, "name": name})
    homes = ["g-eng"] * 10 + ["g-sales"] * 6 + ["g-support"] * 5 + ["g-contractors"] * 3
    for i, (first, last, home) in enumerate(zip(FIRST, LAST, homes, strict=True)):
        uid = f"u-{i + 1:02d}"
        login = f"{first}.{last}".lower().replace(" ", "").replace("-", "")
        emit("user.created", user={
            "id": uid, "username": f"{login}@example.com", "email": f"{login}@example.com",
            "firstname": first, "lastname": last, "displayname": f"{first} {last}",
            "employee_id": f"E{1000 + i}", "department": DEPARTMENT[home], "state": "active",
        })  # fmt: skip
        emit("group.member_added", group_id=home, user_id=uid)
    for uid in ("u-11", "u-12"):  # two salespeople also work with Support
        emit("group.member_added", group_id="g-support", user_id=uid)
    for gid in ("g-eng", "g-sales", "g-support", "g-finance"):
        emit("app.group_associated", app_id=APP, group_id=gid)
    initial = len(events)
    # The day's changes.
    emit("user.suspended", user_id="u-05")
    emit("group.renamed", group_id="g-support", name="Customer Support")
    emit("user.updated", user={
        "id": "u-03", "username": "alan.turing@example.com", "email": "alan.turing@example.com",
        "firstname": "Alan", "lastname": "Turing", "displayname": "Alan Turing",
        "employee_id": "E1002", "department": "Research", "state": "active",
    })  # fmt: skip
    emit("app.group_disassociated", app_id=APP, group_id="g-sales")
    emit("user.deleted", user_id="u-09")
    emit("app.user_associated", app_id=APP, user_id="u-22")
    for name, part in (("directory.jsonl", events[:initial]), ("changes.jsonl", events[initial:])):
        path = Path(__file__).with_name(name)
        path.write_text("".join(json.dumps(e) + "\n" for e in part))
        print(f"wrote {len(part)} events to {path}")
    lines = snapshot(events)
    path = Path(__file__).with_name("snapshot.jsonl")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote a snapshot of {len(lines) - 1} objects to {path}")


def snapshot(events: list[dict]) -> list[dict]:
    """The directory the events describe, with the night's changes, as snapshot lines."""
    users: dict[str, dict] = {}
    names: dict[str, str] = {}
    members: dict[str, list[str]] = {gid: [] for gid in GROUPS}
    app_groups: list[str] = []
    app_users: list[str] = []
    for event in events:  # the sample's events, in order; none is out of order
        kind, data = event["type"], event["data"]
        if kind in ("user.created", "user.updated"):
            users[data["user"]["id"]] = dict(data["user"])
        elif kind == "user.suspended":
            users[data["user_id"]]["state"] = "suspended"
        elif kind == "user.deleted":
            del users[data["user_id"]]
            for group in members.values():
                if data["user_id"] in group:
                    group.remove(data["user_id"])
        elif kind in ("group.created", "group.renamed"):
            gid = data["group"]["id"] if kind == "group.created" else data["group_id"]
            names[gid] = data["group"]["name"] if kind == "group.created" else data["name"]
        elif kind == "group.member_added":
            members[data["group_id"]].append(data["user_id"])
        elif kind == "app.group_associated":
            app_groups.append(data["group_id"])
        elif kind == "app.group_disassociated":
            app_groups.remove(data["group_id"])
        elif kind == "app.user_associated":
            app_users.append(data["user_id"])
    # Overnight, with no event: a new hire, a departure, a move, a rename.
    users["u-25"] = {
        "id": "u-25", "username": "katherine.johnson@example.com",
        "email": "katherine.johnson@example.com", "firstname": "Katherine", "lastname": "Johnson",
        "displayname": "Katherine Johnson", "employee_id": "E1024", "department": "Engineering",
        "state": "active",
    }  # fmt: skip
    members["g-eng"] += ["u-25", "u-17"]
    del users["u-14"]
    members["g-sales"].remove("u-14")
    users["u-17"]["department"] = "Engineering"
    members["g-support"].remove("u-17")
    names["g-finance"] = "Finance & Legal"
    lines: list[dict] = [
        {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z", "source": "example:acme"}
    ]
    lines += [{"kind": "user", "user": user} for user in users.values()]
    lines += [{"kind": "group", "group": {"id": gid, "name": names[gid]}, "members": members[gid]}
              for gid in GROUPS]  # fmt: skip
    lines.append({"kind": "app", "app_id": APP, "groups": app_groups, "users": app_users})
    return lines


if __name__ == "__main__":
    main()
