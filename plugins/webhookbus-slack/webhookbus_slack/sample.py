"""Signed sample requests as Slack sends them, for ``webhookbus sign`` and the tests; written from
Slack's "Verifying requests from Slack" and Events API docs, not from the verifier."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from webhookbus.testing.samples import SignedRequest

VERIFICATION_TOKEN = "Jhj5dZrVaK7ZwHHjRyZWjbDl"  # Slack's deprecated per-app token, in every body


def signed(secret: bytes, path: str, body: bytes, content_type: str, timestamp: int | None = None) -> SignedRequest:
    """``body`` with Slack's headers: ``v0=`` + hex HMAC-SHA256 of ``v0:<timestamp>:<body>``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret, b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}
    return SignedRequest("POST", path, headers, body)


def sign_event(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """An Events API ``event_callback`` (an ``app_mention``), or ``data``."""
    now = int(time.time())
    body = data if data is not None else {
        "token": VERIFICATION_TOKEN, "team_id": "T123ABC456", "api_app_id": "A123ABC456", "type": "event_callback",
        "event": {"type": "app_mention", "user": "U123ABC456", "text": "<@U0LAN0Z89> is it everything a river should be?",
                  "ts": "1515449522.000016", "channel": "C123ABC456", "event_ts": "1515449522000016"},
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": now,
    }
    return signed(secret, path, json.dumps(body).encode(), "application/json", now)


def sign_url_verification(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """The handshake Slack sends when a Request URL is saved: the challenge must come back."""
    body = data if data is not None else {"token": VERIFICATION_TOKEN, "type": "url_verification",
                                          "challenge": uuid.uuid4().hex}
    return signed(secret, path, json.dumps(body).encode(), "application/json")


def sign_command(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """A slash command, form-encoded as Slack posts it."""
    form = data if data is not None else {
        "token": VERIFICATION_TOKEN, "team_id": "T0001", "team_domain": "example", "channel_id": "C2147483705",
        "user_id": "U2147483697", "user_name": "Steve", "command": "/weather", "text": "94070",
        "response_url": "https://hooks.slack.com/commands/1234/5678", "trigger_id": f"13345224609.738474920.{uuid.uuid4().hex}",
    }
    return signed(secret, path, urlencode(form).encode(), "application/x-www-form-urlencoded")


SIGNERS = {"event": sign_event, "url_verification": sign_url_verification, "command": sign_command}
