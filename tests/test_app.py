"""The listener's contract with plugins, called as plain ASGI (no server, no broker needed:
every case here is refused before anything is published, but for the ids of several events,
read from a publisher that acks at once)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from datetime import datetime, timezone

from webhookbus.http.app import WebhookBus
from webhookbus.config import parse_config
from webhookbus.events import decode_kafka, normalize
from webhookbus.plugin import InboundRequest, ProviderEvent, WebhookError

CONFIG = """
providers:
  demo: {verifier: hmac, path: /hooks/demo, secrets: ["literal:s3cr3t-for-app-tests"]}
"""


def call(app: WebhookBus, path: str = "/hooks/demo", body: bytes = b"{}") -> tuple[int, dict]:
    return asyncio.run(answer(app, path, body))


async def answer(app: WebhookBus, path: str = "/hooks/demo", body: bytes = b"{}") -> tuple[int, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1234)}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"] or b"null")


def app_with(verifier: object) -> WebhookBus:
    config = parse_config(CONFIG)
    demo = dataclasses.replace(config.providers["demo"], verifier=verifier)
    return WebhookBus(dataclasses.replace(config, providers={"demo": demo}))


class Crashes:
    def verify(self, request: InboundRequest):
        raise KeyError("s3cr3t-for-app-tests")  # a plugin bug whose message holds something private


class Teapot(WebhookError):
    status = 200  # a plugin error class that claims success
    error = "not_really"


class ClaimsSuccess:
    def verify(self, request: InboundRequest):
        raise Teapot("nope")


def test_a_crashing_plugin_costs_one_request_and_leaks_nothing(caplog):
    app = app_with(Crashes())
    with caplog.at_level(logging.INFO, logger="webhookbus.http"):
        status, payload = call(app)
    assert status == 500
    assert payload["error"] == "internal_error"
    assert "s3cr3t" not in json.dumps(payload)
    [record] = [r for r in caplog.records if r.name == "webhookbus.http"]
    assert record.reason.startswith("KeyError at test_app.py:")
    assert "s3cr3t" not in record.getMessage() + str(vars(record))
    assert record.exc_info is None, "no traceback in the log"
    assert call(app)[0] == 500, "the app keeps serving"


def test_a_plugin_error_can_never_be_a_success():
    status, payload = call(app_with(ClaimsSuccess()))
    assert status == 500 and payload["error"] == "not_really"


def test_plugin_extensions_cannot_overwrite_webhookbus_attributes():
    now = datetime.now(timezone.utc)
    request = InboundRequest("demo", "POST", "/hooks/demo", "", {}, b"{}", now)
    event = normalize(request, "hmac", ProviderEvent("x", {}, extensions={"verifier": "forged", "tenant": "acme"}))
    assert event.extensions["verifier"] == "hmac"
    assert event.extensions["tenant"] == "acme"


def test_an_http2_stream_that_never_sends_its_body_gets_408_at_request_timeout():
    """Over HTTP/2 a client's PINGs keep hypercorn's read timeout from ever firing for a stream."""
    config = parse_config(CONFIG + "server: {request_timeout: 0.3}\n")
    app = WebhookBus(config)
    sent: list[dict] = []

    async def never() -> dict:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "http_version": "2", "method": "POST", "path": "/hooks/demo", "raw_path": b"/hooks/demo",
             "query_string": b"", "headers": [], "client": ("127.0.0.1", 1234)}

    async def main() -> None:
        await asyncio.wait_for(app(scope, never, send), 5)

    asyncio.run(main())
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"] == "request_timeout"
    assert app._in_flight == 0, "the slot is given back"


def test_a_websocket_upgrade_is_refused_and_logged(caplog):
    app = WebhookBus(parse_config(CONFIG))
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level(logging.WARNING, "webhookbus.http"):
        asyncio.run(app({"type": "websocket", "path": "/hooks/demo"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert [r.error for r in caplog.records] == ["websocket_refused"]


def test_a_provider_at_the_root_serves_the_paths_below_it():
    config = parse_config(CONFIG.replace("path: /hooks/demo", "path: /"))
    app = WebhookBus(config)
    assert app.provider_for("/github").name == "demo"
    assert app.provider_for("/").name == "demo"


def test_readyz_probes_a_bootstrap_server_without_a_port_on_kafkas_default(monkeypatch):
    from webhookbus.delivery import publish

    dialled: list[tuple[str, int]] = []

    def create_connection(address, timeout):
        dialled.append(address)
        raise OSError("refused")

    monkeypatch.setattr(publish.socket, "create_connection", create_connection)
    assert publish.broker_reachable(["broker.internal"])[0] is False
    assert dialled == [("broker.internal", 9092)]


def test_several_events_of_one_request_without_ids_get_ids_of_their_own(tmp_path):
    """Consumers dedup on source+id: one id for two events would lose the second."""
    from test_http_fuzz import AckingPublisher

    from webhookbus.plugin import Accepted

    class TwoEvents:
        def verify(self, request: InboundRequest):
            return Accepted(ProviderEvent("a", {}), ProviderEvent("b", {}), ProviderEvent("c", {}, id="own"))

    class OneEvent:
        def verify(self, request: InboundRequest):
            return Accepted(ProviderEvent("a", {}))

    def published_ids(verifier: object) -> list[str]:
        """The id of every record one request published (a publisher that acks at once)."""
        config = parse_config(CONFIG + f"routes: [{{provider: demo, topic: hooks}}]\nspool: {{directory: {tmp_path}}}\n")
        publisher = AckingPublisher()
        app = WebhookBus(dataclasses.replace(config, providers={
            "demo": dataclasses.replace(config.providers["demo"], verifier=verifier)}), publisher)  # type: ignore[arg-type]

        async def one_request() -> int:
            app.delivery.start()
            try:
                return (await answer(app, body=b'{"x": 1}'))[0]
            finally:
                await app.delivery.close(1)

        assert asyncio.run(one_request()) == 200
        return [decode_kafka(message.value, message.headers)["id"] for message in publisher.messages]

    digest = hashlib.sha256(b'{"x": 1}').hexdigest()
    assert published_ids(TwoEvents()) == [f"{digest}-0", f"{digest}-1", "own"]
    assert published_ids(OneEvent()) == [digest], "one event keeps the plain body hash"


def test_a_client_certificate_header_sent_twice_is_refused_not_guessed():
    """A proxy that appends its header leaves the client's forged copy first."""
    config = parse_config(CONFIG + 'server: {client_cert_header: {header: X-SSL-Client-S-DN, trusted_proxies: ["127.0.0.1"]}}\n')
    app, sent = WebhookBus(config), []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"x-ssl-client-s-dn", b"CN=forged"), (b"x-ssl-client-s-dn", b"CN=webhooks.launchkey.com")]
    scope = {"type": "http", "method": "POST", "path": "/hooks/demo", "raw_path": b"/hooks/demo", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1234)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["error"] == "ambiguous_client_certificate"
