"""Requests as Square sends them, for ``webhookbus sign`` and the tests; written from Square's
"Validate notifications" guide: base64 HMAC-SHA256 of notification URL + body, keyed with the
subscription's signature key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from webhookbus.testing.samples import SignedRequest


def sign(options: Any, secret: bytes, path: str, data: Any = None, *, url: str | None = None) -> SignedRequest:
    """A ``payment.updated`` event (or ``data``), signed for ``url``: the notification URL as
    webhookbus will see it (``webhookbus sign`` passes it; default: a local listener)."""
    url = url or f"http://127.0.0.1:8080{path}"
    body = json.dumps(data if data is not None else {
        "merchant_id": "6SSW7HV8K2ST5", "type": "payment.updated", "event_id": str(uuid.uuid4()),
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": {"type": "payment", "id": "KkAkhdMsgzn59SM8A89WgKwekxLZY",
                 "object": {"payment": {"id": "KkAkhdMsgzn59SM8A89WgKwekxLZY", "status": "COMPLETED",
                                        "amount_money": {"amount": 100, "currency": "USD"}}}},
    }).encode()
    signature = base64.b64encode(hmac.new(secret, url.encode() + body, hashlib.sha256).digest()).decode()
    headers = {"Content-Type": "application/json", "x-square-hmacsha256-signature": signature}
    return SignedRequest("POST", path, headers, body, url)
