"""GitLab webhooks for webhookbus: a shared token in ``X-Gitlab-Token``, no body signature.

A deliberately small third-party plugin: it lives in its own distribution, is found only
through the ``webhookbus.verifiers`` entry point, and uses nothing but the public contract
in :mod:`webhookbus.plugin`.
"""

from __future__ import annotations

from pydantic import Field

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
from webhookbus.signing import require_token


class GitLabOptions(VerifierOptions):
    allowed_events: list[str] = Field(default_factory=list, description="object_kind values to accept; empty = all.")


class GitLabVerifier:
    Options = GitLabOptions

    def __init__(self, options: GitLabOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the gitlab verifier needs the webhook's secret token")
        self.options = options
        self.tokens = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        # Constant time, any token of a rotation; the listener logs which one matched (secret_index).
        require_token(self.tokens, request.headers.get("x-gitlab-token"), "X-Gitlab-Token")
        try:
            payload, payload_json = parse_json(request.body)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is not JSON") from None
        kind = payload.get("object_kind") if isinstance(payload, dict) else None
        if not isinstance(kind, str) or not kind:
            raise MalformedPayload("body is not a GitLab event (no object_kind)")
        if self.options.allowed_events and kind not in self.options.allowed_events:
            raise MalformedPayload(f"event {kind!r} is not accepted here")
        user = payload.get("user_id")
        if user is None and isinstance(payload.get("user"), dict):
            user = payload["user"].get("id")
        return Accepted(
            ProviderEvent(
                name=kind,
                data=payload,
                data_json=payload_json,
                id=request.headers.get("x-gitlab-event-uuid") or None,
                # Numbers as JSON writes them; anything else (true, an object) is no user id.
                subject=str(user) if isinstance(user, (int, str)) and not isinstance(user, bool) and user != "" else None,
            )
        )
