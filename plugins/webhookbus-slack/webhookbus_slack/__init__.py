"""Slack's Events API, slash commands and interactivity for webhookbus.

Slack signs every request the same way: ``X-Slack-Signature: v0=<hex>``, the HMAC-SHA256 of
``v0:<X-Slack-Request-Timestamp>:<raw body>`` under the app's signing secret.  The timestamp is
inside the signed text, so one outside ``tolerance_seconds`` is refused as a replay.

What the body is depends on the feature: the Events API posts JSON (an ``event_callback``, or
once, when the Request URL is saved, a signed ``url_verification`` whose ``challenge`` must be
echoed: a :class:`Reply`, published nowhere); slash commands and interactive components post a
form (the latter with its JSON in ``payload``).  Every kind carries Slack's deprecated
verification ``token``: a secret of the app, dropped from what is published.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from pydantic import Field

from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Reply,
    Response,
    Secrets,
    VerificationFailed,
    VerifierOptions,
    parse_form,
    parse_json,
)
from webhookbus.signing import check_timestamp, decode_digest, require_match


class SlackOptions(VerifierOptions):
    tolerance_seconds: float = Field(300, gt=0, description="How far X-Slack-Request-Timestamp may be from now (Slack: 5 minutes).")


class SlackVerifier:
    Options = SlackOptions

    def __init__(self, options: SlackOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the slack verifier needs the app's signing secret")
        self.options, self.secrets = options, secrets

    def verify(self, request: InboundRequest) -> Accepted | Reply:
        signature = request.headers.get("x-slack-signature")
        timestamp = request.headers.get("x-slack-request-timestamp")
        if signature is None or timestamp is None:
            raise VerificationFailed("missing X-Slack-Signature or X-Slack-Request-Timestamp header")
        if not signature.startswith("v0="):
            raise VerificationFailed("X-Slack-Signature is not a v0= signature")
        check_timestamp(timestamp, self.options.tolerance_seconds, now=request.received_at.timestamp())
        signed = b"v0:" + timestamp.encode("latin-1") + b":" + request.body
        require_match(self.secrets, signed, decode_digest(signature[3:], ["hex"]))
        if request.content_type == "application/x-www-form-urlencoded":
            return Accepted(self._form(request.body))
        try:
            body, body_json = parse_json(request.body)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is neither JSON nor a form") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
            raise MalformedPayload("body is not a Slack event (no type)")
        if body["type"] == "url_verification":
            challenge = body.get("challenge")
            if not isinstance(challenge, str):
                raise MalformedPayload("url_verification without a challenge")
            return Reply(Response.text(challenge), what="url_verification")
        event = _event(body)
        # The body's own text when nothing was dropped: records copy it instead of re-serialising.
        return Accepted(event if "token" in body else replace(event, data_json=body_json))

    def _form(self, raw: bytes) -> ProviderEvent:
        try:
            form = parse_form(raw)
        except ValueError:
            raise MalformedPayload("body is not a form") from None
        if "payload" in form:  # an interactive component: its JSON is in one field
            try:
                payload, _ = parse_json(form["payload"].encode())
            except (ValueError, RecursionError):
                raise MalformedPayload("payload is not JSON") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("type"), str) or not payload["type"]:
                raise MalformedPayload("payload has no type")
            user = payload.get("user")
            return ProviderEvent(name=f"interaction.{payload['type']}", data=_without_token(payload),
                                 subject=_text(user.get("id")) if isinstance(user, dict) else None)
        if "command" in form:
            return ProviderEvent(name="command", data=_without_token(form), subject=_text(form.get("user_id")),
                                 id=_text(form.get("trigger_id")))
        raise MalformedPayload("form is neither a slash command nor an interaction")


def _event(body: dict[str, Any]) -> ProviderEvent:
    """An ``event_callback`` is named by its inner event's type; other kinds (``app_rate_limited``) by their own."""
    inner = body.get("event")
    name = inner.get("type") if body["type"] == "event_callback" and isinstance(inner, dict) else body["type"]
    if not isinstance(name, str) or not name:
        raise MalformedPayload("event_callback without an event type")
    when = body.get("event_time")
    return ProviderEvent(
        name=name,
        data=_without_token(body),
        id=_text(body.get("event_id")),  # Ev...: the same on every retry of a delivery
        subject=_text(inner.get("user")) if isinstance(inner, dict) else None,
        time=datetime.fromtimestamp(when, timezone.utc) if type(when) is int and 0 < when < 1 << 33 else None,
    )


def _without_token(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the app's verification token, which must not reach every consumer of the topic.
    (``data_json`` is left out: the data is no longer the body.)"""
    return {key: value for key, value in data.items() if key != "token"}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["SlackOptions", "SlackVerifier"]
