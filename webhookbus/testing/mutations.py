"""What the contract suite (:mod:`webhookbus.testing.contract`) does to a signed request or payload:
well-formed tampering, garbage a fuzzer or a broken proxy sends, and JSON values put in a field."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from webhookbus.testing.samples import SignedRequest


def with_headers(signed: SignedRequest, **changes: str | None) -> SignedRequest:
    """``signed`` with headers replaced (a value) or removed (``None``), names matched case-insensitively."""
    lowered = {name.lower().replace("_", "-"): value for name, value in changes.items()}
    headers = {name: value for name, value in signed.headers.items() if name.lower() not in lowered}
    headers.update((name, value) for name, value in lowered.items() if value is not None)
    return signed._replace(headers=headers)


def tampered(data: bytes) -> bytes:
    """``data`` with its middle letter or digit changed, so it stays well-formed (JSON, form, JWE...).

    The middle, not the end: the last character of base64 may carry only padding bits, and
    changing it would not change the decoded bytes.
    """
    positions = [i for i, byte in enumerate(data) if chr(byte).isascii() and chr(byte).isalnum()]
    if not positions:
        return data + b"x"
    index = positions[len(positions) // 2]
    char = chr(data[index])
    alphabet = "0123456789" if char.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    replacement = alphabet[(alphabet.index(char.lower()) + 1) % len(alphabet)]
    replacement = replacement.upper() if char.isupper() else replacement
    return data[:index] + replacement.encode() + data[index + 1:]


def garbage_values(original: str) -> Iterator[str]:
    """Header values a fuzzer, a broken proxy or an attacker sends (latin-1, as headers arrive).

    None of them is a valid variant of ``original``: a repeated or re-listed signature can be
    legitimately accepted by a scheme that allows a list, so those are not here."""
    yield from ("", " ", "\t", "null", "0", "-1", "=", ",", ";", "v1=", "t=,v1=", "t=1,v1=zz,v1=", "Bearer x",
                "a.b.c", "a.b.c.d.e", "\x00\x01\x7f", "\xe9\xff\xfe", "%00", "9" * 40, "1e400", "NaN")
    yield "x" * 16384
    yield original + "x" * 16384
    yield original[: len(original) // 2]
    yield original[::-1]
    yield tampered(original.encode("latin-1")).decode("latin-1")


def garbage_bodies() -> Iterator[bytes]:
    rng = random.Random(5)
    yield from (b"", b"{}", b"[]", b"null", b"\x00", b"\xff\xfe\xfd", b"[" * 100_000, b'{"a":' * 50_000)
    yield from (rng.randbytes(size) for size in (1, 64, 4096, 1 << 20))


def python_spellings(data: Any, source: bytes) -> set[str]:
    """What ``str()`` makes of the non-string values in ``data`` where JSON (``source``) spells them
    otherwise: ``True``, ``None``, ``{'k': 'v'}``; an attribute equal to one leaked a Python repr."""
    found: set[str] = set()
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        if not isinstance(value, str) and str(value).encode() not in source:
            found.add(str(value))
    return found


def leaf_paths(data: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the single values under objects (what ``*_field`` options name)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and "." not in key:
                yield from leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return {**data, head: with_value(data[head], rest, value) if rest else value}
