"""Secrets stay secret (issue 5): during a full run with failures, the application's token is
in no Redis value, log line, audit entry or process argument."""

import json
import os
from pathlib import Path

import redis

from tests.support.harness import Harness, WorkerPool
from tests.support.scimserver import ScimServer
from worker.devstack.redis_server import RedisServer

TOKEN = "tok-5ecr3t-9f8e7d6c5b4a"


def redis_dump(client) -> bytes:
    """Every key and value of the Redis, as bytes."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        out.append(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            out += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            out += [json.dumps({k.decode(): v.decode() for k, v in f.items()}).encode()
                    for _, f in client.xrange(key)]  # fmt: skip
    return b"\n".join(out)


def all_argv() -> bytes:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
    return b"\n".join(found)


def test_the_token_appears_nowhere(tmp_path):
    # A Redis and a worker of this test's own, so that its log holds all the work done.
    server = RedisServer(tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url)
    log = tmp_path / "worker.log"
    pool = WorkerPool(server.url, processes=1, concurrency=2, log_file=log,
                      loglevel="DEBUG").start()  # fmt: skip
    try:
        with ScimServer(token=TOKEN) as scim:
            h = Harness(r, scim, tmp_path, redis_url=server.url)
            h.activate("zs")
            calls = {"n": 0}

            def echo_token_once(environ):  # an app that echoes the credentials in an error
                calls["n"] += 1
                if calls["n"] == 1:
                    body = json.dumps({"detail": f"bad header {environ.get('HTTP_AUTHORIZATION')}"})
                    return 400, {}, body.encode()
                return None

            scim.inject(echo_token_once)
            h.send(h.group("g1"), h.associate("zs", "g1"), h.user("u1"), h.member("g1", "u1"),
                   h.user("u2"), h.member("g1", "u2"))  # fmt: skip
            argv = all_argv()
            h.cli("retry", "zs")
            h.wait()
            assert len(scim.users()) == 2
            status = h.cli("status", "--json").stdout + h.cli("audit", "--json").stdout
    finally:
        pool.stop()
        dump = redis_dump(r)
        server.stop()
    secret = TOKEN.encode()
    assert secret not in dump
    assert secret not in log.read_bytes()
    assert b"prov.reconcile" in log.read_bytes() and b"Bearer ***" in log.read_bytes()
    assert TOKEN not in status
    assert secret not in argv
    assert "bad header" in status  # the echoed error is there, with the token scrubbed
