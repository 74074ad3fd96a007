"""Requests as Meta sends them, for ``webhookbus sign`` and the tests; written from Meta's Webhooks
Getting Started guide (verification requests, event notifications, payload validation)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from webhookbus.testing.samples import SignedRequest


def sign_event(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """A WhatsApp Business ``messages`` notification (or ``data``), signed with the app secret."""
    body = json.dumps(data if data is not None else {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881",
                                                          "phone_number_id": "106540352242922"},
            "messages": [{"from": "16505551234", "id": f"wamid.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": "Hello"}}]}}]}],
    }).encode()
    algorithm = getattr(options, "signature", "sha256")
    header = "X-Hub-Signature-256" if algorithm == "sha256" else "X-Hub-Signature"
    digest = hmac.new(secret, body, getattr(hashlib, algorithm)).hexdigest()
    return SignedRequest("POST", path, {"Content-Type": "application/json", header: f"{algorithm}={digest}"}, body)


def subscribe(options: Any, secret: bytes, path: str, data: Any = None, *, verify_token: str | None = None) -> SignedRequest:
    """The verification GET Meta sends when the callback URL is saved; the token from the environment
    variable the options name (``verify_token`` overrides it)."""
    token = verify_token if verify_token is not None else os.environ.get(getattr(options, "verify_token_env", ""), "")
    query = urlencode({"hub.mode": "subscribe", "hub.challenge": str(uuid.uuid4().int)[:10], "hub.verify_token": token})
    return SignedRequest("GET", f"{path}?{query}", {}, b"")


SIGNERS = {"event": sign_event, "subscribe": subscribe}
