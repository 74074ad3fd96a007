"""Correctly signed sample requests, for ``webhookbus sign --provider <a stripe provider>``, ``make run``
and this plugin's tests.  Registered in the ``webhookbus.signers`` entry point group.

Written from Stripe's documentation of the scheme, not from :mod:`.verifier`, so the tests pit
one reading of the docs against the other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from webhookbus.testing.samples import SignedRequest


def signature_header(secrets: Sequence[bytes], timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=<hex>`` with one ``v1`` per secret, as Stripe sends while a secret is rolled."""
    signed = f"{timestamp}.".encode() + body
    return ",".join([f"t={timestamp}", *(f"v1={hmac.new(s, signed, hashlib.sha256).hexdigest()}" for s in secrets)])


def sign(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """A ``payment_intent.succeeded`` event (or ``data``), signed now with ``secret``."""
    event = data if data is not None else {
        "id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": "payment_intent.succeeded",
        "created": int(time.time()), "livemode": False,
        "data": {"object": {"id": "pi_3Example", "object": "payment_intent", "amount": 2000, "currency": "eur",
                            "customer": "cus_Example"}},
    }
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature_header([secret], int(time.time()), body)}
    return SignedRequest("POST", path, headers, body)
