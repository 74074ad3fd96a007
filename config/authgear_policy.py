"""An Authgear blocking-hook policy answered from Kafka: deny sign-ups from one test domain.

The route in config/providers/authgear.yaml (``reply:``) holds each ``user.pre_create`` until
this answers on the reply topic (or its 2 s fallback applies).  Run it next to the listener:

    python -m webhookbus.reply config/authgear_policy.py:decide --topic identity.authgear.users

``decide`` gets the event as a ``webhookbus.events.CloudEvent`` (``data`` is Authgear's body) and
returns the answer Authgear gets: an allow, a deny with a title and a reason, or an allow with
``mutations.user`` (user.* events).  ``None`` leaves the route's fallback to answer.
"""

from __future__ import annotations

from typing import Any

BLOCKED_DOMAIN = "blocked.test"


def decide(event: Any) -> dict[str, Any] | None:
    if event.type != "authgear.user.pre_create":
        return None  # other blocking events keep the route's fallback
    user = event.data.get("payload", {}).get("user", {})
    email = str((user.get("standard_attributes") or {}).get("email", ""))
    if email.lower().endswith("@" + BLOCKED_DOMAIN):
        return {"is_allowed": False, "title": "Sign-up closed",
                "reason": f"Addresses at {BLOCKED_DOMAIN} cannot sign up."}
    return {"is_allowed": True}
