"""Correctly signed sample requests for configured providers (``make run``'s curl lines, ``sign``).

Each signer is written from the provider's documented algorithm, independently of the
verifier that checks it, and takes ``(options, secret, path, data)``; ``data=None`` asks for
the signer's own realistic sample payload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from webhookbus.config import Provider, resolve_secret

Signed = tuple[str, str, dict[str, str], bytes]
"""method, path (with query), headers, body"""

DEV_SECRETS = {
    "DEMO_WEBHOOK_SECRET": "dev-demo-secret-change-me",
}


def sign_hmac(options: Any, secret: bytes, path: str, data: Any) -> Signed:
    body = json.dumps(data if data is not None else {"type": "user.created", "id": "evt_1", "user": {"id": "u_42"}},
                      separators=(",", ":")).encode()
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    text = digest.hex() if options.encoding == "hex" else base64.b64encode(digest).decode()
    return "POST", path, {"content-type": "application/json", options.header: options.prefix + text}, body


SIGNERS: dict[str, Callable[[Any, bytes, str, Any], Signed]] = {"hmac": sign_hmac}


def sample_request(provider: Provider, data: Any = None) -> Signed | None:
    """A signed request for ``provider`` with its first secret, or None if no signer is known."""
    signer = SIGNERS.get(provider.settings.verifier)
    if signer is None or not provider.settings.secrets:
        return None
    secret = resolve_secret(provider.settings.secrets[0])
    return signer(provider.options, bytes(secret), provider.path, data)
