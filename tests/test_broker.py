"""The worker's kombu transport (``worker.queue.broker``): one Redis client per channel for the
bookkeeping of every message received and acked, where kombu builds one each time."""

import redis

from worker.queue.broker import Channel
from worker.queue.celery_app import celery


def test_acks_share_one_client_until_the_pool_changes(r: redis.Redis) -> None:
    with celery().connection_for_read() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = redis.Redis()  # never connected: only handed through
        with channel.conn_or_acquire(given) as passed:
            assert passed is given  # a client handed in is used as it is
        channel._pool = None  # what kombu does when it closes its pools
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()  # the same Redis as the test's
        # kombu's unacked bookkeeping goes through it: a message delivered, then acked
        channel.qos.append(_Message(), "tag-1")
        assert r.hexists(channel.unacked_key, "tag-1")
        channel.qos.ack("tag-1")
        assert not r.hexists(channel.unacked_key, "tag-1")


class _Message:
    delivery_info = {"exchange": "", "routing_key": "test.capture"}
    _raw = {"body": "", "headers": {}, "properties": {}}


def test_closing_a_channel_after_its_transport_closed_does_not_stop_the_worker(
    r: redis.Redis,
) -> None:
    """A broker lost in a failover: Celery closes the connection, the channel's close restores
    the unacked messages, and the transport may be closed already. kombu then raised an
    AttributeError (no connection info) that stopped the worker; it must be a connection
    error, which kombu's ``ignore_errors`` around the close swallows."""
    with celery().connection_for_read() as connection:
        channel = connection.default_channel
        channel.qos.append(_Message(), "tag-2")  # a message delivered, not acked
        channel._pool = None  # the pools were closed
        channel.connection.client = None  # and the transport with them
        try:
            with channel.conn_or_acquire():
                raise AssertionError("a client of a closed transport")
        except redis.ConnectionError:
            pass
        assert redis.ConnectionError in connection.connection_errors  # what ignore_errors takes
