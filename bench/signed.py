"""Correctly signed UIP v1 webhooks, built before a run so the load generator only replays them.

Bodies follow UIP's ``identify`` event (seed docs).  Every request carries its own
``audit_id`` (UIP's event id, what webhookbus dedups on), so each is a new event, as in
production; the harness counts delivered events by that id.  Larger bodies grow a
``data.history`` list of small objects, which costs a JSON parser what a real nested
payload costs (one long string would not).  The signature is the lowercase hex
HMAC-SHA256 of the raw body, computed here with the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SECRET_ENV = "UIP_WEBHOOK_SECRET"
SECRET = "bench-uip-secret-not-for-production"
AUDIT_ID = re.compile(rb'"audit_id":"(audit_\d{10})"')
_PLACEHOLDER = 9_999_999_999


@dataclass(frozen=True)
class SignedRequest:
    path: str
    signature: str
    body: bytes

    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "x-uip-signature": self.signature}


def body_template(size: int) -> bytes:
    """A compact ``identify`` event of about ``size`` bytes, ids still to be filled in."""
    data: dict[str, object] = {
        "uip_id": "user_PLACEHOLD",
        "audit_id": f"audit_{_PLACEHOLDER}",
        "session_id": f"sess_{_PLACEHOLDER:012x}",
        "name": "John Doe",
        "date_of_birth": "1990-05-15",
        "country_of_origin": "US",
    }
    event = {"event": "identify", "data": data}
    history: list[dict[str, object]] = []
    body = _compact(event)
    while len(body) < size - 150:
        history.append({"step": len(history), "at": "2026-01-01T00:00:00Z", "check": "liveness", "result": "pass",
                        "score": 0.97, "detail": "face match above threshold"})
        data["history"] = history
        body = _compact(event)
    if len(body) < size - 12:  # the rest as a plain note, so the size lands on the byte
        data["note"] = ""
        data["note"] = "x" * (size - len(_compact(event)))
        body = _compact(event)
    return body


def uip_body(template: bytes, index: int) -> bytes:
    """The template with event ``index``'s ids (same length, so the size stays put)."""
    return (template.replace(b"user_PLACEHOLD", b"user_%09d" % (index % 5000))
                    .replace(b"audit_%d" % _PLACEHOLDER, b"audit_%010d" % index)
                    .replace(b"sess_%012x" % _PLACEHOLDER, b"sess_%012x" % index))


def sign(path: str, body: bytes, secret: str = SECRET) -> SignedRequest:
    return SignedRequest(path, hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(), body)


def signed_requests(paths: list[str], size: int, count: int, start: int = 0) -> list[SignedRequest]:
    """``count`` requests with consecutive event ids from ``start``, round-robin over ``paths``."""
    template = body_template(size)
    return [sign(paths[i % len(paths)], uip_body(template, start + i)) for i in range(count)]


def write_wrk_file(requests: Iterable[SignedRequest], target: Path) -> Path:
    """One request per line, ``path<TAB>signature<TAB>body``: what bench/wrk/presigned.lua reads."""
    with target.open("wb") as out:
        for request in requests:
            assert b"\n" not in request.body and b"\t" not in request.body
            out.write(f"{request.path}\t{request.signature}\t".encode() + request.body + b"\n")
    return target


def event_ids(values: Iterable[bytes]) -> set[bytes]:
    """The distinct UIP event ids found in Kafka record values (raw bodies or CloudEvents)."""
    return {match[1] for value in values if (match := AUDIT_ID.search(value))}


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
