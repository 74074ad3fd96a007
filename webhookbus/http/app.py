"""The ASGI application: paths, limits, status codes and JSON errors.

A request's life: match the path to a provider, read the body within the size and time
limits, hand it to the provider's verifier, normalise the events, and answer 2xx only
once :mod:`webhookbus.delivery.delivery` says they are safe (on Kafka, or synced to the spool).
Every refusal is a :class:`HttpError` (or a plugin's :class:`~webhookbus.plugin.WebhookError`)
turned into a response in one place, :meth:`WebhookBus._handle`.
"""

from __future__ import annotations

import asyncio
import json
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from webhookbus.delivery.audit import RejectionAudit
from webhookbus.config import Config, Provider
from webhookbus.delivery.delivery import Delivery, EventTooLarge, Refused
from webhookbus.events import normalize
from webhookbus.log import log_fields, where
from webhookbus.activity import Activity
from webhookbus.metrics import Metrics, shared_directory
from webhookbus.plugin import Accepted, InboundRequest, Reply, Response, WebhookError, accepted_methods
from webhookbus.delivery.publish import Publisher, broker_reachable
from webhookbus.http import reload
from webhookbus.http.urls import BadForwardedHeader, request_url, trusted
from webhookbus.delivery.replies import HeldRequests
from webhookbus.http.deadlines import BodyDeadlines
from webhookbus.signing import matched_secret_index

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("webhookbus.http")


class HttpError(Exception):
    """A refusal decided by the listener itself (not by a verifier)."""

    def __init__(self, status: int, error: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or []


_EMPTY_200 = Response(200, b"", "text/plain")


def _json_response(status: int, payload: dict[str, Any]) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode())


class WebhookBus:
    """The ASGI callable.  Built from a loaded :class:`Config`; holds no module-level state."""

    def __init__(self, config: Config, publisher: Publisher | None = None, worker: int = 0) -> None:
        """``worker``: this process's index among ``server.workers`` (which reply partition it reads)."""
        self.metrics = Metrics(enabled=config.settings.admin is not None)
        admin = config.settings.admin
        self.activity = Activity(admin.recent_rejections if admin else 0, admin is not None, shared_directory())
        self.delivery = Delivery(config, publisher, self.metrics)
        self.publisher = self.delivery.publisher
        self.held = HeldRequests(config, worker, self.metrics)
        self._configure(config)
        self._stop_reloading: Callable[[], None] = lambda: None
        self._in_flight = 0
        self.deadlines = BodyDeadlines(self.server.request_timeout)
        self.startup_failure: str | None = None  # why the lifespan startup failed, for the engine's error
        # Request ids: a random prefix per process (the app is built after a worker forks) and
        # a counter; uuid4 reads os.urandom, a syscall per request that showed in profiles.
        self._request_ids = map(f"{secrets.token_hex(10)}{{:012x}}".format, itertools.count())

    def _configure(self, config: Config) -> None:
        """Everything derived from the config, assigned without an await in between."""
        previous = getattr(self, "config", None)
        if previous is None or previous.settings.audit != config.settings.audit:  # else keep its rate and drop count
            self.audit = RejectionAudit(config.settings.audit, self.publisher)
        self.config = config
        self.server = config.settings.server
        # Longest path first, so /hooks/a/b wins over /hooks/a for /hooks/a/b/c.
        self._providers = sorted(config.providers.values(), key=lambda p: len(p.path), reverse=True)
        self._exact = {p.path: p for p in self._providers}
        self._methods = {p.name: accepted_methods(p.verifier) for p in self._providers}
        self._proxies = trusted(self.server)
        self.metrics.serving(config)
        self.activity.serving(config)

    def reconfigure(self, config: Config) -> None:
        """Serve ``config`` from the next request on (:mod:`webhookbus.http.reload` checked that
        it changes only what may change while running).  A request past its provider lookup
        keeps the verifier, secrets and routes it started with."""
        self._configure(config)
        self.delivery.reconfigure(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":  # webhooks are POSTs: refuse the upgrade (hypercorn answers 403)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            log.warning("request", extra={"path": scope["path"], "status": 403, "error": "websocket_refused"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.delivery.start()
                    self.held.start()
                except Exception as exc:  # the engine would otherwise serve without a spool or producer
                    self.startup_failure = f"cannot start delivery: {exc}"
                    await send({"type": "lifespan.startup.failed", "message": self.startup_failure})
                    return
                self._stop_reloading = reload.listen(self)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._stop_reloading()
                await self.held.close()
                await self.deadlines.close()
                await self.delivery.close(self.server.graceful_timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def provider_for(self, path: str) -> Provider | None:
        path = path.rstrip("/") or "/"
        found = self._exact.get(path)
        if found is None:
            found = next((p for p in self._providers if path.startswith(p.path.rstrip("/") + "/")), None)
        return found

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = next(self._request_ids)
        fields: dict[str, Any] = {"request_id": request_id, "path": scope["path"]}
        try:
            response = await self._dispatch(scope, receive, fields)
            headers: list[tuple[bytes, bytes]] = []
        except (HttpError, WebhookError) as exc:
            # A plugin's error class cannot turn a refusal into a success: anything but 4xx/5xx is a 500.
            status = exc.status if 400 <= exc.status <= 599 else 500
            response = _json_response(status, {"error": exc.error, "detail": exc.detail})
            headers = getattr(exc, "headers", [])
            fields.update(error=exc.error, reason=exc.detail)
        except Exception as exc:  # a verifier bug must cost one request, not the process
            response = _json_response(500, {"error": "internal_error", "detail": f"request {request_id} failed"})
            headers = []
            fields.update(error="internal_error", reason=where(exc))
        elapsed = time.perf_counter() - started
        fields.update(status=response.status, ms=round(elapsed * 1000, 2))
        level = logging.INFO if response.status < 400 else logging.WARNING
        probe = fields.pop("probe", None)
        if probe is None or response.status >= 400:
            log_fields(log, level, "request", fields)
        if probe is None:
            self.metrics.answered(fields.get("provider", ""), response.status, elapsed)
            self.activity.answered(fields.get("provider"), response.status, fields)
        headers += [(b"content-type", response.content_type.encode()), (b"x-request-id", request_id.encode()),
                    (b"content-length", b"%d" % len(response.body))]  # not chunked: one write less
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _dispatch(self, scope: Scope, receive: Receive, fields: dict[str, Any]) -> Response:
        path = scope["path"]
        if path in ("/healthz", "/readyz"):
            fields["probe"] = True
            if scope["method"] not in ("GET", "HEAD"):
                raise HttpError(405, "method_not_allowed", "use GET", [(b"allow", b"GET, HEAD")])
            return await self._readyz() if path == "/readyz" else _json_response(200, {"status": "ok"})
        config, provider = self.config, self.provider_for(path)  # what this request is served under
        if provider is None:
            raise HttpError(404, "not_found", "no provider is configured at this path")
        fields["provider"] = provider.name
        methods = self._methods[provider.name]
        if scope["method"] not in methods:
            allow = ", ".join(sorted(methods))
            raise HttpError(405, "method_not_allowed", f"this path accepts {allow}", [(b"allow", allow.encode())])
        request = await self._read_request(provider, scope, receive)
        fields["client"] = request.client
        # The slot is taken once the body is in: a client that sends headers and then nothing
        # holds only its connection (until request_timeout), never a genuine provider's slot.
        if self._in_flight >= self.server.max_in_flight:
            raise HttpError(503, "overloaded", "too many requests in flight", [(b"retry-after", b"1")])
        self._in_flight += 1
        self.metrics.request_started()
        try:
            return await self._deliver(config, provider, request, fields)
        finally:
            self._in_flight -= 1
            self.metrics.request_ended()

    async def _deliver(self, config: Config, provider: Provider, request: InboundRequest,
                       fields: dict[str, Any]) -> Response:
        matched_secret_index.set(None)
        try:
            accepted = provider.verifier.verify(request)
            if not isinstance(accepted, (Accepted, Reply)):  # an async verifier
                accepted = await accepted
        except WebhookError as exc:
            self.audit.record(request, exc, fields["request_id"])
            self.metrics.verification_failed(provider.name, exc.error)
            raise
        finally:
            fields["secret_index"] = matched_secret_index.get()
        if isinstance(accepted, Reply):  # a handshake: nothing to publish, nothing to wait for
            fields["handshake"] = accepted.what
            self.metrics.handshake(provider.name)
            return accepted.response
        several = len(accepted.events) > 1
        events = [normalize(request, provider.settings.verifier, event, index if several else None)
                  for index, event in enumerate(accepted.events)]
        fields["events"] = [event.id for event in events]
        given_ids = [event.id for event in accepted.events]  # the provider's own, None where it gave none
        hold = self.held.hold(config.settings, provider, accepted, events, request.received_at)  # a consumer decides
        try:  # two paths: mypyc 2.4 compiles `if hold is not None` in a `finally` to a check that hold is None
            if hold is None:
                await self.delivery.accept(provider, given_ids, events, fields, config)
                return accepted.response or _EMPTY_200
            try:
                await self.delivery.accept(provider, given_ids, hold.events, fields, config)
                return await self.held.decision(hold, fields)
            finally:
                self.held.release(hold)
        except Refused as exc:
            raise HttpError(exc.status, exc.error, exc.detail, [(b"retry-after", str(exc.retry_after).encode())]) from None
        except EventTooLarge as exc:
            raise HttpError(413, "event_too_large", str(exc)) from None

    async def _read_request(self, provider: Provider, scope: Scope, receive: Receive) -> InboundRequest:
        limit = self.server.max_body_bytes
        # Reversed, so that of repeated headers the first one wins.
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in reversed(scope["headers"])}
        proxy = self.server.client_cert_header
        if proxy is not None and proxy.header.lower() in headers:
            # A proxy that adds its header instead of replacing it leaves the client's copy
            # first, which would win: refuse rather than guess which one the proxy wrote.
            name = proxy.header.lower().encode("latin-1")
            if sum(1 for key, _ in scope["headers"] if key.lower() == name) > 1:
                raise HttpError(400, "ambiguous_client_certificate", f"{proxy.header} appears more than once")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HttpError(413, "body_too_large", f"body exceeds {limit} bytes")
        body = await self._read_body(receive, limit)
        client = scope.get("client")
        try:
            url = request_url(scope, headers, self.server, provider, self._proxies)
        except BadForwardedHeader as exc:
            raise HttpError(400, "bad_forwarded_header", str(exc)) from None
        return InboundRequest(
            provider=provider.name,
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path", b"").decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            received_at=datetime.now(timezone.utc),
            client=f"{client[0]}:{client[1]}" if client else None,
            tls_peer=self._tls_peer(scope, headers, client),
            url=url,
        )

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes, within ``server.request_timeout``
        (:mod:`webhookbus.http.deadlines`: no timer per request, and the same on every engine)."""
        task = self.deadlines.arm()
        try:
            message = await receive()
            if message.get("more_body") is False and message["type"] == "http.request":  # the usual case
                body = message.get("body", b"")
                if len(body) > limit:
                    raise HttpError(413, "body_too_large", f"body exceeds {limit} bytes")
                return body
            chunks: list[bytes] = []
            size = 0
            while True:
                if message["type"] == "http.disconnect":
                    raise HttpError(400, "client_disconnected", "client went away before the body was read")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "body_too_large", f"body exceeds {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunk if len(chunks) == 1 else b"".join(chunks)
                message = await receive()
        except asyncio.CancelledError:
            if self.deadlines.expired(task):
                raise HttpError(408, "request_timeout", "body not received in time") from None
            raise
        finally:
            self.deadlines.disarm(task)

    def _tls_peer(self, scope: Scope, headers: dict[str, str], client: Any) -> dict[str, str] | None:
        """The client certificate subject: from a trusted TLS-terminating proxy's header
        (``server.client_cert_header``) when the request comes from one, else the one
        webhookbus's own TLS verified (the ASGI ``tls`` extension, from engines that pass it on)."""
        proxy = self.server.client_cert_header
        if proxy is not None and client and client[0] in proxy.trusted_proxies:
            subject = headers.get(proxy.header.lower())
            return {"subject": subject} if subject else None
        tls = (scope.get("extensions") or {}).get("tls")
        name = tls.get("client_cert_name") if tls else None
        return {"subject": name} if name else None

    async def _readyz(self) -> Response:
        ok, reason = self.publisher.ready()
        if ok:
            ok, reason = self.held.ready()
        if ok:
            ok, reason = await asyncio.to_thread(broker_reachable, self.config.settings.kafka.bootstrap_servers)
        return _json_response(200, {"status": "ready"}) if ok else _json_response(
            503, {"error": "not_ready", "detail": reason}
        )
