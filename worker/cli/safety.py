"""Commands for work the engine set aside: ``retry`` parked keys, ``approve``/``reject`` what
the deletion guard holds (issue 5)."""

from __future__ import annotations

import argparse

from worker import config
from worker.queue.celery_app import send_reconcile
from worker.queue.workqueue import Workqueue
from worker.store import audit, keys
from worker.store.audit import AuditEntry
from worker.sync import guard


def cmd_retry(args: argparse.Namespace) -> int:
    client = config.redis_client()
    prefix = f"{args.app_id} "
    parked = [k.decode() for k in client.hkeys(keys.WQ_PARKED)]
    chosen = [
        k
        for k in parked
        if k.startswith(prefix) and (args.object is None or k.split(" ", 2)[2] == args.object)
    ]
    queue = Workqueue(client)
    for key in chosen:
        queue.unpark(key)
    send_reconcile(queue.mark(chosen))
    print(f"retrying {len(chosen)} parked object(s) of {args.app_id}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    client = config.redis_client()
    held_keys = guard.approve(client, args.app_id)
    send_reconcile(Workqueue(client).mark(held_keys))
    detail = f"deletion guard: approved {len(held_keys)} held deactivations/deletions"
    audit.record(client, AuditEntry("idm_integration_update", args.app_id,
                                    f"app:{args.app_id}", "success", None, detail))  # fmt: skip
    print(f"approved: {len(held_keys)} held call(s) of {args.app_id} go ahead")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    client = config.redis_client()
    held_keys = guard.reject(client, args.app_id)
    detail = f"deletion guard: rejected {len(held_keys)} held deactivations/deletions"
    audit.record(client, AuditEntry("idm_integration_update", args.app_id,
                                    f"app:{args.app_id}", "success", None, detail))  # fmt: skip
    print(
        f"rejected: {len(held_keys)} held call(s) of {args.app_id} dropped; the objects stay as-is"
    )
    return 0


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    p = commands.add_parser("retry", help="retry parked objects of an app now")
    p.add_argument("app_id")
    p.add_argument("--object", help="only this user or group id")
    p.set_defaults(func=cmd_retry)
    p = commands.add_parser("approve", help="let the deactivations the deletion guard holds go")
    p.add_argument("app_id")
    p.set_defaults(func=cmd_approve)
    p = commands.add_parser("reject", help="drop the deactivations the deletion guard holds")
    p.add_argument("app_id")
    p.set_defaults(func=cmd_reject)
