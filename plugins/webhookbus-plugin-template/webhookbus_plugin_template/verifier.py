"""Stripe webhooks: ``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``.

Stripe signs ``"{t}.{raw body}"`` with HMAC-SHA256, keyed with the endpoint's signing secret
(the whole ``whsec_...`` string, as text: unlike Standard Webhooks it is not base64-decoded).
While a secret is being rolled Stripe sends one ``v1`` per active secret; ``v0`` and any
other scheme are ignored.  The timestamp is inside the signed text, so refusing one outside
``tolerance_seconds`` is what stops a captured request from being replayed later.

This module is the template's whole verifier: copy it, change the header, the signed text and
the event fields, and keep the shape (options model, ``__init__`` checking the secrets once,
``verify`` raising :class:`VerificationFailed` / :class:`MalformedPayload`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import Field

from webhookbus.events import dotted_get
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
from webhookbus.signing import check_timestamp, decode_digest, require_match

HEADER = "stripe-signature"  # InboundRequest.headers keys are lower-case


class StripeOptions(VerifierOptions):
    """Everything under ``options:`` in the provider's YAML block; a typo is a config error."""

    tolerance_seconds: float = Field(300, gt=0, description="How far t= may be from receipt time (Stripe's default).")
    subject_field: str | None = Field(
        "data.object.customer", description="Dotted JSON field holding the user or customer id."
    )


class StripeVerifier:
    Options = StripeOptions

    def __init__(self, options: StripeOptions, secrets: Secrets) -> None:
        # Built once, before the listener starts: a ValueError here is a config error naming the provider.
        if not secrets:
            raise ValueError("the stripe verifier needs the endpoint's signing secret (whsec_...)")
        self.options = options
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        # Called concurrently for every request: read self, never write it.
        header = request.headers.get(HEADER)
        if header is None:
            raise VerificationFailed("missing Stripe-Signature header")
        timestamp, signatures = parse_signature_header(header)
        check_timestamp(timestamp, self.options.tolerance_seconds, now=request.received_at.timestamp())
        candidates = [digest for value in signatures for digest in decode_digest(value, ["hex"])]
        # Any configured secret may match (rotation); the listener logs which one by index, never the value.
        require_match(self.secrets, f"{timestamp}.".encode() + request.body, candidates)

        # Only now is the body trusted enough to parse.  parse_json also returns the JSON text to
        # hand over as data_json, so webhookbus copies it into records instead of re-serialising.
        try:
            event, event_json = parse_json(request.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise MalformedPayload("body is not valid JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
            raise MalformedPayload("body is not a Stripe event (no type)")
        return Accepted(
            ProviderEvent(
                name=event["type"],                      # -> CloudEvents type "<provider>.payment_intent.succeeded"
                data=event,
                id=_text(event.get("id")),               # evt_...: the same on every retry, so consumers dedup on it
                subject=_text(dotted_get(event, self.options.subject_field)),
                time=_created(event.get("created")),
                data_json=event_json,                    # the text data came from; None if you build or change data
            )
        )


def parse_signature_header(header: str) -> tuple[str, list[str]]:
    """``(t, [v1, ...])``; exactly one ``t`` and at least one ``v1``, or :class:`VerificationFailed`."""
    pairs = [item.strip().partition("=") for item in header.split(",")]
    stamps = [value for key, _, value in pairs if key == "t"]
    signatures = [value for key, _, value in pairs if key == "v1"]
    if len(stamps) != 1:
        raise VerificationFailed("Stripe-Signature needs exactly one t=")
    if not signatures:
        raise VerificationFailed("Stripe-Signature has no v1= signature")
    return stamps[0], signatures


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _created(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None
