"""``zignsec``: ZignSec result callbacks and session webhooks.

``X-ZignSec-Hmac-SHA256`` is an HMAC-SHA256 keyed with the UTF-8 bytes of the secret, in one of
two forms: the legacy one is base64 (some integrations saw hex) of the MAC of the raw body; the
current one is ``t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"{t}.{raw body}"``, where other ``vN``
schemes are ignored and ``t`` must be within ``tolerance_seconds``.

Bodies are JSON or XML (by Content-Type).  XML is parsed with defusedxml and any DTD is refused,
so no entity is ever expanded and no external resource read.  It becomes the same shape as the
JSON form: child elements are keys (repeated ones a list), leaves are strings (``xsi:nil`` is
null), attributes and the root element's name are dropped.  So the event name, id, subject and
time of the XML and JSON forms of one callback are equal; ``data`` differs only in that XML
scalars are strings (``"107"`` where JSON has ``107``) and a one-element list is not a list.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

import defusedxml
import defusedxml.ElementTree
from pydantic import Field

from webhookbus.plugin import (
    Accepted, InboundRequest, MalformedPayload, ProviderEvent, Secrets, VerificationFailed, VerifierOptions, parse_json,
)
from webhookbus.signing import check_timestamp, decode_digest, require_match

logger = logging.getLogger("webhookbus.verifiers.zignsec")

HEADER = "x-zignsec-hmac-sha256"
XML_TYPES = ("application/xml", "text/xml")
_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


class ZignSecOptions(VerifierOptions):
    tolerance_seconds: float = Field(300, gt=0, description="Accepted clock skew for the t= of timestamped signatures.")


class ZignSecVerifier:
    Options = ZignSecOptions
    # What the README's PII paragraph lists: `webhookbus check` warns of a route sending them unruled.
    pii_fields: ClassVar[tuple[str, ...]] = (
        "data.identity",
    )

    def __init__(self, options: ZignSecOptions, secrets: Secrets, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock`` exists for tests; the listener never passes it."""
        if not secrets:
            raise ValueError("the zignsec verifier needs at least one secret")
        self.options = options
        self.secrets = secrets
        self.clock = clock

    def verify(self, request: InboundRequest) -> Accepted:
        header = request.headers.get(HEADER)
        if header is None:
            raise VerificationFailed("missing X-ZignSec-Hmac-SHA256 header")
        signed_at = self._check_signature(header.strip(), request.body)
        data, data_json = _parse(request)
        record = data if isinstance(data, dict) else {}
        session_id = _scalar(record, "id")
        name = _scalar(record, "event") or _scalar(record, "method") or "result"
        if _scalar(record, "event"):
            result = _field(record, "result")
            status = _scalar(result, "status") if isinstance(result, dict) else None
        else:
            status = _scalar(record, "status") or _scalar(record, "state")
        return Accepted(ProviderEvent(
            name=name.lower(),
            data=data,
            data_json=data_json,
            id=f"{session_id}:{status}" if session_id and status else session_id,
            subject=session_id,
            time=datetime.fromtimestamp(signed_at, timezone.utc) if signed_at is not None else None,
        ))

    def _check_signature(self, header: str, body: bytes) -> int | None:
        """Verify either form; return the signed ``t`` of the timestamped form."""
        items = [item.strip().partition("=") for item in header.split(",")]
        if not any(key == "t" or (key[:1] == "v" and key[1:].isdigit()) for key, _, _ in items):
            index = require_match(self.secrets, body, decode_digest(header, ["base64", "hex"]))
            logger.debug("legacy signature matched", extra={"secret_index": index})
            return None
        stamps = [value for key, _, value in items if key == "t"]
        if len(stamps) != 1:
            raise VerificationFailed("X-ZignSec-Hmac-SHA256 needs exactly one t=")
        signatures = [value for key, _, value in items if key == "v1"]
        if not signatures:
            raise VerificationFailed("X-ZignSec-Hmac-SHA256 has no v1= signature")
        signed_at = check_timestamp(stamps[0], self.options.tolerance_seconds, now=self.clock())
        candidates = [digest for value in signatures for digest in decode_digest(value, ["hex"])]
        index = require_match(self.secrets, stamps[0].strip().encode() + b"." + body, candidates)
        logger.debug("timestamped signature matched", extra={"secret_index": index})
        return signed_at


def _parse(request: InboundRequest) -> tuple[Any, bytes | None]:
    """JSON, or XML when the Content-Type says so (or, lacking one, the body starts with ``<``);
    with the JSON text for ``ProviderEvent.data_json`` (None for XML)."""
    kind = request.content_type
    try:
        if kind in XML_TYPES or kind.endswith("+xml") or ("json" not in kind and request.body.lstrip()[:1] == b"<"):
            try:
                return _element(defusedxml.ElementTree.fromstring(request.body, forbid_dtd=True)), None
            except (defusedxml.DefusedXmlException, ElementTree.ParseError, ValueError):
                raise MalformedPayload("body is not well-formed XML without a DTD") from None
        try:
            return parse_json(request.body)
        except (UnicodeDecodeError, ValueError):
            raise MalformedPayload("body is not valid JSON") from None
    except RecursionError:
        raise MalformedPayload("body is nested too deeply") from None


def _element(element: ElementTree.Element) -> Any:
    """An element as JSON would have it: children -> dict (repeats -> list), leaf -> text."""
    if element.get(_NIL) == "true":
        return None
    children = list(element)
    if not children:
        return element.text or ""
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in children:
        key, value = child.tag.rpartition("}")[2], _element(child)
        if key not in out:
            out[key] = value
        elif key in repeated:
            out[key].append(value)
        else:
            out[key] = [out[key], value]
            repeated.add(key)
    return out


def _field(record: dict[str, Any], name: str) -> Any:
    """``record[name]``, matching the key case-insensitively (.NET XML capitalises: ``Id``, ``Status``)."""
    if name in record:
        return record[name]
    return next((value for key, value in record.items() if key.lower() == name), None)


def _scalar(record: dict[str, Any], name: str) -> str | None:
    """A field as the same string whether it came from JSON (``2``, ``true``) or XML (``"2"``, ``"true"``)."""
    value = _field(record, name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str) and str(value):
        return str(value)
    return None
