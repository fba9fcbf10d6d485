"""``provisioner verify APP [--fix] [--json]``: drift between an application and the directory
(``worker/sync/verify.py`` does the work; this module parses and prints; ``worker.cli.main``
adds the command).

Exit code: 0 no drift, 1 drift found (repaired or not), 2 not verified (an unknown app,
another verify of it running, the application unreadable)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from worker import config

if TYPE_CHECKING:
    from worker.sync.verify import Report

EXIT_OK, EXIT_DRIFT, EXIT_NOT_VERIFIED = 0, 1, 2


@click.command(
    short_help="compare an application with the directory (drift); --fix repairs it",
    help="Read the application in pages, within its rate limit and after live changes, and "
    "compare it with what the directory says it should hold. Exit code 0: no drift; 1: drift "
    "found; 2: not verified.",
)
@click.argument("app_id", metavar="APP")
@click.option(
    "--fix",
    is_flag=True,
    help="read each drifted object back and reconcile it through the normal path",
)
@click.option("--json", "as_json", is_flag=True)
def verify(app_id: str, fix: bool, as_json: bool) -> int:
    from worker.store.apps import AppError
    from worker.sync import verify as drift

    try:
        report = drift.run(config.redis_client(), app_id, fix=fix)
    except AppError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_VERIFIED
    print(json.dumps(report.as_json(), indent=2) if as_json else render(report))
    if report.error:
        return EXIT_NOT_VERIFIED
    return EXIT_DRIFT if report.drift else EXIT_OK


def render(report: Report, limit: int = 50) -> str:
    """The human summary of ``verify``."""
    groups = "" if report.groups_in_app is None else f" and {report.groups_in_app:,} groups"
    head = (
        f"{report.app}: {report.users_in_app:,} users{groups} read in {report.calls:,} calls "
        f"({report.seconds:.1f} s"
        + (f", {report.waited:.1f} s of it waiting for live changes" if report.waited else "")
        + ")"
    )
    if report.error:
        return f"{report.app}: not verified: {report.error}"
    lines = [head]
    if report.busy:
        lines.append(f"{report.busy} objects not judged: reconciled or queued meanwhile")
    if not report.drift:
        lines.append("no drift: the application holds what the directory says")
        return "\n".join(lines)
    counts = ", ".join(f"{k} {n}" for k, n in report.counts().items())
    lines.append(f"drift: {len(report.drift)} ({counts})")
    lines += [f"  {d.kind:<22} {d.object:<24} {d.detail}" for d in report.drift[:limit]]
    if len(report.drift) > limit:
        lines.append(f"  ... and {len(report.drift) - limit} more (--json lists them all)")
    if report.fix:
        if report.marked:
            lines.append(
                f"repair: {report.marked} objects read back and reconciled through the normal "
                "path (audit: outcome drift); `provisioner wait`, then verify again"
            )
        else:
            lines.append("repair: the app is not syncing; its activation's full sync repairs")
    else:
        lines.append(f"`provisioner verify {report.app} --fix` repairs it")
    return "\n".join(lines)
