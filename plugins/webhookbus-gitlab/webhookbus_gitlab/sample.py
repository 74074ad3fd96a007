"""Sample GitLab deliveries for ``webhookbus sign`` and the tests, written from GitLab's webhook
docs (the token is sent as is in ``X-Gitlab-Token``; ``X-Gitlab-Event-UUID`` names the delivery)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from webhookbus.testing.samples import SignedRequest


def sign(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """A ``push`` event (or ``data``) carrying ``secret`` as the webhook's token."""
    event = data if data is not None else {
        "object_kind": "push", "event_name": "push", "ref": "refs/heads/main", "user_id": 4,
        "user_name": "John Smith", "project_id": 15, "total_commits_count": 1,
    }
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret.decode(),
               "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    return SignedRequest("POST", path, headers, json.dumps(event).encode())
