"""Configuration: every environment variable the product reads, in one ``Settings`` object.

``settings()`` reads and validates the environment once per process (``settings.cache_clear()``
reads it again); ``load()`` reads it afresh, for the few values looked up as they are used.
A process checks it as it starts (``load_or_exit``): an invalid value stops it with one line
that names the variable and what it expects, exit status 2. README.md's "Configuration" table
lists the same variables with the same defaults (``tests/test_settings.py`` compares them).

``REDIS_URL`` is checked as it is read (``parse_redis_url``: one server, TLS, or Sentinel's
primary), and every Redis client of the product is built here from it (``redis_client``,
``new_redis``, ``new_async_redis``), so that all of them reach the same server the same way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from functools import cache, cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "PROVISIONER_"
NO_REDIS = "no Redis: set REDIS_URL, or start the local stack (`make run` / `provisioner stack`)"


class SettingsError(ValueError):
    """An environment variable holds an invalid value; the message is one line, secret-free."""


class Settings(BaseSettings):
    """Every setting, from ``PROVISIONER_<FIELD>`` unless the field names its variable."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True)

    redis_url_env: SecretStr | None = Field(  # it may hold a password
        None,
        validation_alias="REDIS_URL",
        description="the pool's one Redis: redis://, rediss:// (TLS) or redis+sentinel://",
        json_schema_extra={"shown": "the local stack's Redis (var/redis.url)"},
    )
    redis_ca_file: Path | None = Field(
        None, description="CA certificates that a rediss:// server's certificate must chain to"
    )
    redis_min_replicas: int = Field(
        0, ge=0, description="replicas that must confirm events before they are acknowledged"
    )
    redis_wait_timeout: float = Field(
        1.0, gt=0, description="seconds to wait for the replicas' confirmation"
    )
    home: Path | None = Field(
        None,
        description="where var/ (the local stack's data) lives",
        json_schema_extra={"shown": "current directory"},
    )
    lease_seconds: float = Field(60.0, gt=0, description="lease of a reconcile key")
    bulk_lanes: int = Field(
        64, ge=1, le=1024, description="threads per worker process for keys of Bulk apps"
    )
    stale_seconds: float = Field(
        30.0, gt=0, description="a dirty key or batch with no message is sent again after it"
    )
    visibility_timeout: int = Field(
        900, gt=0, description="seconds before the broker redelivers an unacked message"
    )
    breaker_cooldown: float = Field(
        15.0, gt=0, description="first pause of an open circuit breaker, in seconds"
    )
    journal_maxlen: int = Field(2_000_000, gt=0, description="events kept in the journal")
    journal_max_age_days: float = Field(30.0, gt=0, description="days the journal keeps events")
    audit_maxlen: int = Field(200_000, gt=0, description="audit entries kept")
    guard_percent: float = Field(
        10.0, ge=0, le=100, description="deletion guard: share of an app's users per window"
    )
    guard_minimum: int = Field(20, ge=0, description="deletion guard: at least this many")
    guard_window: int = Field(600, gt=0, description="deletion guard: window in seconds")
    webhook_secret: SecretStr | None = Field(None, description="webhook HMAC secrets")
    webhook_secret_file: Path | None = Field(None, description="a file of more webhook secrets")
    webhook_allow_bearer: bool = Field(False, description="also accept a bearer secret")
    webhook_insecure: bool = Field(False, description="accept unauthenticated requests")
    webhook_host: str = Field("127.0.0.1", description="address the webhook receiver binds")
    webhook_port: int = Field(8000, ge=1, le=65535, description="port of the webhook receiver")
    webhook_workers: int = Field(1, ge=1, description="processes of the webhook receiver")
    metrics: bool = Field(True, description="count Prometheus metrics (off: nothing counted)")
    metrics_host: str = Field("0.0.0.0", description="address a worker's metrics listener binds")
    metrics_port: int = Field(
        9808, ge=0, le=65535, description="port of a worker's /metrics and /healthz (0: off)"
    )
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias="SENTRY_DSN", description="report failures to Sentry"
    )
    sentry_environment: str = Field(
        "production", validation_alias="SENTRY_ENVIRONMENT", description="Sentry's environment"
    )

    @field_validator("redis_url_env")
    @classmethod
    def _valid_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_redis_url(value.get_secret_value())
        return value

    @field_validator("redis_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("expected a file of PEM CA certificates, and there is none there")
        return value

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{environment variable: field name}`` for every setting."""
        return {variable(name): name for name in cls.model_fields}

    @property
    def home_dir(self) -> Path:
        return self.home or Path.cwd()

    @cached_property
    def redis_url(self) -> str:
        """``REDIS_URL``, else the local stack's (``var/redis.url``); exits when neither."""
        if self.redis_url_env:
            return self.redis_url_env.get_secret_value()
        local = self.home_dir / "var" / "redis.url"
        if local.exists():
            return local.read_text().strip()
        raise SystemExit(NO_REDIS)

    @cached_property
    def redis_target(self) -> RedisTarget:
        """``redis_url`` parsed (``SystemExit`` naming the problem for a malformed local one)."""
        try:
            return parse_redis_url(self.redis_url, ca_file=self.redis_ca_file)
        except ValueError as error:
            raise SystemExit(f"invalid Redis URL: {error}") from None

    @property
    def webhook_secret_text(self) -> str:
        """The comma-separated secrets of ``PROVISIONER_WEBHOOK_SECRET`` ("" when unset)."""
        return self.webhook_secret.get_secret_value() if self.webhook_secret else ""

    @property
    def sentry_dsn_text(self) -> str | None:
        return self.sentry_dsn.get_secret_value() if self.sentry_dsn else None


def variable(name: str) -> str:
    """The environment variable of the field ``name``."""
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else PREFIX + name.upper()


# -- reading and checking ---------------------------------------------------------------------
def load() -> Settings:
    """The settings as the environment holds them now; ``SettingsError`` when one is invalid."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("; ".join(_problem(e) for e in error.errors())) from None


@cache
def settings() -> Settings:
    """The settings of this process, read once (``settings.cache_clear()`` to read again)."""
    return load()


def check_settings() -> str | None:
    """Why the environment's configuration is invalid, in one line; None when it is valid."""
    try:
        load()
    except SettingsError as error:
        return str(error)
    return None


def load_or_exit(program: str = "provisioner") -> Settings:
    """The settings, read afresh; on an invalid value, print one line and exit with status 2."""
    settings.cache_clear()
    try:
        return settings()
    except SettingsError as error:
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _problem(error: ErrorDetails) -> str:
    """One invalid value: the variable, what it held (unless secret), what it must be."""
    fields = {**{n: n for n in Settings.model_fields}, **Settings.variables()}
    name = fields.get(str(error["loc"][0]) if error["loc"] else "", "")
    if not name:
        return error["msg"]
    field = Settings.model_fields[name]
    if error["type"] == "value_error":  # a validator's own words, never the (secret) value
        return f"invalid {variable(name)}: {error.get('ctx', {}).get('error', error['msg'])}"
    shown = "" if _secret(field) else f"={str(error['input'])[:40]!r}"
    return f"invalid {variable(name)}{shown}: expected {_expected(field)}"


def _secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation)


def _expected(field: FieldInfo) -> str:
    """What a field accepts, in words: "a positive integer", "a number >= 0 and <= 100"…"""
    if field.annotation is bool:
        return "a boolean (1/0, true/false, yes/no, on/off)"
    kinds: dict[object, tuple[str, str]] = {
        int: ("an integer", "a positive integer"),
        float: ("a number", "a positive number"),
    }
    noun, positive = kinds.get(field.annotation, ("a valid value", "a positive value"))
    signs = {"gt": ">", "ge": ">=", "le": "<="}
    limits = [f"{signs[a]} {getattr(m, a)}" for m in field.metadata for a in signs if hasattr(m, a)]
    if limits == ["> 0"]:
        return positive
    return " ".join([noun, " and ".join(limits)]) if limits else noun


# -- what the settings lead to ----------------------------------------------------------------
def home() -> Path:
    return settings().home_dir


def var_dir() -> Path:
    return home() / "var"


def redis_url() -> str:
    return settings().redis_url


# -- Redis: the URL and the clients built from it --------------------------------------------
URL_FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://... (TLS) or "
    "redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]"
)
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379}
# The sentinels answer at once or not at all: a silent one must not hold up the discovery of
# the primary, which asks them in turn. No login, no TLS (the URL's are the data nodes').
SENTINEL_OPTIONS: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1}


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """Where the pool's Redis is and how to log in: one server, or the primary that Sentinel
    names ``service``. The password never shows in ``repr`` nor in ``redacted``."""

    hosts: tuple[tuple[str, int], ...]  # the server, or the sentinels
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    service: str | None = None  # Sentinel's name of the primary
    ca_file: Path | None = None

    @property
    def sentinel(self) -> bool:
        return self.service is not None

    @property
    def redacted(self) -> str:
        """The URL without its credentials (for status lines and errors)."""
        scheme = "redis+sentinel" if self.sentinel else "rediss" if self.tls else "redis"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = f"/{self.service}/{self.db}" if self.sentinel else f"/{self.db}"
        return f"{scheme}://{hosts}{path}"

    def login(self) -> dict[str, Any]:
        """The connection options of the data nodes: database, ACL user, password, TLS."""
        options: dict[str, Any] = {"db": self.db, "username": self.username,
                                   "password": self.password}  # fmt: skip
        if self.tls:
            options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                           ssl_ca_certs=str(self.ca_file) if self.ca_file else None)  # fmt: skip
        return options


def parse_redis_url(url: str, *, ca_file: Path | None = None) -> RedisTarget:
    """``url`` checked and taken apart; ``ValueError`` with one line that quotes nothing of
    the URL (a malformed one may have its password anywhere). A password with ``@ / : ? #``
    is percent-encoded (``%40``...)."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in DEFAULT_PORTS:
        shown = f"scheme {scheme}://" if separator else "no scheme"  # never the rest: a password
        raise ValueError(f"{shown}; expected {URL_FORMS}")
    if "?" in rest or "#" in rest:
        raise ValueError("no query or fragment is taken (a CA file: PROVISIONER_REDIS_CA_FILE)")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = tuple(_host(h, DEFAULT_PORTS[scheme]) for h in hostlist.split(","))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if scheme == "redis+sentinel":
        service, db = _sentinel_path(parts)
    else:
        if len(hosts) != 1:
            raise ValueError(f"{scheme}:// names one host; several are for redis+sentinel://")
        service, db = None, _db(parts)
    return RedisTarget(hosts, db, unquote(username) or None, unquote(password) or None,
                       scheme == "rediss", service, ca_file)  # fmt: skip


def _host(text: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError("a host is missing")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("a port must be a number from 1 to 65535")
    return host, int(port) if port else default_port


def _db(parts: list[str]) -> int:
    if len(parts) > 1 or (parts and parts[0] and not parts[0].isdigit()):
        raise ValueError("the path must be a database number: /0, /1...")
    return int(parts[0]) if parts and parts[0] else 0


def _sentinel_path(parts: list[str]) -> tuple[str, int]:
    if not parts or not parts[0]:
        raise ValueError("redis+sentinel:// needs the primary's service name: .../SERVICE[/db]")
    return parts[0], _db(parts[1:])


def redis_target() -> RedisTarget:
    return settings().redis_target


def new_redis(target: RedisTarget | None = None, **options: Any) -> redis.Redis:
    """A client of ``target`` (default: the settings'), the Sentinel's current primary for a
    ``redis+sentinel://`` URL: a broken connection asks the sentinels again."""
    target = target or redis_target()
    if not target.sentinel:
        ((host, port),) = target.hosts
        return redis.Redis(host=host, port=port, **target.login(), **options)
    sentinels = redis.sentinel.Sentinel(list(target.hosts), sentinel_kwargs=SENTINEL_OPTIONS)
    assert target.service is not None
    return sentinels.master_for(target.service, redis_class=redis.Redis, **target.login(),
                                **options)  # fmt: skip


def new_async_redis(target: RedisTarget | None = None, **options: Any) -> redis.asyncio.Redis:
    """``new_redis`` for asyncio (the webhook receiver's event loop)."""
    target = target or redis_target()
    if not target.sentinel:
        ((host, port),) = target.hosts
        return redis.asyncio.Redis(host=host, port=port, **target.login(), **options)
    sentinels = redis.asyncio.sentinel.Sentinel(
        list(target.hosts), sentinel_kwargs=SENTINEL_OPTIONS
    )
    assert target.service is not None
    return sentinels.master_for(target.service, redis_class=redis.asyncio.Redis,
                                **target.login(), **options)  # fmt: skip


_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 5,
                                  "health_check_interval": 30}  # fmt: skip
if int(redis.__version__.split(".")[0]) < 6:  # from 6 on, a timeout is retried by default
    CLIENT_OPTIONS["retry_on_timeout"] = True


def redis_client() -> redis.Redis:
    """One connection pool per process, shared by its threads (a forked child builds its own)."""
    key = (os.getpid(), settings().redis_url)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:  # a worker's task threads share the pool
        if key not in _clients:
            _clients[key] = new_redis(settings().redis_target, **CLIENT_OPTIONS)
        return _clients[key]
