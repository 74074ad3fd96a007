"""HMAC and token building blocks shared by every verifier (built-in or third-party).

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
Digest = Literal["sha1", "sha256", "sha512"]
"""The hash under the HMAC: sha256 by default; sha1 for GitHub's legacy ``X-Hub-Signature`` and
other older vendors, sha512 for some newer ones."""

matched_secret_index: ContextVar[int | None] = ContextVar("matched_secret_index", default=None)
"""Which secret of a rotation verified the current request: the listener puts it in the request's
log line, so an operator sees when the old secret stops being used and can be removed."""


def hmac_digest(key: bytes, message: bytes, digest: Digest = "sha256") -> bytes:
    return hmac.digest(key, message, digest)  # OpenSSL's one-shot HMAC: no Python-level HMAC object


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


def matching_secret(secrets: Sequence[bytes], message: bytes, candidates: Sequence[bytes],
                    digest: Digest = "sha256") -> int | None:
    """Index of the first secret whose HMAC (SHA-256 unless ``digest`` says) of ``message`` equals a candidate.

    Every candidate is compared in constant time; the index (never the value) is what a
    caller may log to show which secret of a rotation is still in use.
    """
    for index, secret in enumerate(secrets):
        if not secret:  # anybody can compute an HMAC under the empty key (config refuses one too)
            continue
        expected = hmac_digest(secret, message, digest)
        for candidate in candidates:
            if hmac.compare_digest(expected, candidate):
                matched_secret_index.set(index)
                return index
    return None


def require_match(secrets: Sequence[bytes], message: bytes, candidates: Sequence[bytes],
                  digest: Digest = "sha256") -> int:
    """:func:`matching_secret`, raising :class:`VerificationFailed` when nothing matches."""
    if not candidates:
        raise VerificationFailed("signature header is not a valid digest")
    index = matching_secret(secrets, message, candidates, digest)
    if index is None:
        raise VerificationFailed("signature does not match")
    return index


def require_token(secrets: Sequence[bytes], presented: str | bytes | None, what: str = "token") -> int:
    """Index of the secret equal to a static token the provider sends as is (GitLab's
    ``X-Gitlab-Token``, Meta's ``hub.verify_token``), or :class:`VerificationFailed`.

    Both sides are hashed before the constant-time compare, so neither the token's length nor
    where it first differs shows in the timing; a ``str`` is taken as UTF-8.  ``what`` names
    the token in the error (``"X-Gitlab-Token"``)."""
    if not presented:
        raise VerificationFailed(f"{what} is missing")
    token = hashlib.sha256(presented.encode("utf-8", "surrogateescape") if isinstance(presented, str) else presented)
    for index, secret in enumerate(secrets):
        if secret and hmac.compare_digest(token.digest(), hashlib.sha256(secret).digest()):
            matched_secret_index.set(index)
            return index
    raise VerificationFailed(f"{what} is wrong")


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
