"""Shared helpers for provider verifier tests: build the request a listener would hand over.

Use the ``make_request`` fixture (it returns :func:`build_request`) and ``shipped_config``, so no
test module has to import this conftest by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhookbus.plugin import InboundRequest


def build_request(
    provider: str,
    method: str,
    path: str,
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    query: str = "",
    *,
    raw_path: str = "",
    received_at: datetime | None = None,
) -> InboundRequest:
    """An :class:`InboundRequest` as the listener builds it: lower-case header names, bytes body."""
    return InboundRequest(
        provider=provider,
        method=method,
        path=path,
        query=query,
        headers={name.lower(): value for name, value in (headers or {}).items()},
        body=body.encode() if isinstance(body, str) else body,
        received_at=received_at or datetime.now(timezone.utc),
        raw_path=raw_path,
    )


@pytest.fixture
def make_request() -> Callable[..., InboundRequest]:
    """``make_request(provider, method, path, body, headers, query="")``: see :func:`build_request`."""
    return build_request


PROVIDER_CONFIGS = Path(__file__).resolve().parents[2] / "config" / "providers"


@pytest.fixture
def shipped_config(topic_name: Callable[[str], str]) -> Callable[..., tuple[dict[str, Any], dict[str, str]]]:
    """``shipped_config(name, secrets)``: ``config/providers/<name>.yaml`` made runnable in a test.

    Secrets become ``literal:`` values, every route (and a ``topic`` unrouted policy) gets a
    fresh topic, and the file's bootstrap servers are dropped for the test broker's.  Returns
    ``(settings, topics)`` where ``topics`` maps route names (and ``"unrouted"``) to topics.
    """

    def load(name: str, secrets: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        settings = yaml.safe_load((PROVIDER_CONFIGS / f"{name}.yaml").read_text(encoding="utf-8"))
        settings.get("kafka", {}).pop("bootstrap_servers", None)
        settings["providers"][name]["secrets"] = [f"literal:{secret}" for secret in secrets]
        topics = {}
        for index, route in enumerate(settings.get("routes", [])):
            route["topic"] = topics[route.get("name") or str(index)] = topic_name(route.get("name") or "route")
        if settings.get("unrouted", {}).get("action") == "topic":
            settings["unrouted"]["topic"] = topics["unrouted"] = topic_name("unrouted")
        return settings, topics

    return load
