"""Journal commands: ``replay --since T [--until T]`` (called by ``worker.cli.main.replay``) and
``rebuild [--from-snapshot FILE]``. Imports are lazy: the command line must start cheaply."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

import click

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def replay_journal(since: str, until: str | None, dry_run: bool) -> int:
    """Re-publish the events accepted in ``[--since, --until)``; ``--dry-run`` checks and counts."""
    from worker.apps import rebuild as rebuilder
    from worker.config import redis_client
    from worker.store import journal, scripts

    client = redis_client()
    try:
        now = scripts.redis_now_ms(client) / 1000  # the journal's clock: -30m is Redis's
        start = journal.parse_time(since, now) if since else None
        end = journal.parse_time(until, now) if until else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    span = f"since {since or 'the start'} until {until or 'now'}"
    try:
        if dry_run:
            bounds = journal.stream_bounds(client, start, end)
            total = journal.validate(client, bounds) if bounds else 0
            print(f"{total} valid journal events {span}; nothing published (--dry-run)")
            return EXIT_OK
        result = rebuilder.replay_range(client, start, end, progress=sys.stderr)
    except journal.JournalError as error:
        print(f"replay of the journal {span} stopped:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    print(f"republished {result.events} journal events {span} ({len(result.batches)} batches)")
    return EXIT_OK


@click.command(short_help="wipe the directory projection, replay the journal, full sync every app")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option(
    "--from-snapshot",
    metavar="FILE",
    help="start from this full-state snapshot (- for standard input), then the journal's newer "
    "events: works after the journal was trimmed",
)
def rebuild(yes: bool, from_snapshot: str | None) -> int:
    """Wipe the directory projection, rebuild it from the journal (or a snapshot and the
    journal's newer events), then a full sync of every app."""
    from producers import snapshot
    from worker.apps import rebuild as rebuilder
    from worker.config import redis_client
    from worker.store import journal

    refused = None if yes else _unconfirmed(from_snapshot)
    if refused is not None:
        return refused
    try:
        if from_snapshot:
            with _spooled(from_snapshot) as path:
                client = redis_client()
                seed = snapshot.SnapshotSeed.load(client, path)
                result = rebuilder.rebuild(client, progress=sys.stderr, snapshot=seed)
        else:
            result = rebuilder.rebuild(redis_client(), progress=sys.stderr)
    except (journal.JournalError, snapshot.SnapshotError) as error:
        print("rebuild refused:", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    synced = ", ".join(f"{app} ({n} objects)" for app, n in result.synced.items()) or "no app"
    seeded = f"{result.seeded} snapshot events and " if from_snapshot else ""
    print(
        f"rebuilt the projection from {seeded}{result.events} journal events "
        f"({result.wiped} keys wiped); full sync of {synced}"
    )
    return EXIT_OK


def _unconfirmed(from_snapshot: str | None) -> int | None:
    """Without ``--yes``: ask on a terminal; the exit code when rebuild must not go on."""
    if from_snapshot == "-":
        print("rebuild --from-snapshot - reads standard input: confirm with --yes", file=sys.stderr)
        return EXIT_USAGE
    if not sys.stdin.isatty():
        print("rebuild wipes the directory projection: confirm with --yes", file=sys.stderr)
        return EXIT_USAGE
    source = f"the snapshot {from_snapshot} and the journal" if from_snapshot else "the journal"
    answer = input(f"Wipe the directory projection and rebuild it from {source}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing done")
        return EXIT_FAIL
    return None


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
