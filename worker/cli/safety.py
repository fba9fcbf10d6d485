"""Commands for work the engine set aside: ``retry`` parked keys, ``approve``/``reject`` what
the deletion guard holds (issue 5). ``worker.cli.main`` adds them; the engine is imported when
one runs (Celery is slow to import)."""

from __future__ import annotations

import click

from worker import config


@click.command(short_help="retry parked objects of an app now")
@click.argument("app_id", metavar="APP")
@click.option("--object", "object_id", metavar="ID", help="only this user or group id")
def retry(app_id: str, object_id: str | None) -> int:
    """Retry the parked objects of an app (or only --object ID) now."""
    from worker.queue.celery_app import send_reconcile
    from worker.queue.workqueue import Workqueue

    client = config.redis_client()
    queue = Workqueue(client)
    chosen = [k for k in queue.parked(app_id) if object_id is None or k.id == object_id]
    for key in chosen:
        queue.unpark(key)
    send_reconcile(queue.mark(chosen))
    print(f"retrying {len(chosen)} parked object(s) of {app_id}")
    return 0


@click.command(short_help="let the deactivations the deletion guard holds go")
@click.argument("app_id", metavar="APP")
def approve(app_id: str) -> int:
    """Let the deactivations and deletions the deletion guard holds for an app go ahead."""
    from worker.queue.celery_app import send_reconcile
    from worker.queue.workqueue import Workqueue
    from worker.sync import guard

    client = config.redis_client()
    held_keys = guard.approve(client, app_id)
    send_reconcile(Workqueue(client).mark(held_keys))
    _audit(app_id, f"deletion guard: approved {len(held_keys)} held deactivations/deletions")
    print(f"approved: {len(held_keys)} held call(s) of {app_id} go ahead")
    return 0


@click.command(short_help="drop the deactivations the deletion guard holds")
@click.argument("app_id", metavar="APP")
def reject(app_id: str) -> int:
    """Drop the deactivations and deletions the deletion guard holds; the objects stay as-is."""
    from worker.sync import guard

    held_keys = guard.reject(config.redis_client(), app_id)
    _audit(app_id, f"deletion guard: rejected {len(held_keys)} held deactivations/deletions")
    print(f"rejected: {len(held_keys)} held call(s) of {app_id} dropped; the objects stay as-is")
    return 0


def _audit(app_id: str, detail: str) -> None:
    """Audit a decision on what the deletion guard held."""
    from worker.store import audit
    from worker.store.audit import AuditEntry

    audit.record(config.redis_client(), AuditEntry("idm_integration_update", app_id,
                                                   f"app:{app_id}", "success", None, detail))  # fmt: skip
