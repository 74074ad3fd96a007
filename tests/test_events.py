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
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

from webhookbus.events import CloudEvent, encode_binary, encode_structured, normalize
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
