"""The normalized event (CloudEvents 1.0) and its two Kafka encodings.

Encodings follow the CloudEvents Kafka protocol binding, so any CloudEvents SDK reads
them: *structured* puts the whole event in the value as ``application/cloudevents+json``;
*binary* puts the attributes in ``ce_*`` headers and the data alone in the value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from webhookbus.plugin import InboundRequest, ProviderEvent

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
Headers = list[tuple[str, bytes]]
# Where a held request's decision goes (a route's reply, webhookbus.delivery.replies): set by the
# listener only, since a deciding service sends its answer wherever they say.
REPLY_TOPIC, REPLY_PARTITION, CORRELATION_ID = "replytopic", "replypartition", "correlationid"
# Attribute names a plugin's extension may not take: CloudEvents' own, and the ones webhookbus adds.
RESERVED_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject",
                                 "time", "data", "data_base64", "receivedtime", "verifier", "rawbody",
                                 REPLY_TOPIC, REPLY_PARTITION, CORRELATION_ID})
# CloudEvents 1.0: "lower-case ASCII letters or digits, at most 20 characters".
EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_SURROGATE = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")  # not as literals: mypyc refuses them

log = logging.getLogger("webhookbus.events")


def dotted_get(data: Any, path: str | None) -> Any:
    """``data['a']['b']`` for ``'a.b'``; ``None`` when any step is missing."""
    if path is None:
        return None
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is timezone.utc:  # the usual case, without a conversion
        return moment.isoformat().replace("+00:00", "Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# What CloudEvent.field() finds besides ``data.<path>``; any other name is looked up among the extensions.
EVENT_FIELDS = frozenset({"id", "source", "type", "subject", "time", "datacontenttype", "data", "receivedtime", "verifier"})


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One verified provider event, ready to route.  ``raw_body`` never leaves the
    process unless a route asks for it (as the ``rawbody`` extension, base64).
    ``data_json``, when set, is ``data`` as UTF-8 JSON text, written into records as is."""

    id: str
    source: str
    type: str
    time: datetime
    data: Any
    subject: str | None = None
    datacontenttype: str = "application/json"
    extensions: dict[str, str] = field(default_factory=dict)
    raw_body: bytes = b""
    data_json: bytes | None = None

    def attributes(self, include_raw_body: bool = False) -> dict[str, str]:
        """Every context attribute as the string the Kafka binding carries."""
        attrs = {"specversion": SPECVERSION, "id": self.id, "source": self.source, "type": self.type}
        if self.subject is not None:
            attrs["subject"] = self.subject
        attrs["time"] = rfc3339(self.time)
        attrs["datacontenttype"] = self.datacontenttype
        attrs.update(self.extensions)
        if include_raw_body:
            attrs["rawbody"] = base64.b64encode(self.raw_body).decode()
        return attrs

    def field(self, reference: str) -> Any:
        """An attribute (``subject``, ``id``...) or a dotted data field (``data.user.id``)."""
        if reference == "data":
            return self.data
        if reference.startswith("data."):
            return dotted_get(self.data, reference[5:])
        if reference in ("id", "source", "type", "subject", "datacontenttype"):
            return getattr(self, reference)
        if reference == "time":
            return rfc3339(self.time)
        return self.extensions.get(reference)


def normalize(request: InboundRequest, verifier: str, event: ProviderEvent, index: int | None = None) -> CloudEvent:
    """Wrap what a verifier returned into the CloudEvent every consumer sees.

    Without an id of its own an event's id is the body's SHA-256; ``index`` (its place
    among several events of one request) keeps those ids apart, as source+id must be.
    """
    received = rfc3339(request.received_at)
    return CloudEvent(
        id=_text(event.id or hashlib.sha256(request.body).hexdigest() + ("" if index is None else f"-{index}")),
        source=request.provider,
        type=_text(f"{request.provider}.{event.name}"),
        subject=_text(event.subject) if event.subject else None,  # the SDK refuses an empty subject
        time=_event_time(event.time, request.received_at),
        data=event.data,
        extensions={**_extensions(verifier, event.extensions),
                    "receivedtime": received, "verifier": verifier},
        raw_body=request.body,
        data_json=event.data_json,
    )


def _text(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD.

    JSON may spell one (``"\\ud800"``) and a UTF-16 body is decoded keeping them, but such a str
    has no UTF-8 form: an attribute holding one failed to encode on every retry of the provider
    (a 500 forever).  Attributes are what consumers compare and key on, so they get a character
    every reader can take; the data keeps its surrogates (see :func:`_json`).
    """
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _event_time(moment: datetime | None, received_at: datetime) -> datetime:
    """The provider's timestamp, else the receipt time; the receipt time too when the timestamp
    has no UTC form (``0001-01-01T00:00:00+01:00`` is before year 1 in UTC): a payload's date
    must not turn an authentic event into a 500 on every retry."""
    if moment is None:
        return received_at
    try:
        rfc3339(moment)
    except OverflowError:
        return received_at
    return moment


def _extensions(verifier: str, extensions: Mapping[str, Any]) -> dict[str, str]:
    """A plugin's extensions as records can carry them.

    A name CloudEvents does not allow is dropped with a log line: binary mode sent ``ID`` as a
    ``ce_ID`` header, which the SDK lower-cases into the real id, and structured mode records
    were refused.  So is one of ours (an ``id`` extension would replace the id); since valid
    names are lower-case, that check is case-insensitive.  Values become strings (the binary
    headers are bytes: an int was a 500); ``None`` means no value.
    """
    kept: dict[str, str] = {}
    for name, value in extensions.items():
        if not isinstance(name, str) or not EXTENSION_NAME.fullmatch(name):
            log.warning("extension dropped: not a CloudEvents attribute name",
                        extra={"verifier": verifier, "extension": _text(str(name))[:40]})
        elif name not in RESERVED_ATTRIBUTES and value is not None:
            kept[name] = _text(canonical_text(value))
    return kept


def canonical_text(value: Any) -> str:
    """CloudEvents' (and JSON's) string for a value: ``true``/``false`` for a bool, else ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Built once: json.dumps with options builds an encoder per call.  No circular-reference
# bookkeeping: data comes from a JSON parser, and a cycle still fails (RecursionError).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_STRUCTURED_CONTENT_TYPE = STRUCTURED_CONTENT_TYPE.encode()


def _json(value: Any) -> bytes:
    """``value`` as UTF-8 JSON text.  A lone surrogate (data parsed from ``"\\ud800"``, or from a
    UTF-16 body) has no UTF-8 form: then every non-ASCII character is written as a ``\\u`` escape,
    which carries it as written, as a spliced ``data_json`` does, instead of failing every retry."""
    text = _ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode()


def record_key(value: Any) -> bytes:
    """A Kafka record key from an event field: text as UTF-8 (see :func:`_text`), anything else
    (a number, a boolean, an object) as the JSON a consumer can parse, never a Python repr."""
    return _text(value).encode() if isinstance(value, str) else _json(value)


def encode_structured(event: CloudEvent, include_raw_body: bool = False) -> tuple[bytes, Headers]:
    document: dict[str, Any] = event.attributes(include_raw_body)  # a new dict: ours to complete
    headers: Headers = [("content-type", _STRUCTURED_CONTENT_TYPE)]
    if not event.data_json:
        document["data"] = event.data
        return _json(document), headers
    # The attributes alone, then the data's own text spliced in before the closing brace:
    # one copy of the body instead of a JSON encoding of its parse.
    document.pop("data", None)  # an extension named "data" loses to the data, as above
    attributes = _json(document)
    return b"".join((attributes[:-1], b',"data":', event.data_json, b"}")), headers


def encode_binary(event: CloudEvent, include_raw_body: bool = False) -> tuple[bytes, Headers]:
    attrs = event.attributes(include_raw_body)
    headers: Headers = [("content-type", attrs.pop("datacontenttype").encode())]
    headers.extend((f"ce_{name}", value.encode()) for name, value in attrs.items())
    return event.data_json or _json(event.data), headers


def decode_kafka(value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> dict[str, Any]:
    """Either encoding back to one structured-mode document (attributes plus ``data``).

    For ``webhookbus tail``: it reads what any CloudEvents producer wrote, so a value that is
    neither mode's JSON is kept as text under ``data`` rather than refused.
    """
    # Kafka allows a header without a value (null): read as an empty one.
    names = {name.lower(): raw or b"" for name, raw in headers}
    content_type = names.get("content-type", b"").decode("latin-1")
    if content_type.startswith(STRUCTURED_CONTENT_TYPE):
        try:
            document = json.loads(value or b"null")
            if isinstance(document, dict):
                return document
        except ValueError:
            pass
    document = {name[3:]: raw.decode("utf-8", "replace") for name, raw in names.items() if name.startswith("ce_")}
    document["datacontenttype"] = content_type or None
    try:
        document["data"] = json.loads(value) if value else None
    except ValueError:
        document["data"] = value.decode("utf-8", "replace") if value else None
    return document
