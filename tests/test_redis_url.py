"""``REDIS_URL``'s forms (plain, ACL, TLS, Sentinel): parsed and checked in ``worker/config.py``,
refused in one line that never holds the password, and turned into the same Redis for the
state (redis-py) and the broker (Celery's settings)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from worker import config
from worker.config import RedisTarget, parse_redis_url
from worker.queue.celery_app import broker_settings

SECRET = "do-not-print-me"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget((("127.0.0.1", 6379),))),
        ("redis://redis.internal", RedisTarget((("redis.internal", 6379),))),
        ("redis://:pw@h:7000/3", RedisTarget((("h", 7000),), 3, None, "pw")),
        ("redis://prov:p%40ss@h/1", RedisTarget((("h", 6379),), 1, "prov", "p@ss")),
        ("rediss://prov:pw@h:6380/0", RedisTarget((("h", 6380),), 0, "prov", "pw", tls=True)),
        ("redis://[::1]:7000", RedisTarget((("::1", 7000),))),
        (
            "redis+sentinel://prov:pw@s1:26379,s2,[::1]:26380/main/2",
            RedisTarget(
                (("s1", 26379), ("s2", 26379), ("::1", 26380)), 2, "prov", "pw", service="main"
            ),
        ),  # fmt: skip
        ("redis+sentinel://s1:1/main", RedisTarget((("s1", 1),), service="main")),
    ],
)
def test_each_form_is_taken_apart(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://:{SECRET}@h", "scheme http://; expected redis://"),
        (f":{SECRET}@h:6379", "no scheme; expected redis://"),
        (f"redis://:{SECRET}@h:port", "a port must be a number from 1 to 65535"),
        (f"redis://:{SECRET}@h:70000", "a port must be a number from 1 to 65535"),
        (f"redis://:{SECRET}@/0", "a host is missing"),
        (f"redis://:{SECRET}@a,b/0", "redis:// names one host"),
        (f"redis://:{SECRET}@h/zero", "the path must be a database number"),
        (f"rediss://:{SECRET}@h/0?ssl_ca_certs=/ca.pem", "PROVISIONER_REDIS_CA_FILE"),
        (f"redis+sentinel://:{SECRET}@s1:26379", "needs the primary's service name"),
        (f"redis+sentinel://:{SECRET}@s1:26379/main/x", "the path must be a database number"),
        ("redis://:do/not/print@h/0", "a host is missing"),  # a password not percent-encoded
    ],
)
def test_a_malformed_url_is_refused_in_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    with pytest.raises(ValueError, match="^[^\n]*$") as refused:
        parse_redis_url(url)
    assert reason in str(refused.value)
    monkeypatch.setenv("REDIS_URL", url)
    problem = config.check_settings()
    assert problem is not None and problem.startswith("invalid REDIS_URL: ")
    assert reason in problem and "\n" not in problem
    assert SECRET not in problem and "not/print" not in problem


def test_the_password_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis+sentinel://prov:{SECRET}@s1:26379,s2:26380/main/1")
    conf = config.load()
    target = conf.redis_target
    assert target.password == SECRET
    assert SECRET not in repr(target) and SECRET not in repr(conf)
    assert target.redacted == "redis+sentinel://s1:26379,s2:26380/main/1"
    assert "prov" not in target.redacted


def test_the_ca_file_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROVISIONER_REDIS_CA_FILE", str(tmp_path / "missing.pem"))
    problem = config.check_settings()
    assert problem is not None
    assert problem.startswith("invalid PROVISIONER_REDIS_CA_FILE: expected a file of PEM")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PROVISIONER_REDIS_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("REDIS_URL", "rediss://prov:pw@h:6380/0")
    assert config.load().redis_target.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PROVISIONER_REDIS_MIN_REPLICAS", "-1", "expected an integer >= 0"),
        ("PROVISIONER_REDIS_WAIT_TIMEOUT", "0", "expected a positive number"),
    ],
)
def test_replication_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert config.check_settings() == f"invalid {variable}={value!r}: {expected}"


def test_a_tls_client_verifies_the_server() -> None:
    target = parse_redis_url("rediss://prov:pw@h:6380/0", ca_file=Path("/ca.pem"))
    client = config.new_redis(target)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True
    assert kwargs["ssl_ca_certs"] == "/ca.pem"
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("prov", "pw", 0)


def test_a_sentinel_client_follows_the_primary_sentinel_names() -> None:
    target = parse_redis_url("redis+sentinel://prov:pw@s1:26379,s2:26380/main/1")
    client = config.new_redis(target, socket_timeout=3)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "main" and pool.is_master
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["db"]) == ("prov", 1)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert sentinels[0].connection_pool.connection_kwargs.get("password") is None  # no login
    async_pool = config.new_async_redis(target).connection_pool
    assert isinstance(async_pool, redis.asyncio.sentinel.SentinelConnectionPool)


def test_the_broker_gets_the_same_redis_with_credentials_out_of_its_url() -> None:
    plain = broker_settings(parse_redis_url(f"redis://prov:{SECRET}@h:7000/2"), 900)
    assert plain["broker_url"] == "redis://h:7000/2"
    assert plain["broker_transport"] == "worker.queue.broker:Transport"
    assert (plain["broker_user"], plain["broker_password"]) == ("prov", SECRET)
    assert plain["broker_use_ssl"] is False
    tls = broker_settings(parse_redis_url("rediss://h:6380/0", ca_file=Path("/ca.pem")), 900)
    assert tls["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                     "ssl_check_hostname": True, "ssl_ca_certs": "/ca.pem"}  # fmt: skip
    sentinel = broker_settings(parse_redis_url("redis+sentinel://s1:1,s2:2/main/3"), 60)
    assert sentinel["broker_url"] == "sentinel://s1:1/3"
    assert sentinel["broker_transport"] == "worker.queue.broker:SentinelTransport"
    assert sentinel["broker_transport_options"] == {
        "visibility_timeout": 60, "master_name": "main", "sentinels": [["s1", 1], ["s2", 2]],
        "sentinel_kwargs": config.SENTINEL_OPTIONS,
    }  # fmt: skip
