"""Journal commands: ``replay --since T [--until T]`` (called by ``worker.cli.main.cmd_replay``) and
``rebuild [--from-snapshot FILE]``. Imports are lazy: building the parser must stay cheap."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def cmd_replay_journal(args: argparse.Namespace) -> int:
    """Re-publish the events accepted in ``[--since, --until)``; ``--dry-run`` checks and counts."""
    from worker.apps import rebuild
    from worker.config import redis_client
    from worker.store import journal

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
        result = rebuild.replay_range(client, since, until, progress=sys.stderr)
    except journal.JournalError as error:
        print(f"replay of the journal {span} stopped:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    print(f"republished {result.events} journal events {span} ({len(result.batches)} batches)")
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from producers import snapshot
    from worker.apps import rebuild
    from worker.config import redis_client
    from worker.store import journal

    source = f"the snapshot {args.from_snapshot} and the journal" if args.from_snapshot else (
        "the journal")  # fmt: skip
    if args.from_snapshot == "-" and not args.yes:
        print("rebuild --from-snapshot - reads standard input: confirm with --yes", file=sys.stderr)
        return EXIT_USAGE
    if not args.yes:
        if not sys.stdin.isatty():
            print("rebuild wipes the directory projection: confirm with --yes", file=sys.stderr)
            return EXIT_USAGE
        answer = input(f"Wipe the directory projection and rebuild it from {source}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAIL
    try:
        if args.from_snapshot:
            with _spooled(args.from_snapshot) as path:
                client = redis_client()
                seed = snapshot.SnapshotSeed.load(client, path)
                result = rebuild.rebuild(client, progress=sys.stderr, snapshot=seed)
        else:
            result = rebuild.rebuild(redis_client(), progress=sys.stderr)
    except (journal.JournalError, snapshot.SnapshotError) as error:
        print("rebuild refused:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    synced = ", ".join(f"{app} ({n} objects)" for app, n in result.synced.items()) or "no app"
    seeded = f"{result.seeded} snapshot events and " if args.from_snapshot else ""
    print(
        f"rebuilt the projection from {seeded}{result.events} journal events "
        f"({result.wiped} keys wiped); full sync of {synced}"
    )
    return EXIT_OK


@contextlib.contextmanager
def _spooled(path: str) -> Iterator[str]:
    """A path to read twice: ``path`` itself, or standard input copied to a temporary file."""
    if path != "-":
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="snapshot-", suffix=".jsonl") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy)
        copy.flush()
        yield copy.name


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add this module's subcommands to ``provisioner``."""
    p = commands.add_parser(
        "rebuild", help="wipe the directory projection, replay the journal, full sync every app"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--from-snapshot",
        metavar="FILE",
        help="start from this full-state snapshot (- for standard input), then the journal's "
        "newer events: works after the journal was trimmed",
    )
    p.set_defaults(func=cmd_rebuild)
