"""GitLab webhooks for webhookbus: a shared token in ``X-Gitlab-Token``, no body signature.

A deliberately small third-party plugin: it lives in its own distribution, is found only
through the ``webhookbus.verifiers`` entry point, and uses nothing but the public contract
in :mod:`webhookbus.plugin`.
"""

from __future__ import annotations

import hmac

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


class GitLabOptions(VerifierOptions):
    allowed_events: list[str] = Field(default_factory=list, description="object_kind values to accept; empty = all.")


class GitLabVerifier:
    Options = GitLabOptions

    def __init__(self, options: GitLabOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the gitlab verifier needs the webhook's secret token")
        self.options = options
        self.tokens = [bytes(secret) for secret in secrets]

    def verify(self, request: InboundRequest) -> Accepted:
        token = request.headers.get("x-gitlab-token", "").encode("latin-1")
        # Compare against every token (rotation) without stopping early on a match.
        matches = [hmac.compare_digest(token, expected) for expected in self.tokens]
        if not any(matches):
            raise VerificationFailed("X-Gitlab-Token is missing or wrong")
        try:
            payload, payload_json = parse_json(request.body)
            kind = payload["object_kind"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise MalformedPayload("body is not a GitLab event (JSON with object_kind)") from None
        if self.options.allowed_events and kind not in self.options.allowed_events:
            raise MalformedPayload(f"event {kind!r} is not accepted here")
        user = payload.get("user_id") or (payload.get("user") or {}).get("id")
        return Accepted(
            ProviderEvent(
                name=str(kind),
                data=payload,
                data_json=payload_json,
                id=request.headers.get("x-gitlab-event-uuid"),
                subject=None if user is None else str(user),
            )
        )
