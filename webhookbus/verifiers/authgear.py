"""``authgear``: Authgear's blocking and non-blocking event webhooks.

``x-authgear-body-signature`` is the lowercase hex HMAC-SHA256 of the raw body.  The body
is ``{id, seq, type, payload, context}``.  Non-blocking events only need a 2xx.  Blocking
events (``user.pre_create``, ``oidc.jwt.pre_create``...) make Authgear wait for a JSON
decision; webhookbus is a pipe, not a policy engine, so it answers with a decision fixed in
the configuration, sent only once the event is safely on Kafka.  The decision is checked
against Authgear's response schema at config time, because an answer Authgear rejects
fails the user's sign-up or sign-in.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from webhookbus.events import dotted_get
from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Response,
    Secrets,
    VerificationFailed,
    VerifierOptions,
    parse_json,
)
from webhookbus.signing import decode_digest, require_match

log = logging.getLogger("webhookbus.verifiers.authgear")

BLOCKING_EVENTS = frozenset({
    "user.pre_create", "user.profile.pre_update", "user.pre_schedule_deletion",
    "user.pre_schedule_anonymization", "oidc.jwt.pre_create", "oidc.id_token.pre_create",
    "authentication.pre_initialize", "authentication.post_identified", "authentication.pre_authenticated",
})
AMR = Literal[
    "mfa", "otp", "pwd", "sms", "x_primary_oob_otp_email", "x_primary_oob_otp_sms", "x_primary_password",
    "x_recovery_code", "x_secondary_oob_otp_email", "x_secondary_oob_otp_sms", "x_secondary_password",
    "x_secondary_totp",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserMutations(_Strict):
    standard_attributes: dict[str, Any] | None = None
    custom_attributes: dict[str, Any] | None = None
    roles: list[str] | None = None
    groups: list[str] | None = None


class JwtMutations(_Strict):
    payload: dict[str, Any]


class Mutations(_Strict):
    user: UserMutations | None = None
    jwt: JwtMutations | None = None


class Constraints(_Strict):
    amr: list[AMR]


class BlockingResponse(_Strict):
    """Authgear's hook response: allow (optionally mutating or constraining) or deny with a message.

    Which keys an allow may carry depends on the event (``mutations`` for ``user.*`` and
    ``oidc.*``, ``constraints`` for ``authentication.*``): give such answers per event in
    ``blocking_responses`` rather than in the default.
    """

    is_allowed: bool = True
    title: str | None = None
    reason: str | None = None
    mutations: Mutations | None = None
    constraints: Constraints | None = None

    @model_validator(mode="after")
    def _matches_authgear_schema(self) -> BlockingResponse:
        if self.is_allowed and (self.title is not None or self.reason is not None):
            raise ValueError("title and reason are only for is_allowed: false")
        if not self.is_allowed and (self.title is None or self.reason is None):
            raise ValueError("is_allowed: false needs a title and a reason shown to the user")
        if not self.is_allowed and (self.mutations is not None or self.constraints is not None):
            raise ValueError("mutations and constraints are only for is_allowed: true")
        return self

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class AuthgearOptions(VerifierOptions):
    blocking_response: BlockingResponse = Field(
        default_factory=BlockingResponse, description="Answer to every blocking event without its own entry."
    )
    blocking_responses: dict[str, BlockingResponse] = Field(
        default_factory=dict, description="Answer per blocking event type, e.g. user.pre_create."
    )

    @field_validator("blocking_responses")
    @classmethod
    def _blocking_types_only(cls, value: dict[str, BlockingResponse]) -> dict[str, BlockingResponse]:
        unknown = sorted(name for name in value if not is_blocking(name))
        if unknown:  # a typo would silently never apply
            raise ValueError(f"not blocking event types: {', '.join(unknown)}")
        return value


class AuthgearVerifier:
    Options = AuthgearOptions

    def __init__(self, options: AuthgearOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the authgear verifier needs at least one secret")
        self.options = options
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        signature = request.headers.get("x-authgear-body-signature")
        if signature is None:
            raise VerificationFailed("missing x-authgear-body-signature header")
        index = require_match(self.secrets, request.body, decode_digest(signature, ["hex"]))
        log.debug("authgear signature verified", extra={"secret_index": index})
        try:
            body, body_json = parse_json(request.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise MalformedPayload("body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not body["type"]:
            raise MalformedPayload("body is not an Authgear event (no type)")
        event_type: str = body["type"]
        event = ProviderEvent(
            name=event_type,
            data=body,
            id=_text(body.get("id")),
            subject=_text(dotted_get(body, "context.user_id")) or _text(dotted_get(body, "payload.user.id")),
            time=_unix_time(dotted_get(body, "context.timestamp")),
            data_json=body_json,
        )
        if not is_blocking(event_type):
            return Accepted(event)
        decision = self.options.blocking_responses.get(event_type, self.options.blocking_response)
        return Accepted(event, response=Response.json(decision.body()))


def is_blocking(event_type: str) -> bool:
    """Known blocking events, and any future ``*.pre_*`` one (Authgear's naming for them)."""
    return event_type in BLOCKING_EVENTS or event_type.rsplit(".", 1)[-1].startswith("pre_")


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def _unix_time(value: Any) -> datetime | None:
    """``context.timestamp`` as a time; ``None`` (receipt time) when absent or absurd."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
