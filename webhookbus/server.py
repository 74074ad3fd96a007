"""Running the application under hypercorn, with limits and graceful shutdown.

Hypercorn owns the sockets and HTTP parsing; here its settings are derived from ours so
there is one config file.  On the shutdown trigger hypercorn stops accepting, gives
in-flight requests ``graceful_timeout`` seconds, then runs the lifespan shutdown, which
flushes the Kafka producer.
"""

from __future__ import annotations

import asyncio
import signal
import ssl

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from webhookbus.app import WebhookBus
from webhookbus.config import Config, ServerSettings


def hypercorn_config(server: ServerSettings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{server.host}:{server.port}"]
    config.graceful_timeout = server.graceful_timeout
    config.read_timeout = int(server.request_timeout)  # idle connections and slow clients (slowloris)
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.keep_alive_timeout = 5
    config.accesslog = None  # our own structured request log replaces it
    config.errorlog = None
    config.include_server_header = False
    if server.tls is not None:
        config.certfile, config.keyfile = server.tls.certfile, server.tls.keyfile
        config.ca_certs = server.tls.ca_certs
        if server.tls.require_client_cert:
            config.verify_mode = ssl.CERT_REQUIRED
    return config


async def serve(config: Config, shutdown: asyncio.Event | None = None) -> None:
    """Serve until ``shutdown`` is set or, when none is given, until SIGTERM/SIGINT."""
    app = WebhookBus(config)
    if shutdown is None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
    hyper = hypercorn_config(config.settings.server)
    await hypercorn_serve(app, hyper, shutdown_trigger=shutdown.wait, mode="asgi")
