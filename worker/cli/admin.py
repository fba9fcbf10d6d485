"""Administration commands (issue 4): the integration's lifecycle (``apps activate|update|
reauth|deactivate|remove``), attribute ``apps mappings``, manual ``import``, and provisioning on
demand (``explain``, ``sync``). The work is done in ``lifecycle``, ``mappings``, ``importer``
and ``explain``; this module parses and prints. ``worker.cli.main`` adds the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Literal

import click
import redis

from worker import config
from worker.store.apps import AppConfig, AppError, Network

EXIT_OK, EXIT_FAIL = 0, 1
Kind = Literal["user", "group"]


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


# -- options shared by activate and update ------------------------------------------------------
class Profile(click.ParamType):
    """A profile of the table (``worker/scim/profiles.py``), which is read only when needed:
    it imports ``scim2_models``."""

    name = "profile"

    @property
    def choices(self) -> list[str]:
        from worker.scim.profiles import PROFILES

        return sorted(PROFILES)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[" + "|".join(self.choices) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value not in self.choices:
            self.fail(f"{value!r} is not one of {', '.join(self.choices)}", param, ctx)
        return value


def _every(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """``--verify-every``: seconds (None: off), as ``verify_schedule.parse_every`` reads it."""
    from worker.sync.verify_schedule import parse_every

    if value is None:
        return None
    try:
        return parse_every(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _settings(command: Callable[..., int]) -> Callable[..., int]:
    """The options ``apps activate`` and ``apps update`` share, passed on to ``lifecycle`` as
    they are named: ``profile``, ``group_management``, ``user_delete_policy``, ``rate``,
    ``burst``, ``bulk``, ``bulk_wait_ms``."""
    for option in reversed((
        click.option("--profile", type=Profile()),
        click.option("--group-management/--no-group-management", default=None),
        click.option("--user-delete-policy", type=click.Choice(["deactivate", "delete"])),
        click.option("--rate", type=float, help="requests/s for the whole pool (default: profile)"),
        click.option("--burst", type=int, help="requests allowed at once (default: profile)"),
        click.option("--bulk/--no-bulk", default=None,
                     help="combine writes into SCIM Bulk requests where the app announces Bulk "
                          "(default: on)"),
        click.option("--bulk-wait", "bulk_wait_ms", type=click.IntRange(0, 1000), metavar="MS",
                     help="milliseconds a Bulk request waits for more writes (default: 20)"),
    )):  # fmt: skip
        command = option(command)
    return command


def _network(command: Callable[..., int]) -> Callable[..., int]:
    """How the pool reaches the app (``apps.Network``), options ``apps activate`` and ``apps
    update`` share; ``_network_settings`` turns them into ``lifecycle``'s arguments."""
    for option in reversed((
        click.option("--proxy", metavar="URL",
                     help="the app's proxy, http://[user@]host:port, never a password ('': "
                          "none); default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY of the worker"),
        click.option("--proxy-password-file", metavar="PATH",
                     help="a file holding the password of --proxy's user, read by every worker "
                          "host ('': none)"),
        click.option("--no-proxy", is_flag=True, help="connect directly, whatever the environment"),
        click.option("--proxy-from-env", is_flag=True,
                     help="back to HTTPS_PROXY/HTTP_PROXY/NO_PROXY of the environment"),
        click.option("--ca-file", metavar="PATH",
                     help="PEM bundle of the CAs that sign the app's certificate ('': the system's)"),
        click.option("--client-cert", metavar="PATH",
                     help="PEM client certificate for mTLS, read by every worker host ('': none)"),
        click.option("--client-key", metavar="PATH",
                     help="its private key, unencrypted PEM (default: in --client-cert's file)"),
    )):  # fmt: skip
        command = option(command)
    return command


def _network_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``--no-proxy`` and ``--proxy-from-env`` folded into ``proxy``; a
    password in ``--proxy``'s URL is a usage error (it belongs in ``--proxy-password-file``)."""
    from worker.store.apps import PROXY_FROM_ENV, password_in_url, url_password_refusal

    no_proxy, from_env = settings.pop("no_proxy"), settings.pop("proxy_from_env")
    if password_in_url(settings["proxy"]):
        raise click.UsageError(url_password_refusal(settings["proxy"]))
    if no_proxy + from_env + (settings["proxy"] is not None) > 1:
        raise click.UsageError("give one of --proxy URL, --no-proxy, --proxy-from-env")
    if no_proxy:
        settings["proxy"] = ""
    elif from_env:
        settings["proxy"] = PROXY_FROM_ENV
    return settings


def _warn_network(app: AppConfig) -> None:
    """The warning of a proxy password an earlier version kept in the URL (``Network.warning``)."""
    warning = app.network.warning(app.id)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


# -- lifecycle ---------------------------------------------------------------------------------
@click.command(short_help="verify an application and start syncing it (a full sync)")
@click.argument("app_id", metavar="APP")
@click.option("--base-url", help="required for a new app")
@click.option("--token-file", help="a file holding the bearer token (new app)")
@_settings
@_network
@click.option(
    "--no-listing",
    is_flag=True,
    help="look every object up one by one instead of listing the app's users and groups",
)
def activate(app_id: str, base_url: str | None, token_file: str | None, no_listing: bool,
             **settings: Any) -> int:  # fmt: skip
    """Verify an application (ServiceProviderConfig and an authenticated read), list it and
    start syncing it with a full sync; a known app keeps its settings."""
    from worker.apps import lifecycle

    settings = _network_settings(settings)
    try:
        result = lifecycle.activate(_redis(), app_id, base_url=base_url, token_file=token_file,
                                    listing=not no_listing, **settings)  # fmt: skip
    except lifecycle.Refused as error:
        return _refused("refused", error)
    app = result.app
    print(
        f"activated {app.id} ({app.profile}) against {app.base_url}; "
        f"full sync of {result.marked} objects"
    )
    if app.network != Network():
        print(f"  network: {app.network.describe()}")
    _warn_network(app)
    if result.listing is not None:
        print(f"  {result.listing.describe()}")
    return EXIT_OK


@click.command(short_help="change settings; sends exactly the reconciles the change needs")
@click.argument("app_id", metavar="APP")
@click.option("--base-url")
@_settings
@_network
@click.option("--dry-run", type=click.Choice(["on", "off"]), help="plan and audit, send no write")
@click.option(
    "--verify-every",
    callback=_every,
    metavar="DURATION",
    help="run `verify` from the pool this often (24h, 30m, 7d; off: never)",
)
@click.option(
    "--verify-fix",
    type=click.Choice(["on", "off"]),
    help="the scheduled verify repairs drift (off)",
)
def update(app_id: str, base_url: str | None, dry_run: str | None, verify_every: float | None,
           verify_fix: str | None, **settings: Any) -> int:  # fmt: skip
    """Change an integration's settings; only the reconciles the change needs are sent."""
    from worker.apps import lifecycle

    settings = _network_settings(settings)
    try:
        result = lifecycle.update(_redis(), app_id, base_url=base_url, dry_run=_on_off(dry_run),
                                  verify_every=verify_every, verify_fix=_on_off(verify_fix),
                                  **settings)  # fmt: skip
    except lifecycle.Refused as error:
        return _refused("refused", error)
    if not result.changes:
        print(f"{app_id}: nothing to change")
    else:
        print(f"updated {app_id}: {'; '.join(result.changes)}; {result.marked} reconciles")
    _warn_network(result.app)
    return EXIT_OK


@click.command(short_help="a new token (only while deactivated)")
@click.argument("app_id", metavar="APP")
@click.option("--token-file", required=True)
def reauth(app_id: str, token_file: str) -> int:
    """Verify and keep a new token; only while deactivated (clears a pause)."""
    from worker.apps import lifecycle

    try:
        lifecycle.reauth(_redis(), app_id, token_file)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(f"new token of {app_id} verified; `provisioner apps activate {app_id}` resumes")
    return EXIT_OK


@click.command(short_help="stop syncing; nothing is removed from the app")
@click.argument("app_id", metavar="APP")
@click.option("--wait", type=float, default=30.0, show_default=True, metavar="S",
              help="seconds to wait for reconciles")  # fmt: skip
def deactivate(app_id: str, wait: float) -> int:
    """Stop syncing at once; nothing is removed from the application."""
    from worker.apps import lifecycle

    try:
        result = lifecycle.deactivate(_redis(), app_id, drain_seconds=wait)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(
        f"deactivated {app_id}: syncing stopped, {result.dropped} queued reconciles "
        "dropped, nothing removed from the application"
    )
    if result.still_in_flight:
        print(f"  {result.still_in_flight} reconciles are finishing their last call")
    return EXIT_OK


@click.command(short_help="forget a deactivated app's config and mirror")
@click.argument("app_id", metavar="APP")
def remove(app_id: str) -> int:
    """Forget a deactivated app's configuration and mirror; the application is left as-is."""
    from worker.apps import lifecycle

    try:
        lifecycle.remove(_redis(), app_id)
    except lifecycle.Refused as error:
        return _refused("refused", error)
    print(f"removed {app_id}: configuration and mirror forgotten; the application is as-is")
    return EXIT_OK


# -- mappings ----------------------------------------------------------------------------------
@click.command(short_help="show or change the user attribute mappings")
@click.argument("app_id", metavar="APP")
@click.option("--exclude", multiple=True, metavar="ATTR", help="stop sending ATTR (repeatable)")
@click.option("--include", multiple=True, metavar="ATTR", help="send ATTR again (repeatable)")
@click.option("--restore-defaults", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def mappings(app_id: str, exclude: tuple[str, ...], include: tuple[str, ...],
             restore_defaults: bool, as_json: bool) -> int:  # fmt: skip
    """Show the user attribute mappings, after changing them as asked."""
    from worker.apps import mappings as attribute_mappings

    client = _redis()
    if exclude or include or restore_defaults:
        change = attribute_mappings.change(client, app_id, exclude=list(exclude),
                                           include=list(include), restore=restore_defaults)  # fmt: skip
        if change.excluded or change.included:
            done = [f"excluded {', '.join(change.excluded)}"] if change.excluded else []
            done += [f"included {', '.join(change.included)}"] if change.included else []
            done.append(f"{change.marked} users re-synced")
            print(f"{app_id}: {'; '.join(done)}", file=sys.stderr)
        else:
            print(f"{app_id}: mappings unchanged", file=sys.stderr)
    rows = attribute_mappings.table(_app(client, app_id))
    if as_json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return EXIT_OK
    print(f"{'SCIM attribute':<18} {'directory property':<20} {'mapping':<9} included")
    for row in rows:
        kind = "required" if row.required else "optional"
        print(f"{row.attribute:<18} {row.property:<20} {kind:<9} {'yes' if row.included else 'no'}")
    return EXIT_OK


# -- import ------------------------------------------------------------------------------------
@click.command(name="import", short_help="create an application's users in the directory")
@click.argument("app_id", metavar="APP")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--list", "listing", is_flag=True, help="the app's users, New or Imported")
@click.option("--select", is_flag=True, help="import the users ID... (ids or userNames)")
@click.option("--all-new", is_flag=True, help="every New user")
@click.option("--new-only", is_flag=True, help="with --list: only New users")
@click.option("--json", "as_json", is_flag=True)
def import_users(app_id: str, ids: tuple[str, ...], listing: bool, select: bool, all_new: bool,
                 new_only: bool, as_json: bool) -> int:  # fmt: skip
    """Create an application's users in the directory: --list them, --select ID... or
    --all-new (one of the three)."""
    from worker.apps import importer
    from worker.scim import ScimError
    from worker.sync.runner import Clients

    if listing + select + all_new != 1:
        raise click.UsageError("give one of --list, --select ID..., --all-new")
    if bool(ids) != select:
        raise click.UsageError(
            "--select takes one ID or more" if select else "IDs go with --select"
        )
    client = _redis()
    app = _app(client, app_id)
    scim, _ = Clients().get(app)
    try:
        found, suspended = importer.candidates(client, scim)
    except ScimError as error:
        return _refused(f"cannot list the users of {app.id}", error)
    if listing:
        return _list_candidates(found, suspended, new_only, as_json)
    try:
        chosen, notes = importer.select(found, list(ids) if select else None)
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
    return _start_import(client, app.id, chosen)


def _list_candidates(found: list[Any], suspended: int, new_only: bool, as_json: bool) -> int:
    """``import --list``: the application's users, New or Imported (``importer.Candidate``)."""
    rows = [c for c in found if c.status == "New"] if new_only else found
    if as_json:
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


def _start_import(client: redis.Redis, app_id: str, chosen: list[Any]) -> int:
    """Publish the chosen users' creation; wait for it unless it runs in the background."""
    from worker.apps import importer

    job = importer.start(client, app_id, chosen)
    for refusal in job.refused:
        print(f"refused {refusal}", file=sys.stderr)
    if job.background:
        print(
            f"importing {job.total} users in the background (job {job.id}): progress in "
            "`provisioner status`, completion in `provisioner audit --name import_complete`"
        )
        return EXIT_OK
    applied = importer.wait_applied(client, job.id)
    print(f"imported {job.total} users from {app_id} into the directory (job {job.id})")
    if not applied:
        print("  (not yet applied to the directory projection: are workers running?)")
    return EXIT_OK


# -- explain and sync --------------------------------------------------------------------------
def _object(command: Callable[..., int]) -> Callable[..., int]:
    """``APP user|group ID``: the object ``explain`` and ``sync`` are about."""
    command = click.argument("object_id", metavar="ID")(command)
    command = click.argument("kind", type=click.Choice(["user", "group"]))(command)
    return click.argument("app_id", metavar="APP")(command)


@click.command(short_help="what a reconcile of one object would do (read-only)")
@_object
@click.option("--offline", is_flag=True, help="send no request to the application")
@click.option("--json", "as_json", is_flag=True)
def explain(app_id: str, kind: Kind, object_id: str, offline: bool, as_json: bool) -> int:
    """What a reconcile of one object would do: coverage, intent, mirror, planned calls.
    Read-only; exit 1 when it cannot be planned."""
    from worker.scim import ScimError
    from worker.scim.profiles import profile_by_name
    from worker.sync import explain as planner
    from worker.sync.runner import Clients

    client = _redis()
    app = _app(client, app_id)
    scim, profile = None, profile_by_name(app.profile)
    if not offline:
        try:
            scim, profile = Clients().get(app)
        except (AppError, ScimError) as error:
            print(f"planning offline (lookups assumed to find nothing): {error}", file=sys.stderr)
    result = planner.explain(client, app, kind, object_id, scim, profile)
    print(json.dumps(result.as_dict(), indent=2) if as_json else planner.render(result))
    return EXIT_OK if result.error is None else EXIT_FAIL


@click.command(name="sync", short_help="reconcile one object now and print the trace")
@_object
@click.option("--timeout", type=float, default=30.0, show_default=True, metavar="S")
@click.option("--json", "as_json", is_flag=True)
def sync_one(app_id: str, kind: Kind, object_id: str, timeout: float, as_json: bool) -> int:
    """Reconcile one object now and print its trace; exit 1 unless it is done or skipped."""
    from worker.sync import explain as planner

    client = _redis()
    _app(client, app_id)
    result = planner.sync_now(client, app_id, kind, object_id, timeout)
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"{result.key}: {result.state}, {result.calls} calls")
        for line in result.trace:
            print(f"  {line}")
        for e in result.entries:
            print(f"  audit: {e['name']} {e['outcome']} {e['status'] or '-'} {e['detail']}")
    return EXIT_OK if result.state in ("done", "skipped") else EXIT_FAIL
