"""The public URL a provider called, for schemes that sign it (Square signs ``notification_url + body``).

A listener seldom sees the URL the provider used: a proxy or load balancer in front ends TLS
and may rewrite the host and the path.  So, in order:

1. the provider's ``public_url`` (the public address of its ``path``; a sub-path is appended),
   else ``server.public_url`` (the public base of the listener; the request's path is appended);
2. a peer listed in ``server.trusted_proxies``: its ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
   (``Host`` when it sends none), the last value of each, which is the one that proxy wrote;
3. the listener itself: ``https`` when it serves TLS, and the ``Host`` the client asked for.

Anyone else's ``X-Forwarded-*`` headers are ignored: a client could otherwise make a request
signed for one URL verify as sent to another.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhookbus.config import Provider, ServerSettings

_HOST = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class BadForwardedHeader(ValueError):
    """A trusted proxy sent an X-Forwarded-Proto or X-Forwarded-Host no URL can be built from."""


def trusted(server: ServerSettings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``server.trusted_proxies`` parsed once, for :func:`request_url`."""
    return [ipaddress.ip_network(entry, strict=False) for entry in server.trusted_proxies]


def configured_base(server: ServerSettings, provider: Provider) -> tuple[str, str] | None:
    """``(public URL, the path prefix it stands for)`` when the config says where the provider is."""
    if provider.settings.public_url:
        return provider.settings.public_url, "" if provider.path == "/" else provider.path
    if server.public_url:
        return server.public_url, ""
    return None


def request_url(scope: Mapping[str, Any], headers: Mapping[str, str], server: ServerSettings, provider: Provider,
                proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The URL as the provider used it: ``scheme://host/raw path?query`` (see the module docstring)."""
    raw_path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    target = f"{raw_path}?{query}" if query else raw_path
    base = configured_base(server, provider)
    if base is not None:
        url, prefix = base
        return url + (target[len(prefix):] if target.startswith(prefix) else target)
    client = scope.get("client")
    scheme, host = scope.get("scheme", "http"), headers.get("host", "")
    if proxies and client and _is_trusted(client[0], proxies):  # parsing the address costs 1.5 us: only if needed
        forwarded_scheme = _last(scope["headers"], b"x-forwarded-proto")
        forwarded_host = _last(scope["headers"], b"x-forwarded-host")
        if forwarded_scheme is not None:
            if forwarded_scheme.lower() not in ("http", "https"):
                raise BadForwardedHeader("X-Forwarded-Proto is neither http nor https")
            scheme = forwarded_scheme.lower()
        if forwarded_host is not None:
            if not _HOST.fullmatch(forwarded_host):
                raise BadForwardedHeader("X-Forwarded-Host is not a host[:port]")
            host = forwarded_host
    if not _HOST.fullmatch(host):  # no Host (HTTP/1.0), or one no URL can hold: the listener's address
        address, port = scope.get("server") or (server.host, server.port)
        host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return f"{scheme}://{host}{target}"


def _last(raw_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The last value of a header over its lines and comma-separated entries: the nearest proxy's."""
    found = None
    for key, value in raw_headers:
        if key.lower() == name:
            found = value.decode("latin-1").rsplit(",", 1)[-1].strip()
    return found


def _is_trusted(address: str, proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:  # a unix socket's path
        return False
    return any(peer in network for network in proxies)
