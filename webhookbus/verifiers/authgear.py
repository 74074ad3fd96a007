"""``authgear``: Authgear's blocking and non-blocking event webhooks.

``x-authgear-body-signature`` is the lowercase hex HMAC-SHA256 of the raw body.  The body
is ``{id, seq, type, payload, context}``.  Non-blocking events only need a 2xx.  Blocking
events (``user.pre_create``, ``oidc.jwt.pre_create``...) make Authgear wait for a JSON
decision; webhookbus is a pipe, not a policy engine, so it answers with a decision fixed in
the configuration, sent only once the event is safely on Kafka.  Authgear checks an answer
against the schema of the event it answers (no extra keys), and an answer it rejects fails
the user's sign-up or sign-in, so the decisions are checked per event at config time:
``mutations.user`` only for ``user.*`` events, ``mutations.jwt`` only for ``oidc.*`` events,
``constraints`` only for ``authentication.*`` events, and the default answer (sent to every
blocking event without its own entry) only what every blocking event accepts.

``context.timestamp`` is signed with the body: once the signature verified, a body stamped
more than ``tolerance_seconds`` away from now is refused (401), so a captured event cannot be
replayed after the deduplication window.  Authgear never retries, so a delivery is never
legitimately old.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

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
from webhookbus.signing import check_timestamp, decode_digest, require_match

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

    # keys Authgear defines for other events than those this model answers: key -> who takes it
    elsewhere: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _not_for_this_event(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, owner in cls.elsewhere.items():
                if key in data and key not in cls.model_fields:
                    raise ValueError(f"{key} is only for {owner}; Authgear rejects it here")
        return data


class UserMutations(_Strict):
    standard_attributes: dict[str, Any] | None = None
    custom_attributes: dict[str, Any] | None = None
    roles: list[str] | None = None
    groups: list[str] | None = None


class JwtMutations(_Strict):
    payload: dict[str, Any]


class UserEventMutations(_Strict):
    elsewhere = {"jwt": "oidc.* events (oidc.jwt.pre_create, oidc.id_token.pre_create)"}
    user: UserMutations | None = None


class OidcEventMutations(_Strict):
    elsewhere = {"user": "user.* events (user.pre_create, user.profile.pre_update, ...)"}
    jwt: JwtMutations | None = None


class Constraints(_Strict):
    amr: list[AMR]


_MUTATIONS_OWNER = "user.* and oidc.* events, in their own blocking_responses entry"
_CONSTRAINTS_OWNER = "authentication.* events, in their own blocking_responses entry"


class BlockingResponse(_Strict):
    """What every blocking event accepts: allow, or deny with a message.  The default answer.

    Authgear's schemas take ``title`` and ``reason`` only with ``is_allowed: false``, and extra keys
    only on an allow and only from the event's own family (the subclasses below).
    """

    elsewhere = {"mutations": _MUTATIONS_OWNER, "constraints": _CONSTRAINTS_OWNER}

    is_allowed: bool = True
    title: str | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _matches_authgear_schema(self) -> BlockingResponse:
        if self.is_allowed and (self.title is not None or self.reason is not None):
            raise ValueError("title and reason are only for is_allowed: false")
        if not self.is_allowed and (self.title is None or self.reason is None):
            raise ValueError("is_allowed: false needs a title and a reason shown to the user")
        extras = [name for name in ("mutations", "constraints") if getattr(self, name, None) is not None]
        if not self.is_allowed and extras:
            raise ValueError(f"{' and '.join(extras)} only go with is_allowed: true")
        return self

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class UserEventResponse(BlockingResponse):
    """``user.*`` events: may mutate the user."""

    elsewhere = {"constraints": "authentication.* events"}
    mutations: UserEventMutations | None = None


class OidcEventResponse(BlockingResponse):
    """``oidc.*`` events (the access token and ID token): may add JWT claims."""

    elsewhere = {"constraints": "authentication.* events"}
    mutations: OidcEventMutations | None = None


class AuthenticationEventResponse(BlockingResponse):
    """``authentication.*`` events: may constrain the authentication methods."""

    elsewhere = {"mutations": "user.* and oidc.* events"}
    constraints: Constraints | None = None


def response_model(event_type: str) -> type[BlockingResponse]:
    """The answer schema for a blocking event, by its family (the part before the first dot)."""
    family = event_type.split(".", 1)[0]
    return {"user": UserEventResponse, "oidc": OidcEventResponse,
            "authentication": AuthenticationEventResponse}.get(family, BlockingResponse)


def checked_answer(event_type: str | None, answer: Any) -> BlockingResponse:
    """``answer`` checked against what Authgear accepts for ``event_type``'s family, or for any
    blocking event when ``None`` (what a default answer or a fallback may be).

    The one check for every source of an answer: ``blocking_responses`` and a reply route's
    fallback when the config loads, a Kafka consumer's reply when it arrives.  Raises pydantic's
    ``ValidationError`` (a ``ValueError``), whose locations start with the event type.
    """
    if event_type is None:
        return BlockingResponse.model_validate(answer)
    return _KEYED[response_model(event_type)].validate_python({event_type: answer})[event_type]


# Keyed by the event type, so an error names it; built once (a TypeAdapter is costly to build).
_KEYED: dict[type[BlockingResponse], TypeAdapter[dict[str, Any]]] = {
    model: TypeAdapter(dict[str, model])  # type: ignore[valid-type]
    for model in (BlockingResponse, UserEventResponse, OidcEventResponse, AuthenticationEventResponse)
}


class AuthgearOptions(VerifierOptions):
    blocking_response: BlockingResponse = Field(
        default_factory=BlockingResponse,
        description="Answer to every blocking event without its own entry: is_allowed (title and reason on a deny).",
    )
    blocking_responses: dict[str, BlockingResponse] = Field(
        default_factory=dict, description="Answer per blocking event type, e.g. user.pre_create."
    )
    tolerance_seconds: float = Field(
        300, ge=0, description="How far the signed context.timestamp may be from now; 0 turns the check off."
    )

    @field_validator("blocking_responses", mode="before")
    @classmethod
    def _per_event_schema(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the dict type reports it
        unknown = sorted(str(name) for name in value if not (isinstance(name, str) and is_blocking(name)))
        if unknown:  # a typo would silently never apply
            raise ValueError(f"not blocking event types: {', '.join(unknown)}")
        checked: dict[str, BlockingResponse] = {}
        for name, answer in value.items():  # one at a time, so an error names the event's key
            checked[name] = checked_answer(name, answer)
        return checked


class AuthgearVerifier:
    Options = AuthgearOptions
    decision_deadline: ClassVar[float] = 5.0  # Authgear's wait for a blocking hook
    # What the README's PII paragraph lists: `webhookbus check` warns of a route sending them unruled.
    pii_fields: ClassVar[tuple[str, ...]] = (
        "subject", "data.payload.user", "data.context.ip_address", "data.context.user_agent",
        "data.context.user_id",
    )

    def __init__(self, options: AuthgearOptions, secrets: Secrets, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock`` exists for tests; the listener never passes it."""
        if not secrets:
            raise ValueError("the authgear verifier needs at least one secret")
        self.options = options
        self.secrets = secrets
        self.clock = clock

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
        timestamp = dotted_get(body, "context.timestamp")
        # Only now: the timestamp is trusted once the signature is.  Authgear stamps every event, so
        # every body it signed (every one that could be captured and replayed) is checked; one
        # without a context.timestamp was never stamped and keeps receipt time as its time.
        if self.options.tolerance_seconds and timestamp is not None:
            if not isinstance(timestamp, int) or isinstance(timestamp, bool):
                raise VerificationFailed("context.timestamp is not an integer number of seconds")
            check_timestamp(str(timestamp), self.options.tolerance_seconds, now=self.clock())
        event = ProviderEvent(
            name=event_type,
            data=body,
            id=_text(body.get("id")),
            subject=_text(dotted_get(body, "context.user_id")) or _text(dotted_get(body, "payload.user.id")),
            time=_unix_time(timestamp),
            data_json=body_json,
        )
        if not is_blocking(event_type):
            return Accepted(event)
        decision = self.options.blocking_responses.get(event_type, self.options.blocking_response)
        return Accepted(event, response=Response.json(decision.body()))


    def decide(self, event: str | None, answer: Any) -> Response:
        """A Kafka consumer's decision (a route's ``reply``) as the answer Authgear gets."""
        return Response.json(checked_answer(event, answer).body())


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
