"""``hmac``: the generic verifier for any vendor that signs the raw body with HMAC-SHA256.

Covers the common shape "header = [prefix] + hex-or-base64(HMAC-SHA256(secret, body))"
(GitHub's ``X-Hub-Signature-256: sha256=...``, Shopify, many others).  The event name
and id come from JSON fields named in the options, so a new vendor needs YAML only.

Those fields become CloudEvents attributes, which consumers in any language compare as text,
so a single value is written as the JSON spells it (``true``, ``1e2``), never as Python would
(``True``, ``100.0``); an object or an array is no attribute: refused as the event name, left
out as the id or subject.
"""

from __future__ import annotations

import json
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
from webhookbus.signing import Encoding, decode_digest, require_match


class HmacOptions(VerifierOptions):
    header: str = Field("x-signature", description="Header carrying the signature.")
    encoding: Encoding = Field("hex", description="How the digest is written: hex or base64.")
    prefix: str = Field("", description="Text before the digest, such as 'sha256='.")
    event_field: str | None = Field(None, description="Dotted JSON field holding the event name.")
    default_event: str = Field("received", description="Event name when event_field is unset or absent.")
    id_field: str | None = Field(None, description="Dotted JSON field holding the provider's event id.")
    subject_field: str | None = Field(None, description="Dotted JSON field holding the user id.")


class HmacVerifier:
    Options = HmacOptions

    def __init__(self, options: HmacOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the hmac verifier needs at least one secret")
        self.options = options
        self.secrets = secrets
        self.header = options.header.lower()

    def verify(self, request: InboundRequest) -> Accepted:
        signature = request.headers.get(self.header)
        if signature is None:
            raise VerificationFailed(f"missing {self.options.header} header")
        if not signature.startswith(self.options.prefix):
            raise VerificationFailed(f"{self.options.header} does not start with {self.options.prefix!r}")
        candidates = decode_digest(signature[len(self.options.prefix):], [self.options.encoding])
        require_match(self.secrets, request.body, candidates)
        try:
            data, data_json = parse_json(request.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: "[[[[..."
            raise MalformedPayload("body is not valid JSON") from None
        spelled = _Spelling(request.body)
        name = spelled.text(data, self.options.event_field)
        if name is None and isinstance(dotted_get(data, self.options.event_field), (dict, list)):
            raise MalformedPayload(f"{self.options.event_field} holds an object or an array, not an event name")
        return Accepted(
            ProviderEvent(
                name=name or self.options.default_event,
                data=data,
                id=spelled.text(data, self.options.id_field),  # None: the body's SHA-256
                subject=spelled.text(data, self.options.subject_field),
                data_json=data_json,
            )
        )


class _Number(str):
    """A JSON number as the body spells it."""


class _Spelling:
    """A field's single value as the JSON spells it; the body is parsed a second time, keeping
    numbers as text (1e2 stays "1e2", -0 stays "-0"), only when a field holds a number."""

    def __init__(self, body: bytes) -> None:
        self.body, self.parsed = body, None

    def text(self, data: Any, field: str | None) -> str | None:
        value = dotted_get(data, field)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            if self.parsed is None:  # bytes: json.loads reads the BOM and encodings parse_json did
                self.parsed = json.loads(self.body, parse_float=_Number, parse_int=_Number)
            return str(dotted_get(self.parsed, field))
        return value if isinstance(value, str) and value else None  # null, "", objects, arrays: no value
