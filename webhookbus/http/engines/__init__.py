"""The HTTP engines that can serve :class:`~webhookbus.http.app.WebhookBus`: one interface, one module each.

The application is plain ASGI and knows no engine.  An engine owns HTTP parsing and
connections on sockets that :mod:`webhookbus.http.server` bound (so ``server.workers``, the
address-in-use error and SIGTERM are the same on every engine), serves until ``shutdown``
is set, then lets in-flight requests finish for ``graceful_timeout`` and runs the lifespan
shutdown (which flushes the producer).  Limits that the app can keep (body size and time,
in-flight requests) live in the app; what only an engine can see (the request head's size
and time, idle connections, TLS) each engine keeps.

What engines cannot all do is stated in :data:`ENGINES`, so that the config can refuse a
combination that would fail at run time (e.g. pinning a client certificate's subject on an
engine that does not pass the certificate on).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from webhookbus.config import ServerSettings
    from webhookbus.http.app import WebhookBus

# The request line and headers together; hypercorn's h11 limit, and the one the uvicorn engine adds.
MAX_HEAD_BYTES = 16 * 1024
KEEP_ALIVE_TIMEOUT = 5

log = logging.getLogger("webhookbus.http")


def head_size(scope: dict[str, Any]) -> int:
    """The request line and headers as sent, give or take the separators."""
    return len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(n) + len(v) + 4 for n, v in scope["headers"])


def refusal(status: int, error: str, detail: str, client: tuple[str, int] | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a refusal an engine answers itself (the app never saw the request),
    shaped like the app's own (JSON reason, request id, Content-Length), and its one log line."""
    request_id = secrets.token_hex(16)
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    log.warning("request", extra={"request_id": request_id, "status": status, "error": error, "reason": detail,
                                  "client": f"{client[0]}:{client[1]}" if client else None})
    return [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()),
            (b"content-length", b"%d" % len(body)), (b"connection", b"close")], body


class StartupFailed(Exception):
    """The application's lifespan startup failed (e.g. the spool directory cannot be written)."""


class Engine(Protocol):
    async def serve(self, app: WebhookBus, server: ServerSettings, sockets: list[socket.socket],
                    tls: ssl.SSLContext | None, shutdown: asyncio.Event) -> None:
        """Serve ``app`` on ``sockets`` (bound, not yet listening) until ``shutdown`` is set.

        Raises :class:`StartupFailed` when the lifespan startup fails."""


@dataclass(frozen=True)
class EngineInfo:
    modules: tuple[str, ...]  # what must be importable
    http2: bool
    client_certificate: bool  # hands the verified client certificate to the app (ASGI "tls" extension)


ENGINES = {
    "hypercorn": EngineInfo(("hypercorn",), http2=True, client_certificate=False),
    "uvicorn": EngineInfo(("uvicorn", "httptools"), http2=False, client_certificate=True),
}
FAST = "uvicorn"  # what auto picks when installed: bench/README.md has the measurements


def missing(name: str) -> list[str]:
    return [module for module in ENGINES[name].modules if importlib.util.find_spec(module) is None]


def resolve(setting: str) -> str:
    """``server.engine`` with ``auto`` resolved: the fast engine when installed, else hypercorn."""
    if setting != "auto":
        return setting
    return FAST if not missing(FAST) else "hypercorn"


def load(name: str) -> Engine:
    module = importlib.import_module(f"webhookbus.http.engines.{name}_engine")
    return module.ENGINE  # type: ignore[no-any-return]
