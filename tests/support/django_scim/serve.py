"""Serve one Django SCIM project on 127.0.0.1 and a free port, for tests.

``python -m tests.support.django_scim.serve --settings MODULE --db FILE --log FILE``, with the
bearer token in ``SCIM_TEST_TOKEN``: binds the port, runs the migrations on a SQLite file,
prints ``READY <port>`` and serves until terminated. One request at a time (wsgiref, a
connection per request): SQLite never sees two writers and the order of the log is the order
of the requests. Every request is appended to the log as one JSON line: method, path, query,
status and both bodies. ``POST /__test__/reset`` (with the token) empties the users and groups.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

RESET_PATH = "/__test__/reset"
StartResponse = Callable[..., Any]
Wsgi = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Server(WSGIServer):
    request_queue_size = 128  # a pool of workers opens its connections at once


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _body(raw: bytes) -> Any:
    """A body for the log: JSON when it parses, else text (None when empty)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:2000]


def logged(app: Wsgi, log_path: str) -> Wsgi:
    """``app``, appending each exchange to ``log_path``; ``RESET_PATH`` empties the database."""

    def wrapper(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        if environ.get("PATH_INFO") == RESET_PATH:
            return _reset(environ, start_response)
        sent: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            sent["status"], sent["headers"] = status, headers
            return start_response(status, headers, *exc)

        chunks = app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        entry = {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "status": int(sent["status"][:3]),
            "request": _body(raw),
            "response": _body(body),
        }
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return [body]

    return wrapper


def _reset(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    from django.apps import apps
    from django.conf import settings

    from tests.support.django_scim.auth import token_matches

    authorization = environ.get("HTTP_AUTHORIZATION", "")
    if environ["REQUEST_METHOD"] != "POST" or not token_matches(authorization):
        start_response("401 Unauthorized", [("Content-Length", "0")])
        return [b""]
    for label in settings.TEST_RESET_MODELS:
        apps.get_model(label).objects.all().delete()
    start_response("204 No Content", [])
    return [b""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", required=True, help="the Django settings module")
    parser.add_argument("--db", required=True, help="the SQLite file")
    parser.add_argument("--log", required=True, help="the request log (JSON lines)")
    args = parser.parse_args()
    if "SCIM_TEST_TOKEN" not in os.environ:
        sys.exit("SCIM_TEST_TOKEN is not set")
    server = make_server(
        "127.0.0.1", 0, lambda e, s: [], server_class=_Server, handler_class=_Quiet
    )
    os.environ.update(
        DJANGO_SETTINGS_MODULE=args.settings,
        SCIM_TEST_DB=args.db,
        SCIM_TEST_PORT=str(server.server_port),
    )
    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    server.set_app(logged(get_wsgi_application(), args.log))
    print(f"READY {server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
