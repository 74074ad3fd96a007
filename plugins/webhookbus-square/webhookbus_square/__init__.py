"""Square's webhooks for webhookbus: ``x-square-hmacsha256-signature`` is the base64 HMAC-SHA256,
under the subscription's signature key, of the notification URL followed by the raw body.

The notification URL is the one configured at Square, as Square called it: behind a proxy or a
load balancer it is not what the listener sees, which is what ``InboundRequest.url`` answers
(``public_url`` in the config, or a trusted proxy's ``X-Forwarded-Proto``/``X-Forwarded-Host``).
A request signed for another URL -- another host, scheme, path or query -- is refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Secrets,
    VerificationFailed,
    VerifierOptions,
    parse_json,
)
from webhookbus.signing import decode_digest, require_match


class SquareOptions(VerifierOptions):
    """Nothing to set: the notification URL comes from the listener (see the module docstring)."""


class SquareVerifier:
    Options = SquareOptions

    def __init__(self, options: SquareOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the square verifier needs the subscription's signature key")
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        signature = request.headers.get("x-square-hmacsha256-signature")
        if signature is None:
            raise VerificationFailed("missing x-square-hmacsha256-signature header")
        signed = request.url.encode("utf-8", "surrogateescape") + request.body
        require_match(self.secrets, signed, decode_digest(signature, ["base64"]))
        try:
            body, body_json = parse_json(request.body)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
            raise MalformedPayload("body is not a Square event (no type)")
        return Accepted(ProviderEvent(
            name=body["type"],                   # payment.updated, webhooks.test_notification...
            data=body,
            data_json=body_json,
            id=_text(body.get("event_id")),      # the same on Square's retries
            subject=_text(body.get("merchant_id")),
            time=_time(body.get("created_at")),
        ))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: Any) -> datetime | None:
    """RFC 3339 with up to nine fractional digits (Python keeps six); anything else: receipt time."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
