"""``provisioner``: the one command line of the product (README, "CLI").

Every command reads ``REDIS_URL`` (or the local stack's Redis). Secrets are read from files
or the environment, never from arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import time
from typing import Any

from worker import config
from worker.store import apps, audit, learned
from worker.store.apps import AppConfig, AppError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DELEGATED = {"webhook": "producers.webhook", "sign": "producers.signing"}
# Modules whose ``register(commands, apps_commands)`` adds their own subcommands.
EXTENSIONS = (
    "worker.cli.admin",
    "worker.cli.safety",
    "worker.cli.journal",
    "worker.cli.verify",
    "producers.cli_snapshot",
    "producers.jumpcloud.cli",
)


def _redis():  # noqa: ANN202
    return config.redis_client()


# -- apps ------------------------------------------------------------------------------------
def cmd_apps_list(args: argparse.Namespace) -> int:
    from worker.sync.verify import last_result

    client = _redis()
    rows = [
        _app_row(a, learned.load(client, a.id), last_result(client, a.id))
        for a in apps.list_apps(client)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no apps; add one with `provisioner apps activate`")
    for row in rows:
        print(
            f"{row['id']:<20} {row['state']:<10} {row['profile']:<11} "
            f"groups={'on' if row['group_management'] else 'off':<4} {row['base_url']}"
            + _verify_text(row["verify"])
        )
    return EXIT_OK


def _verify_text(verify: dict[str, Any]) -> str:
    from worker.sync.verify_schedule import every_text

    text = f" verify every {every_text(verify['every'])}" if verify["every"] else ""
    last = verify["last"]
    if last is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last["started"]))
        found = f"error: {last['error']}" if last["error"] else f"{last['drift']} drift"
        text += f" (last {when}: {found})"
    return text


def cmd_apps_show(args: argparse.Namespace) -> int:
    """One integration: its settings and what the pool learned of the application."""
    from worker.scim import compat

    client = _redis()
    app = apps.load(client, args.app_id)
    if app is None:
        print(f"error: no app {args.app_id!r}", file=sys.stderr)
        return EXIT_FAIL
    knowledge = learned.load(client, app.id)
    row = _app_row(app, knowledge) | {
        "user_delete_policy": app.user_delete_policy,
        "excluded_attributes": list(app.excluded_attributes),
        "rate": app.rate,
        "burst": app.burst,
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return EXIT_OK
    for name, value in row.items():
        if name != "learned":
            print(f"{name}: {value}")
    nothing = not (knowledge.forms or knowledge.unsupported_attributes)
    print("learned from the application:" + (" nothing" if nothing else ""))
    for operation, form in sorted(knowledge.forms.items()):
        print(f"  {operation}: {compat.describe(operation, form)}")
    for attribute, why in sorted(knowledge.unsupported_attributes.items()):
        print(f"  {attribute}: unsupported ({why})")
    return EXIT_OK


def _app_row(
    app: AppConfig,
    knowledge: learned.Learned | None = None,
    last_verify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state = "paused" if app.paused else ("active" if app.active else "inactive")
    return {
        "id": app.id,
        "state": state,
        "profile": app.profile,
        "base_url": app.base_url,
        "group_management": app.group_management,
        "paused": app.paused,
        "learned": (knowledge or learned.Learned()).as_json(),
        "verify": _verify_row(app, last_verify),
    }


def _verify_row(app: AppConfig, last: dict[str, Any] | None) -> dict[str, Any]:
    """The verify schedule (seconds, None: none) and the last verify's result, in short."""
    summary = None
    if last is not None:
        summary = {k: last.get(k) for k in ("started", "seconds", "calls", "drift", "by_kind",
                                             "busy", "fix", "marked", "trigger", "error")}  # fmt: skip
    return {"every": app.verify_every, "fix": app.verify_fix, "last": summary}


# -- events ----------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from producers.replay import ReplayError, read_events, replay

    problem = (
        "give a FILE or --since T, not both" if args.file and args.since
        else "--until goes with --since" if args.until and not args.since
        else "give a FILE (- for standard input) or --since T" if not (args.file or args.since)
        else None
    )  # fmt: skip
    if problem:
        print(f"error: replay: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.since is not None:
        from worker.cli.journal import cmd_replay_journal

        return cmd_replay_journal(args)
    try:
        events = read_events(args.file)
    except ReplayError as error:
        print(f"refused {args.file}: nothing was published", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    if args.dry_run:
        print(f"{len(events)} valid events; nothing published (--dry-run)")
        return EXIT_OK
    result = replay(_redis(), events, progress=sys.stderr)
    print(f"published {len(result.accepted)} events ({len(result.duplicates)} duplicates skipped)")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    from worker.cli.status import idle, snapshot

    deadline = time.monotonic() + args.timeout
    client = _redis()
    while not idle(client):  # a cheap read: a backlog can hold many thousand keys
        if time.monotonic() > deadline:
            state = snapshot(client)
            print(
                f"still busy after {args.timeout}s: {json.dumps(state['queue'])}", file=sys.stderr
            )
            return EXIT_FAIL
        time.sleep(0.1)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from worker.cli.status import render, snapshot

    state = snapshot(_redis())
    print(json.dumps(state, indent=2) if args.json else render(state))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    since = time.time() - args.since * 60 if args.since else None
    entries = audit.read(
        _redis(),
        app=args.app,
        name=args.name,
        object_id=args.object,
        since=since,
        failed=args.failed,
        limit=args.limit,
    )
    for entry in entries:
        if args.json:
            print(json.dumps(entry))
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["time"]))
        print(
            f"{when} {entry['app']} {entry['name']:<24} {entry['object']:<28} "
            f"{entry['outcome']:<8} {entry['status'] or '-'} {entry['detail']}"
        )
    return EXIT_OK


# -- processes -------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE, celery

    celery().worker_main(
        [
            "worker",
            "--queues",
            f"{INGEST_QUEUE},{RECONCILE_QUEUE}",
            "--pool",
            args.pool,
            "--concurrency",
            str(args.concurrency),
            "--loglevel",
            args.loglevel,
            "--hostname",
            args.hostname,
            "--without-mingle",
            "--without-gossip",
        ]
    )
    return EXIT_OK


def cmd_stack(args: argparse.Namespace) -> int:
    from worker.devstack.stack import run_stack

    return run_stack(once=args.once, concurrency=args.concurrency, sample=args.sample, cli=main)


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioner",
        description="Keep a directory's users and groups in step with SCIM 2.0 applications.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="run the local stack: Redis, a SCIM app, workers, sample")
    p.add_argument("--once", action="store_true", help="exit after the sample is provisioned")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--sample", default=None, help="events to replay (default: examples/)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("worker", help="run a Celery worker (ingest and reconcile)")
    p.add_argument("--concurrency", type=int, default=4, help="tasks at once (4)")
    p.add_argument(
        "--pool",
        choices=("threads", "prefork"),
        default="threads",
        help="threads (the default: a reconcile mostly waits on Redis and the app, and threads "
        "skip prefork's hand-over of every task to a child process) or prefork",
    )
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", default="provisioner@%h")
    p.set_defaults(func=cmd_worker)

    # Commands whose own parser lives with their code (see DELEGATED in main()).
    sub.add_parser("webhook", help="run the webhook receiver (POST /v1/events)", add_help=False)
    sub.add_parser(
        "sign", help="print the signature header for a body read on stdin", add_help=False
    )

    p = sub.add_parser(
        "replay", help="publish v1 events from a file, or re-publish a range of the journal"
    )
    p.add_argument("file", nargs="?", help="JSON Lines or a JSON array; - for standard input")
    p.add_argument(
        "--since",
        metavar="T",
        help="journal events accepted from T: RFC 3339, or a time back: 2h, -2h, 30m, 7d",
    )
    p.add_argument("--until", metavar="T", help="... and before T (default: now)")
    p.add_argument("--dry-run", action="store_true", help="validate and count only")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("wait", help="exit 0 once every published event is applied and reconciled")
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("status", help="backlog, dirty keys, in flight, per app")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("audit", help="the provisioning audit log")
    p.add_argument("--app")
    p.add_argument("--name", help="an event name, e.g. user_create_provision")
    p.add_argument("--object", help="a user or group id")
    p.add_argument(
        "--since", type=audit.minutes_back, help="minutes back, -2h / 30m / 1d, or RFC 3339"
    )
    p.add_argument("--failed", action="store_true")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    apps_parser = sub.add_parser("apps", help="application integrations")
    apps_sub = apps_parser.add_subparsers(dest="apps_command", required=True, metavar="ACTION")
    p = apps_sub.add_parser("list", help="the integrations and their state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apps_list)
    p = apps_sub.add_parser("show", help="one integration and what was learned of its app")
    p.add_argument("app_id", metavar="APP")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apps_show)
    for module in EXTENSIONS:
        importlib.import_module(module).register(sub, apps_sub)
    return parser


def join_relative_times(argv: list[str]) -> list[str]:
    """``--since -2h`` as ``--since=-2h``: argparse would take ``-2h`` for an option."""
    joined: list[str] = []
    for word in argv:
        if joined and joined[-1] in TIME_OPTIONS and re.fullmatch(r"-\d+(\.\d+)?[a-z]*", word):
            joined[-1] += "=" + word
        else:
            joined.append(word)
    return joined


TIME_OPTIONS = ("--since", "--until")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        module = __import__(DELEGATED[argv[0]], fromlist=["main"])
        return module.main(argv[1:])
    args = build_parser().parse_args(join_relative_times(argv))
    try:
        return args.func(args)
    except AppError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
