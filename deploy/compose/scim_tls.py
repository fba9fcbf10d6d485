"""The stand-in SCIM application of deploy/compose.yaml: the local stack's scim2-server
(``worker/devstack/localscim.py``: in memory, the enterprise extension, a bearer token read
from a file) served over HTTPS, because ``apps activate`` takes plain ``http`` on loopback
only and the workers reach this application across the compose network.

``python scim_tls.py --port 8443 --token-file F --cert scim.crt --key scim.key``

It needs the devstack extra (the image's ``devstack`` target). Local use only.
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
from wsgiref.simple_server import WSGIRequestHandler, make_server

from scim2_server.testserver.cli import ThreadingWSGIServer

from worker.devstack.localscim import build_application
from worker.store.apps import read_token


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--cert", required=True, help="PEM certificate (and chain)")
    parser.add_argument("--key", required=True, help="PEM private key, unencrypted")
    args = parser.parse_args(argv)
    application = build_application(read_token(args.token_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    with make_server(
        args.host, args.port, application, server_class=ThreadingWSGIServer, handler_class=_Quiet
    ) as server:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        print(f"SCIM application on https://{args.host}:{args.port}/v2", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
