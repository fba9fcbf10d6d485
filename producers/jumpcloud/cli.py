"""``provisioner jumpcloud sync|follow``: the JumpCloud connector's commands.

Registered through ``worker.cli.main.EXTENSIONS``; imports are lazy so that building the parser
stays cheap.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from typing import Any

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
        raise argparse.ArgumentTypeError(f"{text!r}: expected APP=JUMPCLOUD_APPLICATION_ID")
    return app_id, application


def parse_duration(text: str) -> float | None:
    """``90s``, ``30m``, ``24h``, ``1d`` or plain seconds; ``0`` or ``off``: never."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip().lower())
    if text.strip().lower() == "off":
        return None
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 30m, 24h, 1d or off")
    seconds = float(match[1]) * UNITS.get(match[2] or "s", 1)
    return seconds or None


def parse_page_size(text: str) -> int:
    """Insights' ``limit``: "The maximum number of rows you can request is 10,000"."""
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: from 1 to 10000")
    return int(text)


def parse_org(text: str) -> str:
    if not ORG_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: an organization id (letters, digits, - _)")
    return text


def _common(p: argparse.ArgumentParser) -> None:
    from producers.jumpcloud.api import US_API

    p.add_argument("--api-key-file", required=True, metavar="FILE",
                   help="a file holding the JumpCloud API key (a key is never an argument)")  # fmt: skip
    p.add_argument("--org-id", type=parse_org, metavar="ORG",
                   help="the organization (x-org-id): required for a multi-tenant admin's key")  # fmt: skip
    p.add_argument("--api-url", default=US_API, metavar="URL",
                   help=f"the console API: {US_API} (US, the default), "
                   "https://console.eu.jumpcloud.com (EU), https://console.in.jumpcloud.com (India)")  # fmt: skip
    p.add_argument("--insights-url", metavar="URL",
                   help="Directory Insights (default: the region's https://api[.eu|.in].jumpcloud.com)")  # fmt: skip
    p.add_argument("--app", action="append", type=parse_app, default=[],
                   metavar="APP=APPLICATION_ID",
                   help="the JumpCloud application that stands for APP: its bound groups and "
                   "users become APP's associations (repeatable)")  # fmt: skip
    p.add_argument("--rate", type=float, default=5.0,
                   help="requests/s to JumpCloud at most (5; it also honours 429 Retry-After)")  # fmt: skip
    p.add_argument("--allow-deletions", type=int, metavar="N",
                   help="deletions a snapshot may publish (the snapshot's guard decides without)")  # fmt: skip


def register(
    commands: argparse._SubParsersAction, apps_commands: argparse._SubParsersAction
) -> None:
    """Add ``jumpcloud sync`` and ``jumpcloud follow`` to ``provisioner``."""
    parser = commands.add_parser("jumpcloud", help="feed the pool from JumpCloud: sync, follow")
    sub = parser.add_subparsers(dest="jumpcloud_command", required=True, metavar="ACTION")
    p = sub.add_parser("sync", help="read the whole directory through the API, publish it as a "
                       "snapshot (deletions included, guarded)")  # fmt: skip
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="read and count; publish nothing")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("follow", help="publish directory changes from Directory Insights as "
                       "they come, with a scheduled sync")  # fmt: skip
    _common(p)
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between polls of Directory Insights (1)")  # fmt: skip
    p.add_argument("--sync-every", type=parse_duration, default=86_400.0, metavar="D",
                   help="a full sync this often: 24h (default), 30m, 7d, or off")  # fmt: skip
    p.add_argument("--lag", type=float, default=0.0, metavar="S",
                   help="read only events at least S seconds old (0), for events indexed late")  # fmt: skip
    p.add_argument("--page-size", type=parse_page_size, default=1000, metavar="N",
                   help="events per Insights page (1000; at most 10,000)")  # fmt: skip
    p.set_defaults(func=cmd_follow)


def _apps(pairs: list[tuple[str, str]]) -> dict[str, str]:
    apps: dict[str, str] = {}
    for app_id, application in pairs:
        if app_id in apps:
            raise ValueError(f"--app {app_id} is given twice")
        apps[app_id] = application
    return apps


def _client(args: argparse.Namespace, stop: threading.Event) -> Any:
    from producers.jumpcloud.api import Client, read_api_key

    return Client(read_api_key(args.api_key_file), api_url=args.api_url,
                  insights_url=args.insights_url, org_id=args.org_id, rate=args.rate,
                  stop=stop)  # fmt: skip


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_sync(args: argparse.Namespace) -> int:
    """Exit codes as ``provisioner snapshot``'s: 0 published (or would be, ``--dry-run``); 1
    failed; 3 refused by the deletion guard. Nothing is published unless 0."""
    from redis import RedisError

    from producers import snapshot
    from producers.cli_snapshot import EXIT_GUARD
    from producers.cli_snapshot import describe as difference
    from producers.jumpcloud.api import JumpCloudError, Stopped
    from producers.jumpcloud.sync import describe, sync
    from worker.config import redis_client

    try:
        apps = _apps(args.app)
        with _client(args, _stop_on_signals()) as jc:
            outcome = sync(jc, redis_client(), org=args.org_id, apps=apps, dry_run=args.dry_run,
                           allow_deletions=args.allow_deletions)  # fmt: skip
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


def cmd_follow(args: argparse.Namespace) -> int:
    from redis import RedisError

    from producers.jumpcloud.api import JumpCloudError
    from producers.jumpcloud.follow import Follower, FollowOptions
    from worker.config import redis_client

    logging.getLogger("provisioner.jumpcloud").setLevel(logging.INFO)
    stop = _stop_on_signals()
    try:
        options = FollowOptions(org=args.org_id, apps=_apps(args.app), interval=args.interval,
                                sync_every=args.sync_every, lag=args.lag,
                                page_size=args.page_size, allow_deletions=args.allow_deletions)  # fmt: skip
        with _client(args, stop) as jc:
            Follower(jc, redis_client(), options, stop).run()
    except (JumpCloudError, ValueError, RedisError) as error:
        print(f"follow stopped: {error}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
