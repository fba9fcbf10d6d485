"""Configuration: every environment variable the product reads, in one ``Settings`` object.

``settings()`` reads and validates the environment once per process (``settings.cache_clear()``
reads it again); ``load()`` reads it afresh, for the few values looked up as they are used.
A process checks it as it starts (``load_or_exit``): an invalid value stops it with one line
that names the variable and what it expects, exit status 2. README.md's "Configuration" table
lists the same variables with the same defaults (``tests/test_settings.py`` compares them).
"""

from __future__ import annotations

import os
import sys
import threading
from functools import cache, cached_property
from pathlib import Path

import redis
from pydantic import Field, SecretStr, ValidationError
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
        description="the pool's one Redis",
        json_schema_extra={"shown": "the local stack's Redis (var/redis.url)"},
    )
    home: Path | None = Field(
        None,
        description="where var/ (the local stack's data) lives",
        json_schema_extra={"shown": "current directory"},
    )
    lease_seconds: float = Field(60.0, gt=0, description="lease of a reconcile key")
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
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias="SENTRY_DSN", description="report failures to Sentry"
    )
    sentry_environment: str = Field(
        "production", validation_alias="SENTRY_ENVIRONMENT", description="Sentry's environment"
    )

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


_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """One connection pool per process, shared by its threads (a forked child builds its own)."""
    key = (os.getpid(), settings().redis_url)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:  # a worker's task threads share the pool
        if key not in _clients:
            _clients[key] = redis.Redis.from_url(
                settings().redis_url,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=30,
                retry_on_timeout=True,
            )
        return _clients[key]
