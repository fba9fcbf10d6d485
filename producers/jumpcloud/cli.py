"""``provisioner jumpcloud sync|follow``: the JumpCloud connector's commands.

``worker.cli.main`` adds the ``jumpcloud`` group; imports are lazy so that the command line
starts cheaply.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
ORG_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JC_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_app(text: str) -> tuple[str, str]:
    """``APP=JUMPCLOUD_APPLICATION_ID``: the app id of the pool and the JumpCloud application
    whose bound groups and users it takes."""
    app_id, sep, application = text.partition("=")
    if not sep or not APP_ID.match(app_id) or not JC_ID.match(application):
        raise click.BadParameter(f"{text!r}: expected APP=JUMPCLOUD_APPLICATION_ID")
    return app_id, application


def parse_duration(text: str) -> float | None:
    """``90s``, ``30m``, ``24h``, ``1d`` or plain seconds; ``0`` or ``off``: never."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip().lower())
    if text.strip().lower() == "off":
        return None
    if not match:
        raise click.BadParameter(f"{text!r}: a duration such as 90s, 30m, 24h, 1d or off")
    seconds = float(match[1]) * UNITS.get(match[2] or "s", 1)
    return seconds or None


def parse_page_size(text: str) -> int:
    """Insights' ``limit``: "The maximum number of rows you can request is 10,000"."""
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise click.BadParameter(f"{text!r}: from 1 to 10000")
    return int(text)


def parse_org(text: str) -> str:
    if not ORG_ID.match(text):
        raise click.BadParameter(f"{text!r}: an organization id (letters, digits, - _)")
    return text


def _common(command: Callable[..., int]) -> Callable[..., int]:
    """The options ``sync`` and ``follow`` share: credentials, region, apps, pace."""
    options = (
        click.option("--api-key-file", required=True, metavar="FILE",
                     help="a file holding the JumpCloud API key (a key is never an argument)"),
        click.option("--org-id", type=parse_org, metavar="ORG",
                     help="the organization (x-org-id): required for a multi-tenant admin's key"),
        click.option("--api-url", metavar="URL",
                     help="the console API: https://console.jumpcloud.com (US, the default), "
                     "https://console.eu.jumpcloud.com (EU), https://console.in.jumpcloud.com (India)"),
        click.option("--insights-url", metavar="URL",
                     help="Directory Insights (default: the region's https://api[.eu|.in].jumpcloud.com)"),
        click.option("--app", "app_pairs", multiple=True, type=parse_app,
                     metavar="APP=APPLICATION_ID",
                     help="the JumpCloud application that stands for APP: its bound groups and "
                     "users become APP's associations (repeatable)"),
        click.option("--rate", type=float, default=5.0, show_default=True,
                     help="requests/s to JumpCloud at most (it also honours 429 Retry-After)"),
        click.option("--allow-deletions", type=int, metavar="N",
                     help="deletions a snapshot may publish (the snapshot's guard decides without)"),
    )  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.group(short_help="feed the pool from JumpCloud: sync, follow")
def jumpcloud() -> None:
    """Feed the pool from JumpCloud: a whole-directory sync, or following its changes."""


def _apps(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    apps: dict[str, str] = {}
    for app_id, application in pairs:
        if app_id in apps:
            raise ValueError(f"--app {app_id} is given twice")
        apps[app_id] = application
    return apps


def _client(connection: dict[str, Any], org_id: str | None, stop: threading.Event) -> Any:
    """The JumpCloud client of ``--api-key-file``, ``--api-url``, ``--insights-url``, ``--rate``."""
    from producers.jumpcloud.api import US_API, Client, read_api_key

    return Client(read_api_key(connection["api_key_file"]),
                  api_url=connection["api_url"] or US_API, insights_url=connection["insights_url"],
                  org_id=org_id, rate=connection["rate"], stop=stop)  # fmt: skip


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@jumpcloud.command(
    name="sync",
    short_help="read the whole directory through the API, publish it as a snapshot "
    "(deletions included, guarded)",
)
@_common
@click.option("--dry-run", is_flag=True, help="read and count; publish nothing")
def sync_directory(app_pairs: tuple[tuple[str, str], ...], org_id: str | None,
                   allow_deletions: int | None, dry_run: bool, **connection: Any) -> int:  # fmt: skip
    """Read JumpCloud's whole directory through its API and publish it as a snapshot
    (deletions included, guarded). Exit codes as ``provisioner snapshot``'s: 0 published (or
    would be, --dry-run); 1 failed; 3 refused by the deletion guard. Nothing is published
    unless 0."""
    from redis import RedisError

    from producers import snapshot
    from producers.cli_snapshot import EXIT_GUARD
    from producers.cli_snapshot import describe as difference
    from producers.jumpcloud.api import JumpCloudError, Stopped
    from producers.jumpcloud.sync import describe, sync
    from worker.config import redis_client

    try:
        apps = _apps(app_pairs)
        with _client(connection, org_id, _stop_on_signals()) as jc:
            outcome = sync(jc, redis_client(), org=org_id, apps=apps, dry_run=dry_run,
                           allow_deletions=allow_deletions)  # fmt: skip
    except Stopped:
        print("sync stopped: nothing was published", file=sys.stderr)
        return EXIT_FAIL
    except snapshot.DeletionsRefused as error:
        print("\n".join(difference(error.result, 0)))
        print("sync refused by the deletion guard: nothing was published", file=sys.stderr)
        for line in error.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_GUARD
    except (JumpCloudError, ValueError, RedisError) as error:  # SnapshotError: a ValueError
        print(f"sync failed: {error}; nothing was published", file=sys.stderr)
        return EXIT_FAIL
    result = outcome.result
    print(describe(outcome))
    print("\n".join(difference(result, 0)))
    if result.dry_run:
        print(f"{result.events} events; nothing published (--dry-run)")
    else:
        print(f"published {result.published} events ({result.duplicates} duplicates skipped)")
    return EXIT_OK


@jumpcloud.command(
    short_help="publish directory changes from Directory Insights as they come, with a "
    "scheduled sync"
)
@_common
@click.option("--interval", type=float, default=1.0, show_default=True, metavar="S",
              help="seconds between polls of Directory Insights")  # fmt: skip
@click.option("--sync-every", type=parse_duration, default="24h", show_default=True,
              metavar="D", help="a full sync this often: 24h, 30m, 7d, or off")  # fmt: skip
@click.option("--lag", type=float, default=0.0, show_default=True, metavar="S",
              help="read only events at least S seconds old, for events indexed late")  # fmt: skip
@click.option("--page-size", type=parse_page_size, default="1000", show_default=True,
              metavar="N", help="events per Insights page (at most 10,000)")  # fmt: skip
def follow(app_pairs: tuple[tuple[str, str], ...], org_id: str | None,
           allow_deletions: int | None, interval: float, sync_every: float | None, lag: float,
           page_size: int, **connection: Any) -> int:  # fmt: skip
    """Publish JumpCloud's directory changes from Directory Insights as they come, with a
    full sync every --sync-every. Runs until stopped (SIGTERM, Ctrl-C)."""
    from redis import RedisError

    from producers.jumpcloud.api import JumpCloudError
    from producers.jumpcloud.follow import Follower, FollowOptions
    from worker.config import redis_client

    logging.getLogger("provisioner.jumpcloud").setLevel(logging.INFO)
    stop = _stop_on_signals()
    try:
        options = FollowOptions(org=org_id, apps=_apps(app_pairs), interval=interval,
                                sync_every=sync_every, lag=lag, page_size=page_size,
                                allow_deletions=allow_deletions)  # fmt: skip
        with _client(connection, org_id, stop) as jc:
            Follower(jc, redis_client(), options, stop).run()
    except (JumpCloudError, ValueError, RedisError) as error:
        print(f"follow stopped: {error}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
