"""SCIM calls sent on a churn workload versus the minimal plan.

An active app (profile ``zscaler``: PUT for users, PATCH for groups, 100 member changes per
PATCH) against a real scim2-server. A directory is provisioned first; then a churn of
membership adds and removes, renames, suspensions, attribute updates, new and deleted users,
an association, a disassociation, a group deletion, and flapping changes (add then remove,
suspend then activate, update then revert) is published at once with ``provisioner replay``.

The minimal number of write calls is computed here, independently of the product, from the
directory's initial and final states (``Directory`` applies the events itself):

- user: 1 create (POST) if it is covered at the end and was not in the app; 1 update if its
  final attributes or ``active`` differ from the initial ones; 1 deactivation if it was
  active in the app and is no longer covered (or deleted);
- group associated at the end: 1 rename if the name differs, plus ceil(net member changes /
  100) PATCHes; a group not yet in the app with members: 1 create (with up to 100 members)
  plus ceil((members - 100) / 100) PATCHes; a managed group deleted in the directory: 1 DELETE;
  a disassociated group: 0 (left as it is).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import PoolShape
from benchmarks.workload import Clock, user_record

APP = "zs"
MEMBERS_PER_PATCH = 100
TARGET_RATIO = 1.05
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


# -- the directory, applied independently of the product -------------------------------------
@dataclass
class Directory:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record (with state)
    deleted_users: set[str] = field(default_factory=set)
    groups: dict[str, str] = field(default_factory=dict)  # id -> name
    deleted_groups: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)
    app_groups: set[str] = field(default_factory=set)  # associated with APP
    app_users: set[str] = field(default_factory=set)

    def apply(self, event: dict[str, Any]) -> None:
        """Events arrive in version order here, so last-writer-wins is "last applied wins"."""
        t, d = event["type"], event["data"]
        if t in ("user.created", "user.updated"):
            if d["user"]["id"] not in self.deleted_users:
                self.users[d["user"]["id"]] = dict(d["user"])
        elif t in ("user.suspended", "user.activated"):
            if d["user_id"] not in self.deleted_users and d["user_id"] in self.users:
                state = "suspended" if t == "user.suspended" else "active"
                self.users[d["user_id"]] = {**self.users[d["user_id"]], "state": state}
        elif t == "user.deleted":
            self.deleted_users.add(d["user_id"])
        elif t in ("group.created", "group.renamed"):
            gid = d["group"]["id"] if t == "group.created" else d["group_id"]
            if gid not in self.deleted_groups:
                self.groups[gid] = d["group"]["name"] if t == "group.created" else d["name"]
        elif t == "group.deleted":
            self.deleted_groups.add(d["group_id"])
        elif t in ("group.member_added", "group.member_removed"):
            g, u = d["group_id"], d["user_id"]
            if g in self.deleted_groups or u in self.deleted_users:
                return
            members = self.members.setdefault(g, set())
            (members.add if t == "group.member_added" else members.discard)(u)
        elif t in ("app.group_associated", "app.group_disassociated"):
            if d["app_id"] == APP and d["group_id"] not in self.deleted_groups:
                op = self.app_groups.add if t == "app.group_associated" else self.app_groups.discard
                op(d["group_id"])
        elif (t in ("app.user_associated", "app.user_disassociated") and d["app_id"] == APP
              and d["user_id"] not in self.deleted_users):  # fmt: skip
            op = self.app_users.add if t == "app.user_associated" else self.app_users.discard
            op(d["user_id"])

    def copy(self) -> Directory:
        return Directory(
            {k: dict(v) for k, v in self.users.items()}, set(self.deleted_users),
            dict(self.groups), set(self.deleted_groups),
            {k: set(v) for k, v in self.members.items()}, set(self.app_groups),
            set(self.app_users),
        )  # fmt: skip


def scim_attributes(record: dict[str, Any]) -> dict[str, Any]:
    """The Zscaler mapping, flat."""
    return {
        "userName": record["username"], "givenName": record.get("firstname"),
        "familyName": record.get("lastname"), "displayName": record.get("displayname"),
        "email": record.get("email"), "externalId": record.get("employee_id"),
        "department": record.get("department"), "active": record["state"] != "suspended",
    }  # fmt: skip


@dataclass
class View:
    """What the rules say the app should hold for a directory state."""

    users: dict[str, dict[str, Any]]  # covered user -> attributes
    groups: dict[str, tuple[str, frozenset[str]]]  # associated live group -> (name, members)


def view(d: Directory) -> View:
    live = {g for g in d.app_groups if g in d.groups and g not in d.deleted_groups}
    covered = {
        u for u in d.users
        if u not in d.deleted_users
        and (u in d.app_users or any(u in d.members.get(g, ()) for g in live))
    }  # fmt: skip
    users = {u: scim_attributes(d.users[u]) for u in covered}
    groups = {
        g: (d.groups[g], frozenset(m for m in d.members.get(g, ()) if m not in d.deleted_users))
        for g in live
    }
    return View(users, groups)


@dataclass
class Minimal:
    by_kind: Counter  # ("Users"|"Groups", method) -> calls
    by_object: dict[str, int]  # "user:<id>" / "group:<id>" -> calls

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def app_groups_of(v: View) -> dict[str, tuple[str, frozenset[str]]]:
    """The groups a fresh provisioning of ``v`` creates: empty groups are not created."""
    return {g: nm for g, nm in v.groups.items() if nm[1]}


def minimal_calls(before: Directory, after: Directory) -> Minimal:
    """The fewest write calls from a fully provisioned ``before`` to ``after`` (module doc)."""
    initial, final = view(before), view(after)
    by_kind: Counter = Counter()
    by_object: dict[str, int] = {}

    def add(obj: str, kind: tuple[str, str], n: int = 1) -> None:
        if n:
            by_kind[kind] += n
            by_object[obj] = by_object.get(obj, 0) + n

    for u, attrs in final.users.items():
        if u not in initial.users:
            add(f"user:{u}", ("Users", "POST"))
        elif attrs != initial.users[u]:
            add(f"user:{u}", ("Users", "PUT"))
    for u, attrs in initial.users.items():
        if u not in final.users and attrs["active"]:
            add(f"user:{u}", ("Users", "PUT"))  # deactivation (Zscaler: PUT)
    in_app = app_groups_of(initial)
    for g, (name, members) in final.groups.items():
        if g in in_app:
            old_name, old_members = in_app[g]
            add(f"group:{g}", ("Groups", "PATCH"), int(name != old_name))
            add(f"group:{g}", ("Groups", "PATCH"),
                math.ceil(len(members ^ old_members) / MEMBERS_PER_PATCH))  # fmt: skip
        elif members:
            add(f"group:{g}", ("Groups", "POST"))
            add(f"group:{g}", ("Groups", "PATCH"),
                math.ceil(max(0, len(members) - MEMBERS_PER_PATCH) / MEMBERS_PER_PATCH))  # fmt: skip
    for g in in_app:
        if g not in final.groups and g in after.deleted_groups:
            add(f"group:{g}", ("Groups", "DELETE"))
    return Minimal(by_kind, by_object)


# -- the workload ------------------------------------------------------------------------------
class Writer:
    """Emits events with increasing timestamps and applies them to a ``Directory``."""

    def __init__(self, directory: Directory, prefix: str, clock: Clock) -> None:
        self.d = directory
        self.prefix = prefix
        self.clock = clock
        self.n = 0

    def __call__(self, type_: str, **data: Any) -> dict[str, Any]:
        self.n += 1
        event = {"id": f"evt-{self.prefix}-{self.n}", "type": type_,
                 "occurred_at": self.clock.next(), "data": data}  # fmt: skip
        self.d.apply(event)
        return event


@dataclass
class Workload:
    initial_events: list[dict[str, Any]]
    churn_events: list[dict[str, Any]]
    before: Directory
    after: Directory
    ops: Counter


def churn_workload(users: int = 200, groups: int = 10, seed: int = 7) -> Workload:
    rng = random.Random(seed)
    clock = Clock()
    d = Directory()
    emit = Writer(d, "init", clock)
    uids = [f"u-{i:04d}" for i in range(users)]
    gids = [f"g-{i}" for i in range(groups)]
    initial: list[dict[str, Any]] = []
    for i, u in enumerate(uids):
        state = "suspended" if i % 40 == 5 else "active"
        initial.append(emit("user.created", user=user_record(u, rng, state)))
    for i, g in enumerate(gids):
        initial.append(emit("group.created", group={"id": g, "name": f"dept-{i}"}))
    grouped = uids[: int(users * 0.9)]  # the last 10% are in no group
    for u in grouped:
        for g in rng.sample(gids, rng.choice((1, 1, 2, 2, 3))):
            initial.append(emit("group.member_added", group_id=g, user_id=u))
    # associated: all but the last two groups; two ungrouped users directly
    associated, spare = gids[:-2], gids[-2:]
    for g in associated:
        initial.append(emit("app.group_associated", app_id=APP, group_id=g))
    loners = uids[int(users * 0.9) :]
    for u in loners[:2]:
        initial.append(emit("app.user_associated", app_id=APP, user_id=u))
    before = d.copy()

    # the churn, as operations (each a sequence of events) interleaved at random
    deleted_group, disassociated, newly_associated = associated[5], associated[-1], spare[0]
    bulk_group = associated[2]
    calm_groups = [g for g in gids if g not in (deleted_group, disassociated)]
    deleted_users = rng.sample([u for u in grouped if before.users[u]["state"] != "suspended"], 3)
    live = [u for u in uids if u not in deleted_users]
    ops: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []

    def op(kind: str, *events: tuple[str, dict[str, Any]]) -> None:
        ops.append((kind, list(events)))

    def member(g: str, u: str, added: bool = True) -> tuple[str, dict[str, Any]]:
        return ("group.member_added" if added else "group.member_removed",
                {"group_id": g, "user_id": u})  # fmt: skip

    pairs_in = [(g, u) for g in calm_groups for u in sorted(before.members.get(g, ())) if u in live]
    pairs_out = [(g, u) for g in calm_groups for u in live if u not in before.members.get(g, ())]
    rng.shuffle(pairs_in)
    rng.shuffle(pairs_out)
    for g, u in pairs_out[:400]:
        op("membership add", member(g, u))
    for g, u in pairs_in[:200]:
        op("membership remove", member(g, u, False))
    for g, u in pairs_out[400:480]:
        op("flap: add then remove", member(g, u), member(g, u, False))
    for g, u in pairs_in[200:240]:
        op("flap: remove then add", member(g, u, False), member(g, u))
    outside = [u for u in live if u not in before.members.get(bulk_group, ())]
    for u in rng.sample(outside, min(120, len(outside))):
        op("bulk add to one group", member(bulk_group, u))
    op("rename", ("group.renamed", {"group_id": associated[0], "name": "dept-0-renamed"}))
    op("rename twice", ("group.renamed", {"group_id": associated[3], "name": "dept-3-a"}),
       ("group.renamed", {"group_id": associated[3], "name": "dept-3-b"}))  # fmt: skip
    op("flap: rename and back", ("group.renamed", {"group_id": associated[4], "name": "tmp"}),
       ("group.renamed", {"group_id": associated[4], "name": before.groups[associated[4]]}))  # fmt: skip
    active = [u for u in live if before.users[u]["state"] == "active"]
    rng.shuffle(active)
    for u in active[:25]:
        op("suspend", ("user.suspended", {"user_id": u}))
    for u in active[25:40]:
        op("flap: suspend then activate", ("user.suspended", {"user_id": u}),
           ("user.activated", {"user_id": u}))  # fmt: skip
    for u in [u for u in live if before.users[u]["state"] == "suspended"][:3]:
        op("activate", ("user.activated", {"user_id": u}))
    for u in active[40:90]:
        record = {**before.users[u], "department": "Platform", "displayname": f"{u} (moved)"}
        op("attribute update", ("user.updated", {"user": record}))
    for u in active[90:110]:
        record = {**before.users[u], "lastname": "Temporary"}
        op("flap: update then revert", ("user.updated", {"user": record}),
           ("user.updated", {"user": dict(before.users[u])}))  # fmt: skip
    for i in range(15):
        u = f"u-{users + i:04d}"
        op("new user in a group", ("user.created", {"user": user_record(u, rng)}),
           member(rng.choice(associated[:5]), u))  # fmt: skip
    for u in deleted_users:
        op("user deleted", ("user.deleted", {"user_id": u}))
    op("group associated", ("app.group_associated", {"app_id": APP, "group_id": newly_associated}))
    op("group disassociated",
       ("app.group_disassociated", {"app_id": APP, "group_id": disassociated}))  # fmt: skip
    op("group deleted", ("group.deleted", {"group_id": deleted_group}))
    op("direct association", ("app.user_associated", {"app_id": APP, "user_id": loners[3]}))
    op("direct disassociation",
       ("app.user_disassociated", {"app_id": APP, "user_id": loners[0]}))  # fmt: skip

    # the ops touching the disassociated or the deleted group must not race with them
    kinds = Counter(kind for kind, _ in ops)
    emit = Writer(d, "churn", clock)
    queues = [list(events) for _, events in ops]
    churn: list[dict[str, Any]] = []
    while queues:
        i = rng.randrange(len(queues))
        type_, data = queues[i].pop(0)
        churn.append(emit(type_, **data))
        if not queues[i]:
            queues[i] = queues[-1]
            queues.pop()
    return Workload(initial, churn, before, d.copy(), kinds)


# -- running it --------------------------------------------------------------------------------
def _timed_scim_server(bulk: bool = False):  # noqa: ANN202
    """The tests' ScimServer, with a log of (time, method, path, member ops) for the analysis."""
    import io

    from tests.support.scimserver import ScimServer

    class TimedScimServer(ScimServer):
        def __init__(self) -> None:
            super().__init__(bulk=bulk)
            self.timed: list[tuple[float, str, str, str]] = []

        def _wsgi(self, environ, start_response):  # noqa: ANN001, ANN202
            detail = ""
            if environ["REQUEST_METHOD"] == "PATCH":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(body)
                try:
                    ops = json.loads(body).get("Operations", [])
                    detail = " ".join(
                        sorted(
                            f"{o.get('op')}:{o.get('path', '')[:11]}"
                            f"x{len(o.get('value') or []) or 1}"
                            for o in ops
                        )
                    )
                except ValueError:
                    detail = "?"
            self.timed.append((time.monotonic(), environ["REQUEST_METHOD"],
                               environ.get("PATH_INFO", ""), detail))  # fmt: skip
            return super()._wsgi(environ, start_response)

    return TimedScimServer()


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    return path


@dataclass
class ChurnResult:
    shape: str
    rate: str
    users: int
    groups: int
    initial_events: int
    churn_events: int
    ops: Counter
    sent: Counter  # (resource, method) -> calls during the churn
    reads: int
    minimal: Minimal
    seconds: float
    initial_seconds: float
    initial_problems: list[str]
    final_problems: list[str]
    excess: list[tuple[str, int, int]]  # object, sent, minimal (objects sent more than minimal)
    timeline: list[tuple[float, str, str, str]]  # (seconds after publish, method, object, ops)

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    @property
    def ratio(self) -> float:
        return self.sent_total / max(1, self.minimal.total)


def check_app(scim: Any, directory: Directory, expected: View,
              in_app_groups: dict[str, tuple[str, frozenset[str]]],
              deactivated: set[str]) -> list[str]:  # fmt: skip
    """Differences between the app (read over SCIM) and what the model predicts."""
    problems: list[str] = []
    remote_users = {u["userName"]: u for u in scim.users()}
    username = {u: r["username"] for u, r in directory.users.items()}
    for u, attrs in expected.users.items():
        got = remote_users.get(attrs["userName"])
        if got is None:
            problems.append(f"user {u} missing")
        elif bool(got.get("active")) != attrs["active"]:
            problems.append(f"user {u} active={got.get('active')}, expected {attrs['active']}")
        elif got.get("displayName") != attrs["displayName"]:
            problems.append(f"user {u} displayName={got.get('displayName')!r}")
    for u in deactivated:
        got = remote_users.get(username[u])
        if got is not None and got.get("active"):
            problems.append(f"user {u} still active, expected deactivated")
    by_id = {u["id"]: u["userName"] for u in remote_users.values()}
    remote_groups = {g["displayName"]: g for g in scim.groups()}
    for g, (name, members) in in_app_groups.items():
        got = remote_groups.get(name)
        if got is None:
            problems.append(f"group {g} ({name}) missing")
            continue
        names = {by_id.get(m["value"], m["value"]) for m in got.get("members") or []}
        want = {username[m] for m in members}
        if names != want:
            problems.append(f"group {g} members: {len(names - want)} extra, "
                            f"{len(want - names)} missing")  # fmt: skip
    return problems


def run(
    workdir: Path,
    shape: PoolShape,
    users: int = 200,
    groups: int = 10,
    rate: float | None = None,
    bulk: bool = False,
) -> ChurnResult:
    """``rate``: requests/s of the app during the churn (None: the profile's default); with
    ``bulk``, the SCIM server announces Bulk (issue 15)."""
    from worker.cli.status import snapshot

    w = churn_workload(users, groups)
    initial_view, final_view = view(w.before), view(w.after)
    name = "churn-bulk" if bulk else "churn"
    with (
        common.redis_server(workdir, name) as (server, client),
        _timed_scim_server(bulk) as scim,
    ):
        # The deletion guard would hold the churn's deactivations (suspensions count) for an
        # administrator's approval: this measures the calls, so its threshold is lifted.
        pool = common.start_pool(server.url, shape, {"PROVISIONER_GUARD_MINIMUM": "1000000"})
        try:
            # the initial directory is provisioned without the rate limit (faster set-up) ...
            activate = common.activate_when_ready(server.url, client, shape.processes, scim,
                                                  workdir, APP, "--rate", "10000", "--burst", "1000")  # fmt: skip
            t0 = time.monotonic()
            common.cli(
                server.url, "replay", str(_write(workdir / "churn-initial.jsonl", w.initial_events))
            )
            initial_seconds = common.settled(client, 900) - t0
            # ... the churn runs at the profile's rate (Zscaler: 5 requests/s), or ``rate``
            from worker.scim.profiles import ZSCALER

            churn_rate = rate or ZSCALER.requests_per_second
            burst = max(1, int(rate)) if rate else ZSCALER.burst
            common.cli(server.url, *activate, "--rate", f"{churn_rate:g}", "--burst", str(burst))
            common.settled(client, 900)
            initial_problems = check_app(scim, w.before, initial_view,
                                         app_groups_of(initial_view), set())  # fmt: skip
            remote = _remote_objects(scim, w.before)
            scim.clear_requests()
            scim.timed.clear()
            t0 = time.monotonic()
            common.cli(server.url, "replay", str(_write(workdir / "churn.jsonl", w.churn_events)))
            seconds = common.settled(client, 900) - t0
            requests = list(scim.requests)
            state = snapshot(client)
            stuck = [f"{len(a.get('held') or {})} held by the deletion guard, "
                     f"{len(a.get('parked') or {})} parked" for a in state["apps"].values()
                     if a.get("held") or a.get("parked")]  # fmt: skip
            timeline = [(t - t0, m, p, d) for t, m, p, d in scim.timed]
            # expected at the end: groups managed before or created now; disassociated ones as-is
            before_groups = app_groups_of(initial_view)
            final_groups = {g: nm for g, nm in final_view.groups.items()
                            if g in before_groups or nm[1]}  # fmt: skip
            for g, nm in before_groups.items():
                if g not in final_view.groups and g not in w.after.deleted_groups:
                    final_groups[g] = nm  # disassociated: left as it was
            deactivated = set(initial_view.users) - set(final_view.users)
            final_problems = stuck + check_app(scim, w.after, final_view, final_groups,
                                               deactivated)  # fmt: skip
            remote.update(_remote_objects(scim, w.after))
        finally:
            pool.stop()
    minimal = minimal_calls(w.before, w.after)
    sent: Counter = Counter()
    per_object: Counter = Counter()
    reads = 0
    for method, path in requests:
        parts = path.strip("/").split("/")
        resource = parts[1] if len(parts) > 1 else path
        if method not in WRITE_METHODS:
            reads += 1
            continue
        sent[(resource, method)] += 1
        if len(parts) > 2:
            per_object[remote.get(parts[2], f"remote:{parts[2]}")] += 1
    excess = sorted(((obj, n, minimal.by_object.get(obj, 0)) for obj, n in per_object.items()
                     if n > minimal.by_object.get(obj, 0)), key=lambda r: (r[2] - r[1], r[0]))  # fmt: skip
    return ChurnResult(str(shape), f"{churn_rate:g}/s (burst {burst})", users, groups, len(w.initial_events), len(w.churn_events),
                       w.ops, sent, reads, minimal, seconds, initial_seconds, initial_problems,
                       final_problems, excess,
                       [(t, m, _object(p, remote), d) for t, m, p, d in timeline])  # fmt: skip


def _object(path: str, remote: dict[str, str]) -> str:
    parts = path.strip("/").split("/")
    if len(parts) > 2:
        return remote.get(parts[2], parts[2])
    return parts[-1]


def _remote_objects(scim: Any, directory: Directory) -> dict[str, str]:
    """Remote id -> "user:<id>" / "group:<id>" (by userName and by the group's final name)."""
    by_username = {r["username"]: u for u, r in directory.users.items()}
    by_name = {name: g for g, name in directory.groups.items()}
    out = {}
    for u in scim.users():
        out[u["id"]] = f"user:{by_username.get(u['userName'], u['userName'])}"
    for g in scim.groups():
        out[g["id"]] = f"group:{by_name.get(g['displayName'], g['displayName'])}"
    return out
