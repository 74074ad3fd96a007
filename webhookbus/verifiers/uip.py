"""``uip``: UIP (identify / sign / message webhooks), both signing generations.

v1: ``X-UIP-Signature`` is the lowercase hex HMAC-SHA256 of the raw body.  UIP's own
Express sample, though, signs ``JSON.stringify(req.body)``: the body parsed and written
back compactly.  The two agree only when UIP sends compact JSON, so a receiver built from
the sample accepts that form too; so do we (option ``accept_compact_json``).

v2 (recognised by ``X-UIP-Timestamp``): the HMAC covers ``"{timestamp}.{raw body}"``,
the timestamp must be within ``tolerance_seconds`` of our receipt time, and the event name
and delivery id travel in ``X-UIP-Event`` / ``X-UIP-Delivery-Id``.  Those two headers are
not signed, so when the signed body names its event too, both must agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, ClassVar

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
from webhookbus.signing import check_timestamp, decode_digest, matching_secret, require_match

log = logging.getLogger("webhookbus.verifiers.uip")

V1_SUBJECTS = ("data.uip_id", "data.signing_uip_id")
V2_SUBJECTS = ("client_reference_id", "data.client_reference_id", "session_id", "data.session_id")
_LONE_SURROGATE = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")  # not as literals: mypyc refuses them
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class UipOptions(VerifierOptions):
    tolerance_seconds: float = Field(300, gt=0, description="v2: how far X-UIP-Timestamp may be from receipt time.")
    accept_compact_json: bool = Field(
        True, description="v1: also accept a signature of JSON.stringify(body), as UIP's Express sample computes."
    )


class UipVerifier:
    Options = UipOptions
    # What the README's PII paragraph lists: `webhookbus check` warns of a route sending them unruled.
    pii_fields: ClassVar[tuple[str, ...]] = (
        "subject", "data.data.name", "data.data.date_of_birth", "data.data.country_of_origin",
        "data.data.uip_id", "data.data.signing_uip_id",
    )

    def __init__(self, options: UipOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the uip verifier needs at least one secret")
        self.options = options
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        signature = request.headers.get("x-uip-signature")
        if signature is None:
            raise VerificationFailed("missing X-UIP-Signature header")
        candidates = decode_digest(signature, ["hex"])
        timestamp = request.headers.get("x-uip-timestamp")
        if timestamp is not None:
            return self._verify_v2(request, candidates, timestamp)
        if not candidates:
            raise VerificationFailed("signature header is not a valid digest")
        index = matching_secret(self.secrets, request.body, candidates)
        parsed = None
        if index is None and self.options.accept_compact_json:
            parsed = _try_parse(request.body)  # unparsable: no compact form, so a plain 401
            if parsed is not None:
                # If this matches, UIP signed the compact text, not the body (whose bytes need
                # only parse to the same value): records then carry the signed text.
                parsed = (parsed[0], compact_json(parsed[0]))
                index = matching_secret(self.secrets, parsed[1], candidates)
        if index is None:
            raise VerificationFailed("signature does not match")
        log.debug("uip v1 signature verified", extra={"secret_index": index})
        body, body_json = parse_body(request.body) if parsed is None else parsed
        name = body.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedPayload("body has no event name")
        return Accepted(ProviderEvent(name=name, data=body, id=_text(body, "data.audit_id"),
                                      subject=_first_text(body, V1_SUBJECTS), data_json=body_json))

    def _verify_v2(self, request: InboundRequest, candidates: list[bytes], timestamp: str) -> Accepted:
        seconds = check_timestamp(timestamp, self.options.tolerance_seconds, now=request.received_at.timestamp())
        index = require_match(self.secrets, timestamp.encode() + b"." + request.body, candidates)
        log.debug("uip v2 signature verified", extra={"secret_index": index})
        body, body_json = parse_body(request.body)
        signed_name = body.get("event")
        header_name = request.headers.get("x-uip-event") or None
        if header_name is not None and not _EVENT_NAME.fullmatch(header_name):
            raise MalformedPayload("X-UIP-Event is not an event name")
        name = header_name or signed_name
        if not isinstance(name, str) or not name:
            raise MalformedPayload("no event name in X-UIP-Event or the body")
        if signed_name is not None and not isinstance(signed_name, str):
            raise MalformedPayload("the body's event is not a string")  # a header could not name it
        if isinstance(signed_name, str) and signed_name != name:
            raise VerificationFailed("X-UIP-Event does not match the signed body")
        return Accepted(
            ProviderEvent(
                name=name,
                data=body,
                id=_text(body, "data.audit_id") or _signed_id(name, request.body),
                subject=_first_text(body, V2_SUBJECTS),
                time=datetime.fromtimestamp(seconds, timezone.utc),
                data_json=body_json,
                extensions=_delivery_id(request),
            )
        )


def _signed_id(name: str, body: bytes) -> str:
    """The event's id without an ``audit_id``: a hash of what was signed, plus the event name
    (two events may share a body).  Not ``X-UIP-Delivery-Id``: that header is not signed, so
    a replay within the timestamp window could pass any id and be published again.  A retry
    repeats name and body (the timestamp may be new), so it keeps the id and is deduplicated."""
    return hashlib.sha256(name.encode() + b"\n" + body).hexdigest()


def _delivery_id(request: InboundRequest) -> dict[str, str]:
    """``X-UIP-Delivery-Id`` for whoever correlates with UIP's dashboard; unsigned, never the id."""
    delivery = request.headers.get("x-uip-delivery-id")
    return {"uipdeliveryid": delivery} if delivery else {}


def compact_json(body: Any) -> bytes:
    """``JSON.stringify(JSON.parse(raw))`` for what UIP sends: compact, key order kept, UTF-8.

    Python writes the same text for strings, integers below 2**53, booleans and null.  It
    differs for some numbers (``1.0`` stays ``1.0``, JS writes ``1``; ``1e-07`` vs ``1e-7``;
    integers past 2**53, which JS rounds) and for integer-like keys, which JS moves first.
    Such a body then only verifies by its raw-body signature: failing closed, never open.
    """
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    # JSON.stringify escapes lone surrogates (legal in a "\ud800" escape) instead of emitting them.
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode("utf-8")


def parse_body(raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    """The body as a JSON object, and its text for ``ProviderEvent.data_json``."""
    parsed = _try_parse(raw)
    if parsed is None:
        raise MalformedPayload("body is not a JSON object")
    return parsed


def _try_parse(raw: bytes) -> tuple[dict[str, Any], bytes | None] | None:
    try:
        body, text = parse_json(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return (body, text) if isinstance(body, dict) else None


def _text(body: Any, path: str) -> str | None:
    value = dotted_get(body, path)
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def _first_text(body: Any, paths: tuple[str, ...]) -> str | None:
    for path in paths:
        if (value := _text(body, path)) is not None:
            return value
    return None
