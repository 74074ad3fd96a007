"""hypercorn: the base dependency and the fallback; the engine with HTTP/2.

hypercorn keeps the request head's size (h11's incomplete-event limit) and a read timeout
on every connection; it does not pass the client certificate to the application, so a
provider's ``client_subject`` needs another engine or a proxy (refused in the config).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import LifespanFailureError, wrap_app

from webhookbus.http.engines import KEEP_ALIVE_TIMEOUT, MAX_HEAD_BYTES, StartupFailed, head_size, refusal

if TYPE_CHECKING:
    from webhookbus.config import ServerSettings
    from webhookbus.http.app import Receive, Scope, Send, WebhookBus


class _Config(HypercornConfig):
    """hypercorn's settings, with the TLS context webhookbus built (one for every engine)."""

    tls_context: ssl.SSLContext | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.tls_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls_context


def hypercorn_config(server: ServerSettings, tls: ssl.SSLContext | None = None) -> HypercornConfig:
    config = _Config()
    config.bind = [f"{server.host}:{server.port}"]
    config.graceful_timeout = server.graceful_timeout
    # Slow clients (slowloris) and a head that never completes.  Past the app's own body deadline
    # (request_timeout plus its sweep's lateness, see webhookbus.http.deadlines), so that a late
    # body gets the app's 408 rather than a dropped connection.  Whole seconds: int(0.5) would be 0.
    # It runs after the body too, while the app works (a held hook, a publish wait), but a timeout
    # there costs no answer: hypercorn (0.18) sends the app http.disconnect and still writes its
    # response (tests/test_replies.py holds a request past it on a raw socket).
    config.read_timeout = math.ceil(server.request_timeout * 1.25) + 1
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.accesslog = None  # our own structured request log replaces it
    config.errorlog = None
    config.include_server_header = False
    config.tls_context = tls
    return config


def _head_limited(app: WebhookBus) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """h11 limits only a head still incomplete after a read: one that arrives whole in a
    single read (or over HTTP/2) is checked here, before the app sees it."""

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and head_size(scope) > MAX_HEAD_BYTES:
            headers, body = refusal(431, "headers_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
                                    scope.get("client"))
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return limited


class HypercornEngine:
    async def serve(self, app: WebhookBus, server: ServerSettings, sockets: list[socket.socket],
                    tls: ssl.SSLContext | None, shutdown: asyncio.Event) -> None:
        config = hypercorn_config(server, tls)
        if tls is not None:
            tls.set_alpn_protocols(config.alpn_protocols)  # h2 and http/1.1
        bound = Sockets(secure_sockets=sockets if tls else [], insecure_sockets=[] if tls else sockets, quic_sockets=[])
        try:
            await worker_serve(wrap_app(_head_limited(app), config.wsgi_max_body_size, "asgi"), config, sockets=bound,
                               shutdown_trigger=shutdown.wait)
        except LifespanFailureError as exc:
            raise StartupFailed(str(exc)) from None


ENGINE = HypercornEngine()
