"""Kafka encodings with ``data_json``: the verifier's JSON text copied into records, never re-serialised.

A record built from the text must read (plain ``json`` and the official CloudEvents SDK) exactly
as one built by serialising ``data``; the built-in verifiers must hand over the raw body only
when it is the UTF-8 JSON text their ``data`` came from.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

from webhookbus.events import CloudEvent, decode_kafka, encode_binary, encode_structured, normalize
from webhookbus.plugin import InboundRequest, MalformedPayload, ProviderEvent, parse_json
from webhookbus.verifiers.authgear import AuthgearOptions, AuthgearVerifier
from webhookbus.verifiers.hmac import HmacOptions, HmacVerifier
from webhookbus.verifiers.standardwebhooks import StandardWebhooksOptions, StandardWebhooksVerifier
from webhookbus.verifiers.uip import UipOptions, UipVerifier, compact_json

SECRET = b"events-test-secret"
WHSEC = b"whsec_" + base64.b64encode(b"events-test-standard-webhooks-key")
# Not what json.dumps writes back: indentation, spaces, a \u escape, raw UTF-8, 1.50 and 1e2.
BODY = (b'{\n  "event": "identify", "type": "user.created",\n  "name": "Jos\\u00e9 M\xc3\xbcller",\n'
        b'  "data": {"uip_id": "u_1", "audit_id": "aud_1", "amount": 1.50, "n": 1e2, "tags": [ "a" , "b" ]}\n}\n')
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def inbound(body: bytes, headers: dict[str, str] | None = None, provider: str = "acme") -> InboundRequest:
    return InboundRequest(provider=provider, method="POST", path=f"/hooks/{provider}", query="",
                          headers={"content-type": "application/json", **(headers or {})}, body=body,
                          received_at=datetime.now(timezone.utc))


def event_pair(body: bytes = BODY, **fields: Any) -> tuple[CloudEvent, CloudEvent]:
    """The same event with and without ``data_json``."""
    data, text = parse_json(body)
    request = InboundRequest("acme", "POST", "/hooks/acme", "", {}, body, RECEIVED)
    with_text = normalize(request, "hmac", ProviderEvent("user.created", data, id="e1", subject="u_1",
                                                         data_json=text, **fields))
    return with_text, dataclasses.replace(with_text, data_json=None)


def sdk(value: bytes, headers: list[tuple[str, bytes]]) -> tuple[dict[str, Any], Any]:
    event = from_kafka_event(KafkaMessage(headers=dict(headers), key=None, value=value))
    return event.get_attributes(), event.get_data()


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


# -- encodings --------------------------------------------------------------------------------


@pytest.mark.parametrize("include_raw_body", [False, True])
def test_a_structured_record_with_data_json_reads_as_one_without(include_raw_body):
    spliced, serialised = event_pair()
    value, headers = encode_structured(spliced, include_raw_body)
    plain_value, plain_headers = encode_structured(serialised, include_raw_body)
    assert BODY in value, "the body's own text, not a serialisation of its parse"
    assert BODY not in plain_value
    assert headers == plain_headers
    document = json.loads(value.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    assert document == json.loads(plain_value)
    assert document["data"] == json.loads(BODY) and document["data"]["name"] == "José Müller"
    assert list(document)[-1] == "data"
    assert sdk(value, headers) == sdk(plain_value, plain_headers)
    assert sdk(value, headers)[1] == json.loads(BODY)


@pytest.mark.parametrize("include_raw_body", [False, True])
def test_a_binary_record_with_data_json_reads_as_one_without(include_raw_body):
    spliced, serialised = event_pair()
    value, headers = encode_binary(spliced, include_raw_body)
    plain_value, plain_headers = encode_binary(serialised, include_raw_body)
    assert value == BODY
    assert headers == plain_headers
    assert json.loads(value) == json.loads(plain_value)
    assert sdk(value, headers) == sdk(plain_value, plain_headers)
    assert sdk(value, headers)[1] == json.loads(BODY)


@pytest.mark.parametrize("body", [b"[1, 2, {\"a\": null}]", b'"text"', b"0", b"null", b" true "])
def test_any_json_value_splices(body):
    spliced, serialised = event_pair(body)
    for encode in (encode_structured, encode_binary):
        assert json.loads(encode(spliced)[0]) == json.loads(encode(serialised)[0])


def test_an_extension_named_data_does_not_duplicate_the_key():
    spliced, serialised = event_pair(extensions={"data": "x"})
    value, _ = encode_structured(spliced)
    assert json.loads(value, object_pairs_hook=no_duplicate_keys) == json.loads(encode_structured(serialised)[0])


def test_a_lone_surrogate_escape_is_carried_as_written():
    """``"\\ud800"`` is legal JSON; the parsed str cannot be written as UTF-8, the text can."""
    spliced, _ = event_pair(b'{"x": "\\ud800"}')
    assert json.loads(encode_structured(spliced)[0])["data"] == {"x": "\ud800"}


# -- parse_json -------------------------------------------------------------------------------


def test_parse_json_hands_over_utf8_text_only():
    assert parse_json(BODY) == (json.loads(BODY), BODY)
    assert parse_json(b"\xef\xbb\xbf" + BODY) == (json.loads(BODY), BODY), "a UTF-8 BOM is read past, not kept"
    text = BODY.decode("utf-8")
    for encoding in ("utf-16", "utf-16-le", "utf-32"):  # json.loads reads them: still read, never spliced
        assert parse_json(text.encode(encoding)) == (json.loads(BODY), None), encoding
    assert parse_json(b'{"x": "\xed\xa0\x80"}') == ({"x": "\ud800"}, None), "a UTF-8-encoded surrogate is not UTF-8"
    for bad in (b"", b"{", b"\xff{}", b"\xef\xbb\xbf\xef\xbb\xbf{}"):
        with pytest.raises(ValueError):
            parse_json(bad)


# -- the built-in verifiers hand over the raw body ---------------------------------------------


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def sign_hmac(body: bytes) -> tuple[HmacVerifier, InboundRequest]:
    options = HmacOptions(event_field="type", id_field="data.audit_id")
    return HmacVerifier(options, [SECRET]), inbound(body, {"x-signature": _mac(SECRET, body).hex()})


def sign_uip_v1(body: bytes) -> tuple[UipVerifier, InboundRequest]:
    return UipVerifier(UipOptions(), [SECRET]), inbound(body, {"x-uip-signature": _mac(SECRET, body).hex()})


def sign_uip_v2(body: bytes) -> tuple[UipVerifier, InboundRequest]:
    stamp = str(int(time.time()))
    headers = {"x-uip-timestamp": stamp, "x-uip-event": "identify", "x-uip-delivery-id": "dlv_1",
               "x-uip-signature": _mac(SECRET, stamp.encode() + b"." + body).hex()}
    return UipVerifier(UipOptions(), [SECRET]), inbound(body, headers)


def sign_authgear(body: bytes) -> tuple[AuthgearVerifier, InboundRequest]:
    headers = {"x-authgear-body-signature": _mac(SECRET, body).hex()}
    return AuthgearVerifier(AuthgearOptions(), [SECRET]), inbound(body, headers)


def sign_standardwebhooks(body: bytes) -> tuple[StandardWebhooksVerifier, InboundRequest]:
    key = base64.b64decode(WHSEC.removeprefix(b"whsec_"))
    stamp = str(int(time.time()))
    signature = base64.b64encode(_mac(key, f"msg_1.{stamp}.".encode() + body)).decode()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": f"v1,{signature}"}
    return StandardWebhooksVerifier(StandardWebhooksOptions(), [WHSEC]), inbound(body, headers)


SIGNED = [sign_hmac, sign_uip_v1, sign_uip_v2, sign_authgear, sign_standardwebhooks]


def records(verifier: Any, request: InboundRequest) -> tuple[ProviderEvent, bytes, bytes]:
    (event,) = verifier.verify(request).events
    cloud = normalize(request, "test", event)
    return event, encode_structured(cloud)[0], encode_binary(cloud)[0]


@pytest.mark.parametrize("sign", SIGNED, ids=lambda sign: sign.__name__.removeprefix("sign_"))
def test_built_in_verifiers_put_the_raw_body_in_records_byte_for_byte(sign):
    event, structured, binary = records(*sign(BODY))
    assert event.data_json == BODY and event.data == json.loads(BODY)
    assert structured.endswith(b',"data":' + BODY + b"}")
    assert binary == BODY
    assert json.loads(structured)["data"] == json.loads(BODY)


@pytest.mark.parametrize("sign", SIGNED, ids=lambda sign: sign.__name__.removeprefix("sign_"))
def test_a_body_that_is_not_utf8_is_still_read_but_never_spliced(sign):
    body = BODY.decode("utf-8").encode("utf-16")  # json.loads(bytes) reads it, as it always did
    event, structured, binary = records(*sign(body))
    assert event.data_json is None and event.data == json.loads(BODY)
    assert json.loads(structured)["data"] == json.loads(BODY) and json.loads(binary) == json.loads(BODY)


@pytest.mark.parametrize("sign", SIGNED, ids=lambda sign: sign.__name__.removeprefix("sign_"))
def test_a_utf8_bom_is_read_past_and_left_out_of_records(sign):
    event, structured, binary = records(*sign(b"\xef\xbb\xbf" + BODY))
    assert event.data_json == BODY
    assert json.loads(structured)["data"] == json.loads(BODY) and binary == BODY


@pytest.mark.parametrize("sign", SIGNED, ids=lambda sign: sign.__name__.removeprefix("sign_"))
def test_a_body_that_is_not_json_is_still_refused(sign):
    verifier, request = sign(b'{"event": "identify", "type": "x"')
    with pytest.raises(MalformedPayload):
        verifier.verify(request)


def test_uip_v1_compact_signature_puts_the_signed_text_in_records_not_the_body():
    """Signed as JSON.stringify(body): the body's bytes are not what UIP signed (only their
    parse is), so the record carries the compact text the signature covers."""
    compact = compact_json(json.loads(BODY))
    verifier = UipVerifier(UipOptions(), [SECRET])
    event, structured, binary = records(verifier, inbound(BODY, {"x-uip-signature": _mac(SECRET, compact).hex()}))
    assert event.data_json == compact and binary == compact
    assert structured.endswith(b',"data":' + compact + b"}") and BODY not in structured


def test_a_plugin_extension_cannot_take_a_core_attribute_name():
    request = InboundRequest("acme", "POST", "/x", "", {}, b'{"a": 1}', datetime(2026, 1, 1, tzinfo=timezone.utc))
    event = normalize(request, "acme", ProviderEvent(name="thing", data={"a": 1}, id="evt-1",
                                                     extensions={"id": "forged", "type": "other", "region": "eu"}))
    document = json.loads(encode_structured(event)[0])
    assert (document["id"], document["type"], document["region"]) == ("evt-1", "acme.thing", "eu")


# -- every record is one the SDK reads, whatever a signed payload or a plugin holds ---------------


def both_modes(event: CloudEvent) -> list[tuple[dict[str, Any], Any]]:
    """The event as the SDK reads it from a structured and from a binary record."""
    return [sdk(*encode(event)) for encode in (encode_structured, encode_binary)]


def test_a_lone_surrogate_in_a_signed_id_or_subject_becomes_a_replacement_character():
    """Legal JSON, but no UTF-8 form: encoding the record failed (a 500 on every retry)."""
    body = b'{"type": "user.\\ud800", "user": "u\\udfff", "data": {"audit_id": "\\ud800"}}'
    verifier = HmacVerifier(HmacOptions(event_field="type", id_field="data.audit_id", subject_field="user"), [SECRET])
    (event,) = verifier.verify(inbound(body, {"x-signature": _mac(SECRET, body).hex()})).events
    for attributes, data in both_modes(normalize(inbound(body), "hmac", event)):
        assert attributes["id"] == "\ufffd" and attributes["subject"] == "u\ufffd"
        assert attributes["type"] == "acme.user.\ufffd"
        assert data["data"] == {"audit_id": "\ud800"}, "the data keeps what was sent"


def test_a_lone_surrogate_in_data_without_data_json_is_carried_as_written():
    """A UTF-16 body is decoded keeping lone surrogates and has no ``data_json`` to splice."""
    data, text = parse_json('{"x": "\ud800", "name": "Jos\u00e9"}'.encode("utf-16", "surrogatepass"))
    assert text is None
    _, serialised = event_pair(extensions={"note": "\ud800"})
    serialised = dataclasses.replace(serialised, data=data)
    for attributes, read in both_modes(serialised):
        assert read == {"x": "\ud800", "name": "José"} and attributes["note"] == "\ufffd"


@pytest.mark.parametrize("sign", SIGNED, ids=lambda sign: sign.__name__.removeprefix("sign_"))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_number_too_large_for_a_float_is_refused(sign, encoding):
    """``1e400`` parses to inf, which a record would hold as ``Infinity``: not JSON."""
    body = '{"event": "identify", "type": "x", "data": {"audit_id": "a", "amount": -1e400}}'.encode(encoding)
    with pytest.raises(ValueError):
        parse_json(body)
    verifier, request = sign(body)
    with pytest.raises(MalformedPayload):
        verifier.verify(request)


def test_an_empty_subject_is_left_out():
    """The SDK refuses an empty subject; the hmac verifier gives one for ``{"user": ""}``."""
    body = b'{"type": "x", "user": ""}'
    verifier = HmacVerifier(HmacOptions(subject_field="user"), [SECRET])
    (event,) = verifier.verify(inbound(body, {"x-signature": _mac(SECRET, body).hex()})).events
    assert event.subject is None
    # A third-party plugin may still hand one over: normalize leaves it out too.
    for attributes, _ in both_modes(normalize(inbound(body), "hmac", dataclasses.replace(event, subject=""))):
        assert "subject" not in attributes


def test_an_extension_name_cloudevents_does_not_allow_is_dropped_and_logged(caplog):
    """In binary mode ``ID`` became a ``ce_ID`` header that the SDK read as the id."""
    forged = {"ID": "forged-1", "Type": "forged-2", "re-gion": "forged-3", "a" * 21: "forged-4", "region": "eu"}
    with caplog.at_level(logging.WARNING, logger="webhookbus.events"):
        spliced, _ = event_pair(extensions=forged)
    for attributes, _ in both_modes(spliced):
        assert (attributes["id"], attributes["type"], attributes["region"]) == ("e1", "acme.user.created", "eu")
        assert not any(str(value).startswith("forged") for value in attributes.values())
    dropped = [(record.verifier, record.extension) for record in caplog.records]
    assert dropped == [("hmac", "ID"), ("hmac", "Type"), ("hmac", "re-gion"), ("hmac", "a" * 21)]
    assert "forged" not in caplog.text, "a dropped extension's value is not logged"


def test_extension_values_are_carried_as_strings():
    """Binary headers are bytes: an int value was an AttributeError (a 500)."""
    spliced, _ = event_pair(extensions={"count": 3, "flag": True, "ratio": 0.5, "unset": None})
    for attributes, _ in both_modes(spliced):
        assert (attributes["count"], attributes["flag"], attributes["ratio"]) == ("3", "true", "0.5")
        assert "unset" not in attributes


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_without_a_utc_form_falls_back_to_the_receipt_time(stamp):
    """Converting it to UTC overflows; standardwebhooks passes the payload's timestamp through."""
    body = json.dumps({"type": "user.created", "timestamp": stamp}).encode()
    verifier, request = sign_standardwebhooks(body)
    (event,) = verifier.verify(request).events
    assert event.time == datetime.fromisoformat(stamp)
    for attributes, _ in both_modes(normalize(request, "standardwebhooks", event)):
        assert attributes["time"] == request.received_at
    near = datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # still has a UTC form: kept
    spliced, _ = event_pair(time=near)
    assert both_modes(spliced)[0][0]["time"] == near


def test_decode_kafka_reads_headers_without_a_value():
    """Kafka allows a null header value; ``webhookbus tail`` must still show the record."""
    value, headers = encode_binary(event_pair()[0])
    document = decode_kafka(value, [*headers, ("ce_empty", None), ("traceparent", None)])
    assert document["id"] == "e1" and document["empty"] == "" and document["data"] == json.loads(BODY)
    assert decode_kafka(b'{"a": 1}', [("content-type", None), ("ce_id", None)]) == \
        {"id": "", "datacontenttype": None, "data": {"a": 1}}
