"""``standardwebhooks``: the Standard Webhooks spec (Svix and the many vendors that send through it).

Three headers: ``webhook-id`` (the message id, repeated on every retry), ``webhook-timestamp``
(unix seconds of this attempt) and ``webhook-signature``, a space-separated list of
``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{raw body}"``.  The list holds several
signatures while the sender rotates its secret; other versions (``v1a`` is Ed25519) are
skipped.  Secrets are written ``whsec_<base64>``: the HMAC key is the decoded bytes, not the
text.  The timestamp is signed, so the tolerance window is what stops a replay; the id is
signed too, so it is safe to deduplicate on.
"""

from __future__ import annotations

import base64
import binascii
import re
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

SECRET_PREFIX = b"whsec_"
_MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,256}")


class StandardWebhooksOptions(VerifierOptions):
    tolerance_seconds: float = Field(300, gt=0, description="How far webhook-timestamp may be from receipt time.")
    header_prefix: str = Field(
        "webhook-", pattern=r"^[a-z0-9-]*$", description="'webhook-' per the spec; 'svix-' for Svix's own headers."
    )
    event_field: str = Field("type", description="Dotted JSON field holding the event name.")
    default_event: str = Field("received", description="Event name when event_field is absent.")
    subject_field: str | None = Field(None, description="Dotted JSON field holding the user id.")


def decode_secret(secret: bytes) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, as in the reference libraries)."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if not key:
        raise ValueError("is not 'whsec_' followed by base64")
    return key


class StandardWebhooksVerifier:
    Options = StandardWebhooksOptions

    def __init__(self, options: StandardWebhooksOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the standardwebhooks verifier needs at least one secret")
        keys = []
        for index, secret in enumerate(secrets):
            try:
                keys.append(decode_secret(secret))
            except ValueError as exc:
                raise ValueError(f"standardwebhooks secret #{index + 1} {exc}") from None
        self.options = options
        self.keys = tuple(keys)
        self.id_header, self.timestamp_header, self.signature_header = (
            f"{options.header_prefix}{name}" for name in ("id", "timestamp", "signature")
        )

    def verify(self, request: InboundRequest) -> Accepted:
        values = []
        for header in (self.id_header, self.timestamp_header, self.signature_header):
            value = request.headers.get(header)
            if not value:
                raise VerificationFailed(f"missing {header} header")
            values.append(value)
        message_id, timestamp, signatures = values
        check_timestamp(timestamp, self.options.tolerance_seconds, now=request.received_at.timestamp())
        candidates = [
            digest
            for entry in signatures.split()
            if entry.startswith("v1,")
            for digest in decode_digest(entry[3:], ["base64"])
        ]
        signed = f"{message_id}.{timestamp}.".encode("latin-1") + request.body
        require_match(self.keys, signed, candidates)  # the listener logs which key matched (its index)
        if not _MESSAGE_ID.fullmatch(message_id):
            raise MalformedPayload(f"{self.id_header} must be 1-256 printable ASCII characters")
        try:
            data, data_json = parse_json(request.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise MalformedPayload("body is not valid JSON") from None
        name = dotted_get(data, self.options.event_field)
        subject = dotted_get(data, self.options.subject_field)
        return Accepted(
            ProviderEvent(
                name=name if isinstance(name, str) and name else self.options.default_event,
                data=data,
                id=message_id,
                subject=str(subject) if isinstance(subject, (str, int)) and not isinstance(subject, bool) else None,
                time=_event_time(dotted_get(data, "timestamp")),
                data_json=data_json,
            )
        )


def _event_time(value: Any) -> datetime | None:
    """The payload's own ``timestamp`` (when the event happened, the same on every retry)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
