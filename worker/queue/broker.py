"""kombu's Redis transport, without a Redis client built for every message received or acked.

With ``acks_late``, kombu records each delivered message as unacked and removes it on the ack,
and for both it builds a new ``redis.Redis`` over the channel's connection pool: about 0.3 ms
of CPU each (its response-callback tables), a tenth of a worker's time at 200 requests/s. A
``redis.Redis`` is thread-safe and borrows a pooled connection per command, so one per pool
serves every thread of the worker. Selected by ``broker_transport`` (``celery_app.configure``).

``SentinelTransport`` is the same over kombu's Sentinel channel: each connection asks the
sentinels for the current primary, so a worker follows a failover by reconnecting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.sentinel
from kombu.transport import redis as kombu_redis


def shared_client(channel: Any) -> redis.Redis:
    """The channel's one client of its current pool.

    A broker connection lost under a running worker (a Redis failover) is closed by Celery,
    and closing its channel restores the unacked messages through this client; when the
    transport was already closed, kombu would fail on its missing connection info with an
    ``AttributeError`` that stops the worker. A connection error is what kombu expects and
    ignores there (the messages are restored later, by the visibility timeout)."""
    if channel.connection.client is None:
        raise redis.ConnectionError("the broker connection is closed")
    shared = channel._shared_client
    if shared is None or shared.connection_pool is not channel.pool:  # a new pool after close
        shared = channel._shared_client = channel._create_client()
    return shared


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or shared_client(self)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, the sentinels taken from the ``sentinels`` transport option
    (``[[host, port], ...]``). kombu reads them from the broker URL's alternates, which its
    connection also fails over to one by one, and such a switch re-reads the URL's scheme:
    the worker would go on with kombu's own transport."""

    from_transport_options = (  # type: ignore[assignment]  # a longer tuple than kombu's
        *kombu_redis.SentinelChannel.from_transport_options,
        "sentinels",
    )
    sentinels: Sequence[Sequence[Any]] = ()
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or shared_client(self)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> redis.ConnectionPool:
        params = self._connparams(asynchronous)
        params.pop("host", None)
        params.pop("port", None)
        manager = redis.sentinel.Sentinel(
            [(str(host), int(port)) for host, port in self.sentinels],
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        if asynchronous:  # kept so that kombu closes the sentinels' connections too
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError("the 'master_name' transport option must be set")
        return manager.master_for(master_name, redis.Redis).connection_pool


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
