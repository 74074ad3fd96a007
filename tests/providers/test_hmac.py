"""The generic ``hmac`` verifier: JSON values named by the options become attributes as JSON spells
them (a consumer in JavaScript or Java computes the same text), never as Python's ``str()`` does."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from webhookbus.plugin import MalformedPayload
from webhookbus.testing.samples import SignedRequest
from webhookbus.verifiers.hmac import HmacOptions, HmacVerifier

SECRET = b"hmac-spelling-secret"
OPTIONS = HmacOptions(event_field="type", id_field="id", subject_field="user.id")


def verified(body: bytes):
    signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()  # the standard library, not webhookbus.signing
    request = SignedRequest("POST", "/h", {"X-Signature": signature}, body).inbound("demo")
    return HmacVerifier(OPTIONS, [SECRET]).verify(request).events[0]


@pytest.mark.parametrize(("body", "name", "event_id", "subject"), [
    (b'{"type":true,"id":false,"user":{"id":1e2}}', "true", "false", "1e2"),
    (b'{"type":"user.created","id":12345678901234567890,"user":{"id":-0}}', "user.created", "12345678901234567890", "-0"),
    (b'{"type":"a","id":1.50,"user":{"id":2.5E-3}}', "a", "1.50", "2.5E-3"),
    (b'\xef\xbb\xbf{"type":"a","id":1E2,"user":{"id":"u_1"}}', "a", "1E2", "u_1"),  # a BOM, as some senders prepend
])
def test_single_values_are_written_as_the_json_spells_them(body, name, event_id, subject):
    event = verified(body)
    assert (event.name, event.id, event.subject) == (name, event_id, subject)


def test_a_utf16_body_keeps_its_number_spelling():
    event = verified('{"type":"a","id":1e2}'.encode("utf-16"))
    assert event.id == "1e2"


def test_objects_and_arrays_are_no_attribute():
    event = verified(b'{"type":"a","id":{"k":"v"},"user":{"id":[1,2]}}')
    assert (event.id, event.subject) == (None, None)  # left out: the body's SHA-256 becomes the id
    assert verified(b'{"type":"a","id":null,"user":{"id":""}}').subject is None
    for name in (b'{"k":"v"}', b"[1]"):
        with pytest.raises(MalformedPayload, match="object or an array"):
            verified(b'{"type":' + name + b"}")
    assert verified(b'{"type":null}').name == "received"  # absent or null: the default event
