"""Administration commands (issue 4): the integration's lifecycle (``apps activate|update|
reauth|deactivate|remove``), attribute ``apps mappings``, manual ``import``, and provisioning on
demand (``explain``, ``sync``). The work is done in ``lifecycle``, ``mappings``, ``importer``
and ``explain``; this module parses and prints."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import redis

from worker import config
from worker.store.apps import AppConfig, AppError

EXIT_OK, EXIT_FAIL = 0, 1


def _redis() -> redis.Redis:
    return config.redis_client()


def _app(client: redis.Redis, app_id: str) -> AppConfig:
    from worker.store import apps

    app = apps.load(client, app_id)
    if app is None:
        raise AppError(f"no app {app_id!r} (see `provisioner apps list`)")
    return app


def _refused(what: str, error: Exception) -> int:
    print(f"{what}: {error}", file=sys.stderr)
    return EXIT_FAIL


# -- lifecycle ---------------------------------------------------------------------------------
def cmd_activate(args: argparse.Namespace) -> int:
    from worker.apps import lifecycle

    try:
        result = lifecycle.activate(
            _redis(),
            args.app_id,
            base_url=args.base_url,
            token_file=args.token_file,
            profile=args.profile,
            group_management=args.group_management,
            user_delete_policy=args.user_delete_policy,
            rate=args.rate,
            burst=args.burst,
            listing=args.listing,
        )
    except lifecycle.Refused as error:
        return _refused("refused", error)
    app = result.app
    print(
        f"activated {app.id} ({app.profile}) against {app.base_url}; "
        f"full sync of {result.marked} objects"
    )
    if result.listing is not None:
        print(f"  {result.listing.describe()}")
    return EXIT_OK


def cmd_update(args: argparse.Namespace) -> int:
    from worker.apps import lifecycle

    dry_run = None if args.dry_run is None else args.dry_run == "on"
    try:
        result = lifecycle.update(
            _redis(),
            args.app_id,
            base_url=args.base_url,
            profile=args.profile,
            group_management=args.group_management,
            user_delete_policy=args.user_delete_policy,
            dry_run=dry_run,
            rate=args.rate,
            burst=args.burst,
            verify_every=args.verify_every,
            verify_fix=None if args.verify_fix is None else args.verify_fix == "on",
        )
    except lifecycle.Refused as error:
        return _refused("refused", error)
    if not result.changes:
        print(f"{args.app_id}: nothing to change")
        return EXIT_OK
    print(f"updated {args.app_id}: {'; '.join(result.changes)}; {result.marked} reconciles")
    return EXIT_OK


def cmd_reauth(args: argparse.Namespace) -> int:
    from worker.apps import lifecycle

    try:
        lifecycle.reauth(_redis(), args.app_id, args.token_file)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(f"new token of {args.app_id} verified; `provisioner apps activate {args.app_id}` resumes")
    return EXIT_OK


def cmd_deactivate(args: argparse.Namespace) -> int:
    from worker.apps import lifecycle

    try:
        result = lifecycle.deactivate(_redis(), args.app_id, drain_seconds=args.wait)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(
        f"deactivated {args.app_id}: syncing stopped, {result.dropped} queued reconciles "
        "dropped, nothing removed from the application"
    )
    if result.still_in_flight:
        print(f"  {result.still_in_flight} reconciles are finishing their last call")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from worker.apps import lifecycle

    try:
        lifecycle.remove(_redis(), args.app_id)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(f"removed {args.app_id}: configuration and mirror forgotten; the application is as-is")
    return EXIT_OK


# -- mappings ----------------------------------------------------------------------------------
def cmd_mappings(args: argparse.Namespace) -> int:
    from worker.apps import mappings

    client = _redis()
    if args.exclude or args.include or args.restore_defaults:
        change = mappings.change(
            client,
            args.app_id,
            exclude=args.exclude,
            include=args.include,
            restore=args.restore_defaults,
        )
        if change.excluded or change.included:
            done = [f"excluded {', '.join(change.excluded)}"] if change.excluded else []
            done += [f"included {', '.join(change.included)}"] if change.included else []
            done.append(f"{change.marked} users re-synced")
            print(f"{args.app_id}: {'; '.join(done)}", file=sys.stderr)
        else:
            print(f"{args.app_id}: mappings unchanged", file=sys.stderr)
    rows = mappings.table(_app(client, args.app_id))
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return EXIT_OK
    print(f"{'SCIM attribute':<18} {'directory property':<20} {'mapping':<9} included")
    for row in rows:
        kind = "required" if row.required else "optional"
        print(f"{row.attribute:<18} {row.property:<20} {kind:<9} {'yes' if row.included else 'no'}")
    return EXIT_OK


# -- import ------------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from worker.apps import importer
    from worker.scim import ScimError
    from worker.sync.runner import Clients

    client = _redis()
    app = _app(client, args.app_id)
    scim, _ = Clients().get(app)
    try:
        found, suspended = importer.candidates(client, scim)
    except ScimError as error:
        return _refused(f"cannot list the users of {app.id}", error)
    if args.list:
        rows = [c for c in found if c.status == "New"] if args.new_only else found
        if args.json:
            print(json.dumps([asdict(c) for c in rows], indent=2))
            return EXIT_OK
        for c in rows:
            name = c.attributes.get("displayName") or c.attributes.get("emails") or ""
            print(f"{c.status:<9} {c.remote_id:<38} {c.user_name:<32} {name}")
        print(
            f"{sum(c.status == 'New' for c in found)} new, "
            f"{sum(c.status == 'Imported' for c in found)} imported, "
            f"{suspended} suspended in the application (skipped)",
            file=sys.stderr,
        )
        return EXIT_OK
    try:
        chosen, notes = importer.select(found, None if args.all_new else args.select)
    except KeyError as error:
        raise AppError(
            f"not among the importable users of {app.id} (suspended users are skipped): "
            f"{error.args[0]}"
        ) from None
    for note in notes:
        print(f"skipped {note}", file=sys.stderr)
    if not chosen:
        print("nothing to import")
        return EXIT_OK
    job = importer.start(client, app.id, chosen)
    for refusal in job.refused:
        print(f"refused {refusal}", file=sys.stderr)
    if job.background:
        print(
            f"importing {job.total} users in the background (job {job.id}): progress in "
            "`provisioner status`, completion in `provisioner audit --name import_complete`"
        )
        return EXIT_OK
    applied = importer.wait_applied(client, job.id)
    print(f"imported {job.total} users from {app.id} into the directory (job {job.id})")
    if not applied:
        print("  (not yet applied to the directory projection: are workers running?)")
    return EXIT_OK


# -- explain and sync --------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    from worker.scim import ScimError
    from worker.scim.profiles import profile_by_name
    from worker.sync import explain
    from worker.sync.runner import Clients

    client = _redis()
    app = _app(client, args.app_id)
    scim, profile = None, profile_by_name(app.profile)
    if not args.offline:
        try:
            scim, profile = Clients().get(app)
        except (AppError, ScimError) as error:
            print(f"planning offline (lookups assumed to find nothing): {error}", file=sys.stderr)
    result = explain.explain(client, app, args.kind, args.object_id, scim, profile)
    print(json.dumps(result.as_dict(), indent=2) if args.json else explain.render(result))
    return EXIT_OK if result.error is None else EXIT_FAIL


def cmd_sync(args: argparse.Namespace) -> int:
    from worker.sync import explain

    client = _redis()
    _app(client, args.app_id)
    result = explain.sync_now(client, args.app_id, args.kind, args.object_id, args.timeout)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"{result.key}: {result.state}, {result.calls} calls")
        for line in result.trace:
            print(f"  {line}")
        for e in result.entries:
            print(f"  audit: {e['name']} {e['outcome']} {e['status'] or '-'} {e['detail']}")
    return EXIT_OK if result.state in ("done", "skipped") else EXIT_FAIL


# -- parsers -----------------------------------------------------------------------------------
def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add this module's subcommands to ``provisioner`` and ``provisioner apps``."""
    p = apps_commands.add_parser(
        "activate", help="verify an application and start syncing it (a full sync)"
    )
    p.add_argument("app_id")
    p.add_argument("--base-url", help="required for a new app")
    p.add_argument("--token-file", help="a file holding the bearer token (new app)")
    p.add_argument("--profile", choices=_profile_names())
    p.add_argument("--group-management", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--no-listing",
        dest="listing",
        action="store_false",
        help="look every object up one by one instead of listing the app's users and groups",
    )
    _common_settings(p)
    p.set_defaults(func=cmd_activate)

    p = apps_commands.add_parser(
        "update", help="change settings; sends exactly the reconciles the change needs"
    )
    p.add_argument("app_id")
    p.add_argument("--base-url")
    p.add_argument("--profile", choices=_profile_names())
    p.add_argument("--group-management", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--dry-run", choices=["on", "off"], help="plan and audit, send no write")
    p.add_argument(
        "--verify-every",
        type=_every,
        metavar="DURATION",
        help="run `verify` from the pool this often (24h, 30m, 7d; off: never)",
    )
    p.add_argument(
        "--verify-fix", choices=["on", "off"], help="the scheduled verify repairs drift (off)"
    )
    _common_settings(p)
    p.set_defaults(func=cmd_update)

    p = apps_commands.add_parser("reauth", help="a new token (only while deactivated)")
    p.add_argument("app_id")
    p.add_argument("--token-file", required=True)
    p.set_defaults(func=cmd_reauth)

    p = apps_commands.add_parser("deactivate", help="stop syncing; nothing is removed from the app")
    p.add_argument("app_id")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for reconciles")
    p.set_defaults(func=cmd_deactivate)

    p = apps_commands.add_parser("remove", help="forget a deactivated app's config and mirror")
    p.add_argument("app_id")
    p.set_defaults(func=cmd_remove)

    p = apps_commands.add_parser("mappings", help="show or change the user attribute mappings")
    p.add_argument("app_id")
    p.add_argument("--exclude", action="append", default=[], metavar="ATTR")
    p.add_argument("--include", action="append", default=[], metavar="ATTR")
    p.add_argument("--restore-defaults", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mappings)

    p = commands.add_parser("import", help="create an application's users in the directory")
    p.add_argument("app_id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="the app's users, New or Imported")
    what.add_argument("--select", nargs="+", metavar="ID", help="ids (or userNames) to import")
    what.add_argument("--all-new", action="store_true", help="every New user")
    p.add_argument("--new-only", action="store_true", help="with --list: only New users")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("explain", help="what a reconcile of one object would do (read-only)")
    _object_arguments(p)
    p.add_argument("--offline", action="store_true", help="send no request to the application")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("sync", help="reconcile one object now and print the trace")
    _object_arguments(p)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sync)


def _profile_names() -> list[str]:
    """The ``--profile`` choices: every profile of the table (``worker/scim/profiles.py``)."""
    from worker.scim.profiles import PROFILES

    return sorted(PROFILES)


def _every(text: str) -> float:
    from worker.sync.verify_schedule import parse_every

    try:
        return parse_every(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _common_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user-delete-policy", choices=["deactivate", "delete"])
    p.add_argument("--rate", type=float, help="requests/s for the whole pool (default: profile)")
    p.add_argument("--burst", type=int, help="requests allowed at once (default: profile)")


def _object_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("app_id")
    p.add_argument("kind", choices=["user", "group"])
    p.add_argument("object_id")
