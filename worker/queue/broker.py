"""kombu's Redis transport, without a Redis client built for every message received or acked.

With ``acks_late``, kombu records each delivered message as unacked and removes it on the ack,
and for both it builds a new ``redis.Redis`` over the channel's connection pool: about 0.3 ms
of CPU each (its response-callback tables), a tenth of a worker's time at 200 requests/s. A
``redis.Redis`` is thread-safe and borrows a pooled connection per command, so one per pool
serves every thread of the worker. Selected by ``broker_transport`` (``celery_app.configure``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:  # a new pool after close
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
