"""``provisioner webhook [--host H] [--port P] [--workers N] [--insecure]``: run the webhook
receiver (``producers/webhook.py``) with uvicorn. ``worker.cli.main`` adds the command; the
receiver is imported only when it runs, so that the command line starts cheaply."""

from __future__ import annotations

import click


@click.command(short_help="run the webhook receiver (POST /v1/events)")
@click.option("--host", help="address to bind (default: $PROVISIONER_WEBHOOK_HOST, 127.0.0.1)")
@click.option("--port", type=int, help="port (default: $PROVISIONER_WEBHOOK_PORT, 8000)")
@click.option(
    "--workers",
    type=int,
    help="processes sharing the port (default: $PROVISIONER_WEBHOOK_WORKERS, 1)",
)
@click.option(
    "--insecure", is_flag=True, help="accept requests without authentication (local use only)"
)
def webhook(host: str | None, port: int | None, workers: int | None, insecure: bool) -> int:
    """Run the webhook receiver (POST /v1/events, /healthz, /readyz)."""
    from producers.webhook import serve
    from worker import config

    conf = config.settings()
    serve(
        conf.webhook_host if host is None else host,
        conf.webhook_port if port is None else port,
        conf.webhook_workers if workers is None else workers,
        insecure,
    )
    return 0
