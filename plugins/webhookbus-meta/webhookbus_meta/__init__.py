"""Meta's webhooks (Facebook Pages, Instagram, WhatsApp Business, Messenger) for webhookbus.

Before it sends events Meta checks the endpoint with a ``GET`` carrying ``hub.mode=subscribe``,
``hub.challenge`` and ``hub.verify_token`` (the string typed into the App Dashboard): when the
token matches, the challenge goes back as is (a :class:`Reply`: nothing is published).  Events
are ``POST``s signed with the app secret: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
body>`` (``X-Hub-Signature: sha1=...`` with ``signature: sha1``, the older header).

The verify token is not the app secret and has no place in the provider's ``secrets`` (those
sign the POSTs); it is read from the environment variable ``verify_token_env`` names, so it is
never written in the config either.
"""

from __future__ import annotations

import os
from typing import Any, Literal

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
from webhookbus.signing import decode_digest, require_match, require_token


class MetaOptions(VerifierOptions):
    verify_token_env: str = Field(
        "META_VERIFY_TOKEN", description="Environment variable holding the Verify Token set in the App Dashboard."
    )
    signature: Literal["sha256", "sha1"] = Field(
        "sha256", description="sha256: X-Hub-Signature-256 (Meta's current); sha1: the legacy X-Hub-Signature."
    )


class MetaVerifier:
    Options = MetaOptions
    methods = {"GET", "POST"}  # GET: Meta's subscription check; POST: the events

    def __init__(self, options: MetaOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the meta verifier needs the app secret")
        token = os.environ.get(options.verify_token_env, "")
        if not token.strip():
            raise ValueError(f"the meta verifier needs the verify token in ${options.verify_token_env}")
        self.options, self.secrets, self.verify_tokens = options, secrets, [token.encode()]
        self.header = "x-hub-signature-256" if options.signature == "sha256" else "x-hub-signature"

    def verify(self, request: InboundRequest) -> Accepted | Reply:
        if request.method == "GET":
            return self._subscribe(request)
        signature = request.headers.get(self.header)
        prefix = f"{self.options.signature}="
        if signature is None or not signature.startswith(prefix):
            raise VerificationFailed(f"missing {self.header} header with a {prefix} signature")
        require_match(self.secrets, request.body, decode_digest(signature[len(prefix):], ["hex"]), self.options.signature)
        try:
            body, body_json = parse_json(request.body)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("object"), str) or not body["object"]:
            raise MalformedPayload("body is not a Meta notification (no object)")
        listed = body.get("entry")
        entries = [entry for entry in listed if isinstance(entry, dict)] if isinstance(listed, list) else []
        return Accepted(ProviderEvent(
            name=_name(body["object"], entries),
            data=body,
            data_json=body_json,
            # Meta gives no event id: a retry repeats the body, whose SHA-256 is then the id.
            subject=next((entry["id"] for entry in entries if isinstance(entry.get("id"), str) and entry["id"]), None),
        ))

    def _subscribe(self, request: InboundRequest) -> Reply:
        try:
            query = parse_form(request.query.encode("latin-1"))
        except ValueError:
            raise MalformedPayload("the query is not name=value pairs, each given once") from None
        if query.get("hub.mode") != "subscribe" or not query.get("hub.challenge"):
            raise MalformedPayload("a GET must be a subscription check (hub.mode=subscribe, hub.challenge)")
        require_token(self.verify_tokens, query.get("hub.verify_token"), "hub.verify_token")
        return Reply(Response.text(query["hub.challenge"]), what="subscribe")


def _name(kind: str, entries: list[dict[str, Any]]) -> str:
    """``<object>.<field>`` when every change is of one field (``whatsapp_business_account.messages``),
    ``<object>.messaging`` for Messenger's entries, else the object alone."""
    fields: set[Any] = set()
    for entry in entries:
        changes = entry.get("changes")
        if isinstance(changes, list):
            fields.update(change.get("field") for change in changes if isinstance(change, dict))
        if "messaging" in entry:
            fields.add("messaging")
    field = fields.pop() if len(fields) == 1 else None
    return f"{kind}.{field}" if isinstance(field, str) and field.isidentifier() else kind
