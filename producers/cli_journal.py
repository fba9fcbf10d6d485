"""Journal commands: ``replay --since T [--until T]`` (called by ``worker.cli.cmd_replay``) and
``rebuild`` (issue 3). Imports are lazy: building the parser must stay cheap."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def cmd_replay_journal(args: argparse.Namespace) -> int:
    """Re-publish the events accepted in ``[--since, --until)``; ``--dry-run`` checks and counts."""
    from producers import journal
    from worker.config import redis_client

    try:
        since = journal.parse_time(args.since) if args.since else None
        until = journal.parse_time(args.until) if args.until else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    client = redis_client()
    span = f"since {args.since or 'the start'} until {args.until or 'now'}"
    try:
        if args.dry_run:
            bounds = journal.stream_bounds(client, since, until)
            total = journal.validate(client, bounds) if bounds else 0
            print(f"{total} valid journal events {span}; nothing published (--dry-run)")
            return EXIT_OK
        result = journal.replay_range(client, since, until, progress=sys.stderr)
    except journal.JournalError as error:
        print(f"replay of the journal {span} stopped:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    print(f"republished {result.events} journal events {span} ({len(result.batches)} batches)")
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from producers import journal
    from worker.config import redis_client

    if not args.yes:
        if not sys.stdin.isatty():
            print("rebuild wipes the directory projection: confirm with --yes", file=sys.stderr)
            return EXIT_USAGE
        answer = input("Wipe the directory projection and rebuild it from the journal? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAIL
    try:
        result = journal.rebuild(redis_client(), progress=sys.stderr)
    except journal.JournalError as error:
        print("rebuild refused:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    synced = ", ".join(f"{app} ({n} objects)" for app, n in result.synced.items()) or "no app"
    print(
        f"rebuilt the projection from {result.events} journal events "
        f"({result.wiped} keys wiped); full sync of {synced}"
    )
    return EXIT_OK


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add this module's subcommands to ``provisioner``."""
    p = commands.add_parser(
        "rebuild", help="wipe the directory projection, replay the journal, full sync every app"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_rebuild)
