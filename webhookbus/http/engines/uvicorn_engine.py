"""uvicorn with httptools (C parser) on the application's event loop: the fast engine.

Measured in bench/ (README "Performance"): the same app costs ~40% less CPU per request
than on hypercorn.  What uvicorn does not do and webhookbus promises on every engine is
added in :class:`_Protocol` and :class:`_Server`, without a timer per request:

- a 16 KiB limit on the request line and headers (httptools has none): 431;
- ``server.request_timeout`` for the request head, a new connection's included (uvicorn
  waits for ever): 408 from a sweep twice a second over the open connections;
- the verified client certificate as the ASGI ``tls`` scope extension (uvicorn gives none);
- its own refusals (malformed requests) as short JSON with a request id and one log line.

No HTTP/2 (uvicorn's HTTP/2 is another protocol implementation; hypercorn has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from webhookbus.http.engines import KEEP_ALIVE_TIMEOUT, MAX_HEAD_BYTES, StartupFailed, refusal
from webhookbus.http.tls import tls_extension

if TYPE_CHECKING:
    from webhookbus.config import ServerSettings
    from webhookbus.http.app import WebhookBus

SWEEP_TICKS = 5  # uvicorn's server ticks every 0.1 s


class _HeadTooLarge(Exception):
    pass


class _Protocol(HttpToolsProtocol):
    head_since: float | None  # when the current request head started (None: not reading one)
    head_bytes: int  # bytes of earlier reads while the head was incomplete
    read_size: int
    tls: dict[str, Any] | None
    refusal: tuple[int, str, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_since, self.head_bytes, self.read_size = self.loop.time(), 0, 0
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls = tls_extension(ssl_object) if ssl_object is not None else None

    def data_received(self, data: bytes) -> None:
        self.read_size = len(data)
        super().data_received(data)
        if self.head_since is not None and not self.transport.is_closing():  # still reading a head
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.answer(431, "headers_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_since is None:
            self.head_since = self.loop.time()
        if self.tls is not None:
            self.scope["extensions"] = {"tls": self.tls}

    def on_headers_complete(self) -> None:
        # Measured only when the reads that carried this head were large enough to hold a head
        # over the limit: a webhook's head and body usually come in one small read.
        if self.head_bytes + self.read_size > MAX_HEAD_BYTES and self._head_size() > MAX_HEAD_BYTES:
            self.refusal = (431, "headers_too_large", f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
            raise _HeadTooLarge  # httptools stops parsing; uvicorn answers through send_400_response
        self.head_since, self.head_bytes = None, 0
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def send_400_response(self, msg: str) -> None:
        status, error, detail = self.refusal or (400, "bad_request", "malformed HTTP request")
        self.answer(status, error, detail)

    def answer(self, status: int, error: str, detail: str) -> None:
        """Refuse and close: for what the application never sees (a bad or late request head)."""
        self.head_since = None
        if self.cycle is not None and not self.cycle.response_complete:  # a response is on its way
            self.transport.close()
            return
        headers, body = refusal(status, error, detail, self.client)
        self.transport.write(b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % header for header in headers),
                                       b"\r\n", body]))
        self.transport.close()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: asyncio.Event, request_timeout: float) -> None:
        super().__init__(config)
        self.shutdown_event, self.request_timeout = shutdown, request_timeout

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()  # webhookbus.http.server owns SIGTERM and SIGINT

    async def on_tick(self, counter: int) -> bool:
        if counter % SWEEP_TICKS == 0:
            self._expire_heads()
        if self.shutdown_event.is_set():
            self.should_exit = True
        return await super().on_tick(counter)

    def _expire_heads(self) -> None:
        late = asyncio.get_running_loop().time() - self.request_timeout
        for connection in list(self.server_state.connections):
            since = getattr(connection, "head_since", None)
            if since is not None and since < late:
                connection.answer(408, "request_timeout", "request head not received in time")


class UvicornEngine:
    async def serve(self, app: WebhookBus, server: ServerSettings, sockets: list[socket.socket],
                    tls: ssl.SSLContext | None, shutdown: asyncio.Event) -> None:
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)  # its info lines; refusals are logged above
        config = uvicorn.Config(
            app, http=_Protocol, ws="none", lifespan="on", interface="asgi3", log_config=None, access_log=False,
            proxy_headers=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            timeout_graceful_shutdown=server.graceful_timeout,  # type: ignore[arg-type]
            ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
        )
        try:
            await _Server(config, shutdown, server.request_timeout).serve(sockets=sockets)
        except SystemExit:  # uvicorn's way of saying the lifespan startup failed
            raise StartupFailed(getattr(app, "startup_failure", None) or "the application did not start") from None


ENGINE = UvicornEngine()
