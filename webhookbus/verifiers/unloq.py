"""``unloq``: UNLOQ's logout and account (activate/deactivate) webhooks.

UNLOQ does not sign the body bytes.  Its reference (Node.js) receiver rebuilds a string
from the request target (path as sent, plus ``?query``) followed by every POST field,
sorted by key, as ``key + value`` with no separators, and compares the base64
HMAC-SHA256 of that string (key = the application's API secret) with
``X-Unloq-Signature``.  So the body is parsed first, and values are turned into strings
exactly as JavaScript's ``+`` does, or the signatures would not match.

Payloads carry no event type, id or time: the hook's URL says which event it is (each
hook has its own URL in UNLOQ's settings), and the id is a digest of the signed string,
so a replay of the same request gets the same id.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import logging
import math
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from pydantic import Field

from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Secrets,
    VerificationFailed,
    VerifierOptions,
)
from webhookbus.signing import decode_digest, require_match

log = logging.getLogger("webhookbus.verifiers.unloq")

HEADER = "x-unloq-signature"
FORM = "application/x-www-form-urlencoded"


class UnloqOptions(VerifierOptions):
    hooks: dict[str, str] = Field(
        default_factory=lambda: {"logout": "logout", "account": "account"},
        description="Last URL path segment -> event name; any other segment is rejected.",
    )
    max_fields: int = Field(1000, ge=1, le=10_000, description="More POST fields than this is a 400.")


class UnloqVerifier:
    Options = UnloqOptions
    # What the README's PII paragraph lists: `webhookbus check` warns of a route sending them unruled.
    pii_fields: ClassVar[tuple[str, ...]] = (
        "subject", "data.unloq_id", "data.sid", "data.email", "data.ip",
    )

    def __init__(self, options: UnloqOptions, secrets: Secrets) -> None:
        if not secrets:
            raise ValueError("the unloq verifier needs at least one secret (the API secret)")
        self.options = options
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        signature = request.headers.get(HEADER)
        if signature is None:
            raise VerificationFailed("missing X-Unloq-Signature header")
        name = self.options.hooks.get(request.path.rstrip("/").rsplit("/", 1)[-1])
        if name is None:
            raise VerificationFailed("unknown UNLOQ hook path")
        fields = parse_fields(request, self.options.max_fields)
        message = signed_string(request.raw_target, fields)
        index = require_match(self.secrets, message, decode_digest(signature, ["base64"]))
        log.debug("unloq signature verified", extra={"secret_index": index})
        unloq_id = fields.get("unloq_id")
        return Accepted(
            ProviderEvent(
                name=name,
                data=fields,
                id=hashlib.sha256(message).hexdigest(),
                subject=js_string(unloq_id) if unloq_id not in (None, "") else None,
            )
        )


def parse_fields(request: InboundRequest, max_fields: int) -> dict[str, Any]:
    """The POST fields as the Node receiver sees them, chosen by ``Content-Type``.

    A repeated form key would be an array in Node (signed as ``"a,b"``, ambiguous with
    the value ``"a,b"``), so it is refused rather than guessed.
    """
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("body is not UTF-8") from None
    content_type = request.content_type
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise MalformedPayload("JSON body is not an object")
        if len(data) > max_fields:
            raise MalformedPayload(f"more than {max_fields} fields")
        return data
    if content_type != FORM:
        raise MalformedPayload(f"Content-Type must be {FORM} or application/json")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields, errors="strict")
    except ValueError:  # too many fields, or a %-escape that is not UTF-8
        raise MalformedPayload(f"form is not UTF-8 or has more than {max_fields} fields") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            raise MalformedPayload("a form field is repeated")
        fields[key] = value
    return fields


def signed_string(target: str, fields: dict[str, Any]) -> bytes:
    """``target + key1 + value1 + key2 + value2 ...`` encoded as Node's ``hmac.update`` does.

    Node's ``Array.prototype.sort`` orders keys by UTF-16 code unit, which differs from
    code-point order only between astral characters and U+E000..U+FFFF; it is Node's
    order the signature was made with.
    """
    keys = sorted(fields, key=lambda key: key.encode("utf-16-be", "surrogatepass"))
    text = target + "".join(key + js_string(fields[key]) for key in keys)
    # A JS string is UTF-16: a lone surrogate (legal in a JSON "\ud800" escape) becomes
    # U+FFFD when Node encodes to UTF-8, and two halves that meet in the concatenation pair up.
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace").encode("utf-8")


def js_string(value: Any) -> str:
    """``String(value)`` for a JSON scalar.

    Objects and arrays are refused: JavaScript would sign ``"[object Object]"`` or the
    elements joined by commas, i.e. their content would not be covered by the signature.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) < 2**53:
            return str(value)
        try:
            value = float(value)  # JSON.parse rounds large integers to a double
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, float):
        return js_number(value)
    raise MalformedPayload("nested objects and arrays are not part of UNLOQ's signature scheme")


def js_number(value: float) -> str:
    """ECMAScript ``Number::toString`` (radix 10): ``1.0`` -> ``"1"``, ``1e21`` -> ``"1e+21"``.

    ``repr`` already yields the shortest round-tripping digits, as ECMAScript requires;
    only the layout rules differ.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    parts = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, parts.digits))
    k, n = len(digits), int(parts.exponent) + len(digits)  # value = 0.digits * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    exponent = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + exponent


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # JSON.parse refuses NaN/Infinity too
