"""A local SCIM 2.0 application for the local stack: scim2-server (RFC 7643 schemas with the
enterprise User extension), in memory, behind a bearer token read from a file (never argv).

``python -m worker.devstack.localscim --port 8090 --token-file var/scim.token``
"""

from __future__ import annotations

import argparse
import contextlib
from wsgiref.simple_server import WSGIRequestHandler, make_server

from scim2_models import ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from worker.store.apps import read_token


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def build_application(token: str) -> BearerTokenApplication:
    config = load_default_service_provider_config()
    config.authentication_schemes = [*(config.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    return BearerTokenApplication(InMemoryStorage(), provider, bearer_tokens=[token])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token-file", required=True)
    args = parser.parse_args()
    application = build_application(read_token(args.token_file))
    with make_server(
        args.host, args.port, application, server_class=ThreadingWSGIServer, handler_class=_Quiet
    ) as server:
        print(f"SCIM application on http://{args.host}:{args.port}/v2", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
