"""Application integrations: their settings in Redis, and their tokens, which never are.

A token is read from a file (``--token-file``; on a multi-host pool, a mounted secret that
every worker host has), so Redis, logs and process listings never hold it. So are the files of
an app's ``Network`` (its CA bundle, a client certificate and key, its proxy's password): only
their paths are kept. A proxy's URL is kept with its user name only: ``--proxy`` refuses a URL
holding a password (``check_proxy``), which ``--proxy-password-file`` gives instead. An app saved
by an earlier version with the password in its URL still works, with a warning
(``Network.warning``), until ``--proxy-password-file`` replaces it; that password is shown
nowhere (``redact_url``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from worker.contract.model import AppSettings, UserDeletePolicy
from worker.store import codec, keys
from worker.store.keys import Kind

APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROXY_FROM_ENV = "env"  # ``network_change(proxy=...)``: back to the environment's proxy


class AppError(ValueError):
    """A refused change to an integration, with a message for the administrator."""


def redact_url(url: str) -> str:
    """``url`` without the password of its user part (``http://user:***@proxy:3128``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def password_in_url(url: str | None) -> bool:
    """Whether a proxy URL holds a password (``user:password@``)."""
    try:
        return bool(url) and urlsplit(url).password is not None
    except ValueError:  # not a URL: ``check_proxy`` says why
        return False


def url_password_refusal(url: str) -> str:
    """Why ``--proxy`` refuses a URL holding a password (the message does not hold it)."""
    return (
        f"the proxy URL {redact_url(url)} holds a password, which would show in process "
        "listings and be kept in Redis: give the user in the URL (http://user@host:port) and "
        "the password in a file every worker host can read, --proxy-password-file PATH"
    )


def without_password(url: str) -> str:
    """``url`` with its user name but not its password."""
    parts = urlsplit(url)
    user_part, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user_part.partition(':')[0]}@{host}"))


def proxy_text(proxy: str | None) -> str:
    """A ``Network.proxy`` as shown: ``environment``, ``direct`` or the URL, redacted."""
    if proxy is None:
        return "environment"
    return redact_url(proxy) if proxy else "direct"


@dataclass(frozen=True)
class Network:
    """How the pool reaches the application: through which proxy, trusting which CA, with
    which client certificate (mTLS). Files are read by each process that calls the app."""

    proxy: str | None = None  # None: HTTPS_PROXY/HTTP_PROXY/NO_PROXY of the process; "": direct
    ca_file: str | None = None  # the CAs that sign the app's certificate (None: the system's)
    client_cert: str | None = None  # PEM certificate (chain) presented to the app
    client_key: str | None = None  # its private key (None: in ``client_cert``'s file)
    proxy_password_file: str | None = None  # the password of ``proxy``'s user (None: none)

    def __repr__(self) -> str:  # never the proxy's password
        return f"Network({self.shown()!r})"

    def shown(self) -> dict[str, str | None]:
        """The settings as ``apps show`` and ``status --json`` print them."""
        return {
            "proxy": proxy_text(self.proxy),
            "ca_file": self.ca_file,
            "client_cert": self.client_cert,
            "client_key": self.client_key,
            "proxy_password_file": self.proxy_password_file,
        }

    def describe(self) -> str:
        """One line for the audit log and the CLI: the proxy and what is not the default."""
        parts = [f"proxy {proxy_text(self.proxy)}"]
        if self.proxy_password_file:
            parts.append(f"proxy password file {self.proxy_password_file}")
        if self.ca_file:
            parts.append(f"CA file {self.ca_file}")
        if self.client_cert:
            parts.append(f"client certificate {self.client_cert}")
        if self.client_key:
            parts.append(f"client key {self.client_key}")
        return ", ".join(parts)

    def files(self) -> tuple[str, ...]:
        files = (self.ca_file, self.client_cert, self.client_key, self.proxy_password_file)
        return tuple(f for f in files if f)

    def stamp(self) -> tuple[int | None, ...]:
        """The files' modification times: a client built before a file was renewed is stale."""
        return tuple(_mtime(path) for path in self.files())

    def warning(self, app_id: str) -> str | None:
        """What to do about a proxy password kept in the URL by an earlier version (it still
        works), None when there is none."""
        if not password_in_url(self.proxy):
            return None
        return (
            f"the proxy URL of {app_id} holds its password, kept in Redis: put the password in "
            f"a file every worker host can read and run `provisioner apps update {app_id} "
            "--proxy-password-file FILE` (the URL keeps its user name, loses the password)"
        )


@dataclass(frozen=True)
class AppConfig:
    id: str
    base_url: str
    token_file: str
    profile: str = "zscaler"
    group_management: bool = True
    user_delete_policy: UserDeletePolicy = "deactivate"
    excluded_attributes: tuple[str, ...] = ()
    active: bool = False
    paused: str | None = None  # why syncing is paused (bad credentials), None when running
    rate: float | None = None  # requests/s for the whole pool; None: the profile's
    burst: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    verify_every: float | None = None  # seconds between scheduled verifies; None: none
    verify_fix: bool = False  # a scheduled verify repairs what it finds
    bulk: bool = True  # writes travel in Bulk requests where the app takes them
    bulk_wait_ms: int = 20  # how long a Bulk request waits for more writes
    # what its ServiceProviderConfig announced when it was checked (activation, update):
    # maxOperations and maxPayloadSize, (0, 0) for no Bulk; None: not read (saved before Bulk)
    bulk_limits: tuple[int, int] | None = None
    network: Network = Network()

    def settings(self) -> AppSettings:
        return AppSettings(
            id=self.id,
            profile=self.profile,
            group_management=self.group_management,
            user_delete_policy=self.user_delete_policy,
            excluded_attributes=frozenset(self.excluded_attributes),
        )


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def check_app_id(app_id: str) -> str:
    if not APP_ID.match(app_id):
        raise AppError(
            f"invalid app id {app_id!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return app_id


def check_base_url(url: str) -> str:
    """https, or http on a loopback address only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AppError(f"invalid base URL {url!r}: expected https://host/path")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise AppError(f"refusing plain http to {host}: use https (http is for loopback only)")
    return url.rstrip("/")


def check_proxy(url: str) -> str:
    """An http(s) proxy URL (``""``: direct), with no password (``--proxy-password-file``);
    the message never holds the password."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise AppError(f"invalid proxy URL {redact_url(url)!r}: expected http://[user@]host:port")
    if parts.password is not None:
        raise AppError(url_password_refusal(url))
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise AppError(f"invalid port in the proxy URL {redact_url(url)!r}") from None
    return url.rstrip("/")


def readable_file(path: str, what: str) -> str:
    """The absolute path of a file this process can read (workers may run elsewhere)."""
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise AppError(f"cannot read the {what} {path}: {error.strerror}") from None
    return path


def network_change(
    current: Network,
    *,
    proxy: str | None = None,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    proxy_password_file: str | None = None,
) -> Network:
    """``current`` with the changes given: None keeps a setting, ``""`` removes it (a proxy of
    ``""`` goes direct, ``PROXY_FROM_ENV`` back to the environment's, and neither has a
    password file; no client certificate means no key either). A proxy password file goes
    with the app's own proxy, whose URL names the user; it replaces a password an earlier
    version kept in the URL. Files must be readable here; ``AppError`` otherwise."""
    changes: dict[str, str | None] = {}
    if proxy is not None:
        changes["proxy"] = None if proxy == PROXY_FROM_ENV else check_proxy(proxy)
        if not changes["proxy"]:
            changes["proxy_password_file"] = None
    if proxy_password_file is not None:
        changes["proxy_password_file"] = (
            proxy_password_path(proxy_password_file) if proxy_password_file else None
        )
    for name, value, what in (
        ("ca_file", ca_file, "CA file"),
        ("client_cert", client_cert, "client certificate"),
        ("client_key", client_key, "client key"),
    ):
        if value is not None:
            changes[name] = readable_file(value, what) if value else None
    if client_cert == "":
        changes["client_key"] = None
    network = replace(current, **changes)
    if network.client_key and not network.client_cert:
        raise AppError("--client-key goes with --client-cert (the certificate it signs for)")
    if network.proxy_password_file:
        if not network.proxy:
            raise AppError(
                "--proxy-password-file goes with the app's own proxy: --proxy http://user@host:port"
            )
        if not urlsplit(network.proxy).username:
            raise AppError(
                f"--proxy-password-file needs the proxy's user name in its URL: --proxy "
                f"http://user@host:port, not {redact_url(network.proxy)} (--proxy-password-file "
                "'' for no password)"
            )
        if password_in_url(network.proxy):  # kept by an earlier version: the file replaces it
            network = replace(network, proxy=without_password(network.proxy))
    return network


def proxy_password_path(path: str) -> str:
    """The absolute path of a readable proxy password file that is not empty."""
    path = os.path.abspath(path)
    read_proxy_password(path)
    return path


def read_proxy_password(path: str) -> str:
    """The proxy's password: the file's text without its trailing newline."""
    try:
        password = Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        why = getattr(error, "strerror", None) or "not UTF-8 text"
        raise AppError(f"cannot read the proxy password file {path}: {why}") from None
    if not password:
        raise AppError(f"the proxy password file {path} is empty")
    return password


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise AppError(f"cannot read the token file {path}: {error.strerror}") from None
    if not token:
        raise AppError(f"the token file {path} is empty")
    return token


def load(client: redis.Redis, app_id: str) -> AppConfig | None:
    raw = client.hget(keys.app(app_id), "config")
    return None if raw is None else parse(raw)


def parse(raw: bytes | str) -> AppConfig:
    """An app's config as stored (``save``); the worker reads it in the claim's round trip.
    A setting this version does not know (saved by a newer one) is left out, so that a
    rollback reads the configs its successor wrote."""
    data = {k: v for k, v in json.loads(raw).items() if k in _CONFIG_FIELDS}
    data["excluded_attributes"] = tuple(data.get("excluded_attributes", ()))
    data["network"] = Network(**(data.get("network") or {}))
    if data.get("bulk_limits") is not None:
        data["bulk_limits"] = tuple(data["bulk_limits"])
    return AppConfig(**data)


_CONFIG_FIELDS = frozenset(f.name for f in fields(AppConfig))


def save(client: redis.Redis, config: AppConfig) -> None:
    pipe = client.pipeline()
    pipe.hset(keys.app(config.id), "config", json.dumps(asdict(config)))
    pipe.sadd(keys.APPS, config.id)
    if config.active and not config.paused:
        pipe.sadd(keys.APPS_ACTIVE, config.id)
    else:
        pipe.srem(keys.APPS_ACTIVE, config.id)
    pipe.execute()


def update(client: redis.Redis, app_id: str, **changes: object) -> AppConfig:
    config = load(client, app_id)
    if config is None:
        raise AppError(f"no app {app_id!r}")
    config = replace(config, **changes)  # type: ignore[arg-type]
    save(client, config)
    return config


def list_apps(client: redis.Redis) -> list[AppConfig]:
    ids = sorted(codec.texts(client.smembers(keys.APPS)))
    return [c for i in ids if (c := load(client, i)) is not None]


def remove(client: redis.Redis, app_id: str) -> None:
    kinds: tuple[Kind, ...] = ("user", "group")
    pipe = client.pipeline()
    pipe.delete(
        keys.app(app_id),
        keys.app_learned(app_id),
        keys.app_bulk(app_id),
        f"{keys.PREFIX}rl:{app_id}:pace",  # the pace learned from its 429s (lua/throttle.lua)
        *(keys.mirror(app_id, kind) for kind in kinds),
        *(keys.mirror_absent(app_id, kind) for kind in kinds),
        *(keys.mirror_doubt(app_id, kind) for kind in kinds),
        *(keys.mirror_creating(app_id, kind) for kind in kinds),
        *(keys.mirror_reread(app_id, kind) for kind in kinds),
        *(keys.app_bulk_unchecked(app_id, form) for form in keys.BULK_FORMS),
        *(keys.app_bulk_check(app_id, form) for form in keys.BULK_FORMS),
    )
    pipe.srem(keys.APPS, app_id)
    pipe.srem(keys.APPS_ACTIVE, app_id)
    pipe.execute()


def token_file_path(path: str) -> str:
    """An absolute path: workers may run in another directory than the CLI."""
    return os.path.abspath(path)
