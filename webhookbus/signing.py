"""HMAC building blocks shared by every HMAC-style verifier (built-in or third-party).

Each function is the one place where a subtle rule lives: comparisons are constant-time,
a secret rotation means "any configured secret may match", and a timestamp tolerance
check says in its error which way the clock is off.  Nothing here logs or returns a
secret or a computed digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Literal

from webhookbus.plugin import VerificationFailed

Encoding = Literal["hex", "base64"]

matched_secret_index: ContextVar[int | None] = ContextVar("matched_secret_index", default=None)
"""Which secret of a rotation verified the current request: the listener puts it in the request's
log line, so an operator sees when the old secret stops being used and can be removed."""


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def decode_digest(text: str, encodings: Iterable[Encoding]) -> list[bytes]:
    """Every way ``text`` decodes under the allowed encodings (empty if none).

    A 64-character hex string is also valid base64, so both readings are kept and the
    comparison decides; that is how a provider that "sometimes sends hex" is accepted.
    """
    text = text.strip()
    decoded: list[bytes] = []
    for encoding in encodings:
        try:
            if encoding == "hex":
                decoded.append(bytes.fromhex(text))
            else:
                decoded.append(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
        except (ValueError, binascii.Error):
            continue
    return decoded


def matching_secret(secrets: Sequence[bytes], message: bytes, candidates: Sequence[bytes]) -> int | None:
    """Index of the first secret whose HMAC-SHA256 of ``message`` equals a candidate.

    Every candidate is compared in constant time; the index (never the value) is what a
    caller may log to show which secret of a rotation is still in use.
    """
    for index, secret in enumerate(secrets):
        if not secret:  # anybody can compute an HMAC under the empty key (config refuses one too)
            continue
        expected = hmac_sha256(secret, message)
        for candidate in candidates:
            if hmac.compare_digest(expected, candidate):
                matched_secret_index.set(index)
                return index
    return None


def require_match(secrets: Sequence[bytes], message: bytes, candidates: Sequence[bytes]) -> int:
    """:func:`matching_secret`, raising :class:`VerificationFailed` when nothing matches."""
    if not candidates:
        raise VerificationFailed("signature header is not a valid digest")
    index = matching_secret(secrets, message, candidates)
    if index is None:
        raise VerificationFailed("signature does not match")
    return index


def check_timestamp(raw: str, tolerance_seconds: float, now: float | None = None) -> int:
    """Parse a unix-seconds timestamp and reject it outside ``now ± tolerance``."""
    text = raw.strip()
    # ASCII digits only, bounded: int() alone accepts "1_0" and non-ASCII digits, and a
    # 400-digit value overflows the float arithmetic below (an OverflowError, i.e. a 500).
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise VerificationFailed("timestamp is not an integer number of seconds")
    timestamp = int(text)
    skew = (time.time() if now is None else now) - timestamp
    if skew > tolerance_seconds:
        raise VerificationFailed(f"timestamp is {int(skew)} s old, outside the {int(tolerance_seconds)} s tolerance")
    if -skew > tolerance_seconds:
        raise VerificationFailed(f"timestamp is {int(-skew)} s in the future, outside the {int(tolerance_seconds)} s tolerance")
    return timestamp
