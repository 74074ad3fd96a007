"""Shared helpers for provider verifier tests: build the request a listener would hand over.

Use the ``make_request`` fixture (it returns :func:`build_request`), so no test module has to
import this conftest by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import pytest

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
