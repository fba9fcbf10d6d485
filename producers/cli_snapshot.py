"""``provisioner snapshot FILE|- [--dry-run] [--allow-deletions N] [--show N]`` (issue 11): the
events that take the projection to a full-state directory snapshot (``docs/snapshot.md``).
Imports are lazy: the command line must start cheaply (``worker.cli.main`` adds the command).

Exit codes: 0 published (or, with ``--dry-run``, would be); 1 refused, an invalid snapshot
(each problem by line and field) or a file that cannot be read; 2 usage; 3 refused by the
deletion guard (more deletions than its share and than ``--allow-deletions``). Nothing is
published unless the exit code is 0.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from producers.snapshot import SnapshotResult

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_GUARD = 0, 1, 2, 3


@click.command(
    short_help="publish the events that take the projection to a full-state directory snapshot"
)
@click.argument("file", metavar="FILE")
@click.option("--dry-run", is_flag=True, help="print the difference, publish nothing")
@click.option(
    "--allow-deletions",
    type=int,
    metavar="N",
    help="let up to N users and N groups be deleted, beyond the deletion guard's share",
)
@click.option("--show", type=int, default=20, show_default=True, metavar="N", help="events printed")
def snapshot(file: str, dry_run: bool, allow_deletions: int | None, show: int) -> int:
    """Publish the events that take the projection to the full-state directory snapshot FILE
    (JSON Lines; - for standard input). Exit code 0: published (or, with --dry-run, would be);
    1: refused, nothing published; 3: refused by the deletion guard."""
    from producers import snapshot as snapshots
    from worker.config import redis_client

    if allow_deletions is not None and allow_deletions < 0:
        print("error: --allow-deletions takes a count, 0 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = snapshots.publish_snapshot(
            redis_client(),
            snapshots.file_lines(file),
            dry_run=dry_run,
            allow_deletions=allow_deletions,
            show=show,
            progress=sys.stderr,
        )
    except snapshots.DeletionsRefused as error:
        print("\n".join(describe(error.result, show)))
        print(f"refused {file} (deletion guard): nothing was published", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_GUARD
    except snapshots.SnapshotError as error:
        print(f"refused {file}: nothing was published", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    print("\n".join(describe(result, show)))
    if result.dry_run:
        print(f"{result.events} events; nothing published (--dry-run)")
    else:
        print(f"published {result.published} events ({result.duplicates} duplicates skipped)")
    return EXIT_OK


def describe(result: SnapshotResult, show: int) -> list[str]:
    """The difference a snapshot makes: its size, events per type, the first ``show``."""
    taken = result.taken_at.isoformat().replace("+00:00", "Z") if result.taken_at else "?"
    out = [
        f"snapshot of {result.source} taken at {taken}: {result.users} users, "
        f"{result.groups} groups, {result.apps} apps ({result.lines} lines)",
        f"projection: {result.held.get('user', 0)} users, {result.held.get('group', 0)} groups",
        f"difference: {result.events} events",
    ]
    out += [f"  {kind:<26} {n:>9,}" for kind, n in sorted(result.counts.items())]
    for label, counts in (
        ("listed but deleted before (deletion is terminal; left deleted)", result.deleted_before),
        ("lacking but kept: written by events newer than the snapshot", result.kept_newer),
    ):
        if any(counts.values()):
            out.append(f"{label}: " + ", ".join(f"{n} {k}s" for k, n in sorted(counts.items())))
    if result.sample and show:
        out.append(f"first {len(result.sample)} events:")
        out += [f"  {json.dumps(event)}" for event in result.sample]
    return out
