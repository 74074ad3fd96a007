"""``hmac``: the generic verifier for any vendor that signs the raw body with HMAC-SHA256.

Covers the common shape "header = [prefix] + hex-or-base64(HMAC-SHA256(secret, body))"
(GitHub's ``X-Hub-Signature-256: sha256=...``, Shopify, many others).  The event name
and id come from JSON fields named in the options, so a new vendor needs YAML only.
"""

from __future__ import annotations

import hashlib
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
        name = dotted_get(data, self.options.event_field)
        event_id = dotted_get(data, self.options.id_field)
        subject = dotted_get(data, self.options.subject_field)
        return Accepted(
            ProviderEvent(
                name=str(name) if name is not None else self.options.default_event,
                data=data,
                id=str(event_id) if event_id is not None else hashlib.sha256(request.body).hexdigest(),
                subject=str(subject) if subject is not None else None,
                data_json=data_json,
            )
        )
