"""The listener's contract with plugins, called as plain ASGI (no server, no broker needed:
every case here is refused before anything is published)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import datetime, timezone

from webhookbus.app import WebhookBus
from webhookbus.config import parse_config
from webhookbus.events import normalize
from webhookbus.plugin import InboundRequest, ProviderEvent, WebhookError

CONFIG = """
providers:
  demo: {verifier: hmac, path: /hooks/demo, secrets: ["literal:s3cr3t-for-app-tests"]}
"""


def call(app: WebhookBus, path: str = "/hooks/demo", body: bytes = b"{}") -> tuple[int, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1234)}
    asyncio.run(app(scope, receive, send))
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
