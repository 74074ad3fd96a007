"""ZignSec verifier: legacy and timestamped HMAC headers, JSON and XML bodies, hostile XML.

Signatures are computed here with Python's ``hmac`` the way the docs' C# sample does
(``HMACSHA256(Encoding.UTF8.GetBytes(secret))`` over the posted bytes, base64), plus two constants
computed with the openssl CLI, so no vector comes from the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest

from webhookbus.events import normalize
from webhookbus.plugin import InboundRequest, MalformedPayload, VerificationFailed
from webhookbus.verifiers.zignsec import ZignSecOptions, ZignSecVerifier

SECRET = "hemlig-nyckel-åäö"  # non-ASCII on purpose: the key is the secret's UTF-8 bytes
OLD_SECRET = "previous-access-token"
NOW = 1767225600

# From the openssl CLI (printf '%s' BODY | openssl dgst -sha256 -hmac SECRET -binary | base64; and the
# same over "1767225600." + BODY, hex), with the UTF-8 locale, so independent of Python's hmac too.
OPENSSL_BODY = (b'{"identity":{"PersonalNumber":"191212121212"},"method":"sbid-another",'
                b'"id":"61d300c2-cff8-4dc1-9abc-6d59f8876d32"}')
OPENSSL_BASE64 = "94eJgqhpQ096EBp0yLp6pgv6nsF4gY1kLW81v/mIqiU="
OPENSSL_TIMESTAMPED_HEX = "6246e0caf36bbad4e0a8c53221000cadb61b9999361badcc79efb5b560c0c958"

# The seed's Swedish BankID result callback, and the same result as XML (.NET DataContract style).
BANKID = {
    "identity": {
        "CountryCode": "SE", "FirstName": "LARS", "LastName": "SVENSSON", "FullName": "LARS SVENSSON",
        "PersonalNumber": "191212121212", "DateOfBirth": "1912-12-12", "Age": 107, "IdProviderName": "BankIDSE",
        "IdentificationDate": "2018-10-22T08:26:41.8675683+02:00", "IdProviderRequestId": "",
        "IdProviderPersonId": "", "CustomerPersonId": None,
    },
    "BankIDSE": {"signature": "PD94….", "ocspResponse": "MIIH…"},
    "method": "sbid-another",
    "id": "61d300c2-cff8-4dc1-9abc-6d59f8876d32",
}
BANKID_XML = """<?xml version="1.0" encoding="utf-8"?>
<CollectResult xmlns="http://schemas.datacontract.org/2004/07/ZignSec"
               xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <identity>
    <CountryCode>SE</CountryCode>
    <FirstName>LARS</FirstName>
    <LastName>SVENSSON</LastName>
    <FullName>LARS SVENSSON</FullName>
    <PersonalNumber>191212121212</PersonalNumber>
    <DateOfBirth>1912-12-12</DateOfBirth>
    <Age>107</Age>
    <IdProviderName>BankIDSE</IdProviderName>
    <IdentificationDate>2018-10-22T08:26:41.8675683+02:00</IdentificationDate>
    <IdProviderRequestId></IdProviderRequestId>
    <IdProviderPersonId/>
    <CustomerPersonId i:nil="true"/>
  </identity>
  <BankIDSE><signature>PD94….</signature><ocspResponse>MIIH…</ocspResponse></BankIDSE>
  <method>sbid-another</method>
  <id>61d300c2-cff8-4dc1-9abc-6d59f8876d32</id>
</CollectResult>""".encode()

SESSION_UPDATED = {
    "event": "SESSION_UPDATED", "id": "0f3c1a55-6b1e-4c1e-9a0e-2b1c4d5e6f70", "integration_id": "int-1",
    "relay_state": "order-42", "workflow_session_id": "wf-9",
    "result": {"errors": [], "status": "Finished", "eventSpecificData": {"attempt": 2, "passed": True}},
}
SESSION_UPDATED_XML = b"""<Webhook><event>SESSION_UPDATED</event><id>0f3c1a55-6b1e-4c1e-9a0e-2b1c4d5e6f70</id>
<integration_id>int-1</integration_id><relay_state>order-42</relay_state><workflow_session_id>wf-9</workflow_session_id>
<result><errors/><status>Finished</status><eventSpecificData><attempt>2</attempt><passed>true</passed></eventSpecificData>
</result></Webhook>"""


def legacy(body: bytes, secret: str = SECRET) -> str:
    """The docs' C# sample: Convert.ToBase64String(new HMACSHA256(UTF8(secret)).ComputeHash(body))."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode()


def v1(body: bytes, t: int, secret: str = SECRET) -> str:
    return hmac.new(secret.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def request(body: bytes, signature: str | None, content_type: str = "application/json") -> InboundRequest:
    headers = {"content-type": content_type}
    if signature is not None:
        headers["x-zignsec-hmac-sha256"] = signature
    return InboundRequest(provider="zignsec", method="POST", path="/webhooks/zignsec", query="", headers=headers,
                          body=body, received_at=datetime(2026, 1, 1, 0, 0, 3, tzinfo=timezone.utc))


@pytest.fixture
def verifier():
    return ZignSecVerifier(ZignSecOptions(), [SECRET.encode(), OLD_SECRET.encode()], clock=lambda: NOW)


# --- accepted --------------------------------------------------------------------------------------------

def test_openssl_constants(verifier):
    [event] = verifier.verify(request(OPENSSL_BODY, OPENSSL_BASE64)).events
    assert (event.name, event.id, event.subject, event.time) == (
        "sbid-another", "61d300c2-cff8-4dc1-9abc-6d59f8876d32", "61d300c2-cff8-4dc1-9abc-6d59f8876d32", None)
    [event] = verifier.verify(request(OPENSSL_BODY, f"t={NOW},v1={OPENSSL_TIMESTAMPED_HEX}")).events
    assert event.time == datetime.fromtimestamp(NOW, timezone.utc)


@pytest.mark.parametrize("encode", [legacy, lambda body: base64.b64decode(legacy(body)).hex(),
                                    lambda body: legacy(body).rstrip("=")],
                         ids=["base64", "hex", "unpadded"])
def test_legacy_encodings(verifier, encode):
    body = json.dumps(BANKID).encode()
    [event] = verifier.verify(request(body, encode(body))).events
    assert event.data == BANKID
    assert event.subject == BANKID["id"]  # the session id, never the personal number


def test_rotated_secret_still_verifies(verifier):
    body = json.dumps(BANKID).encode()
    assert verifier.verify(request(body, legacy(body, OLD_SECRET))).events
    assert verifier.verify(request(body, f"t={NOW},v1={v1(body, NOW, OLD_SECRET)}")).events


@pytest.mark.parametrize("template", [
    "t={t},v1={good}",
    "v1={good},t={t}",
    "t={t}, v1={bad}, v1={good}",
    "t={t},v2={bad},v1={good},v0=whatever",
])
def test_timestamped_forms(verifier, template):
    body = json.dumps(SESSION_UPDATED).encode()
    header = template.format(t=NOW - 10, good=v1(body, NOW - 10), bad="00" * 32)
    [event] = verifier.verify(request(body, header)).events
    assert event.name == "session_updated"
    assert event.id == f"{SESSION_UPDATED['id']}:Finished"
    assert event.time == datetime.fromtimestamp(NOW - 10, timezone.utc)


@pytest.mark.parametrize("data,name,event_id", [
    ({"event": "session_created", "id": "s1", "result": {"status": "Pending"}}, "session_created", "s1:Pending"),
    ({"event": "Workflow_Session_Created", "id": "s1"}, "workflow_session_created", "s1"),
    ({"event": "WORKFLOW_SESSION_STATE_UPDATED", "id": "s1", "result": {"status": 3}},
     "workflow_session_state_updated", "s1:3"),
    ({"id": "sms-1", "method": "sms", "status": "Delivered"}, "sms", "sms-1:Delivered"),
    ({"Id": "sms-1", "State": "Sent"}, "result", "sms-1:Sent"),
    ({"id": 12345, "status": True}, "result", "12345:true"),
    ({"no": "id"}, "result", None),
    ([1, 2, 3], "result", None),
])
def test_event_name_and_id(verifier, data, name, event_id):
    body = json.dumps(data).encode()
    [event] = verifier.verify(request(body, legacy(body))).events
    assert (event.name, event.id) == (name, event_id)


def test_status_callbacks_for_one_id_get_distinct_ids(verifier):
    ids = set()
    for status in ("Sent", "Delivered"):
        body = json.dumps({"id": "sms-1", "status": status}).encode()
        ids.add(verifier.verify(request(body, legacy(body))).events[0].id)
    assert ids == {"sms-1:Sent", "sms-1:Delivered"}


def _stringified(value):
    """JSON data as the XML form carries it: every scalar a string (null stays null)."""
    if isinstance(value, dict):
        return {key: _stringified(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stringified(item) for item in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if value is None else str(value)


@pytest.mark.parametrize("data,xml,content_type", [
    (BANKID, BANKID_XML, "application/xml"),
    (SESSION_UPDATED, SESSION_UPDATED_XML, "text/xml; charset=utf-8"),
])
def test_xml_and_json_forms_give_the_same_event(verifier, data, xml, content_type):
    json_body = json.dumps(data).encode()
    from_json = verifier.verify(request(json_body, legacy(json_body))).events[0]
    from_xml = verifier.verify(request(xml, legacy(xml), content_type)).events[0]
    as_json, as_xml = (normalize(request(b"", None), "zignsec", event) for event in (from_json, from_xml))
    assert (as_xml.type, as_xml.id, as_xml.subject, as_xml.time) == (
        as_json.type, as_json.id, as_json.subject, as_json.time)
    # data: XML scalars are strings; an empty list (<errors/>) is an empty string
    expected = _stringified(data)
    if "result" in expected:
        expected["result"]["errors"] = ""
    assert from_xml.data == expected


def test_xml_repeated_elements_become_a_list_and_attributes_are_dropped(verifier):
    xml = b'<r><id a="1">x</id><item>1</item><item><n>2</n></item><item>3</item></r>'
    [event] = verifier.verify(request(xml, legacy(xml), "application/xml")).events
    assert event.data == {"id": "x", "item": ["1", {"n": "2"}, "3"]}


def test_xml_without_content_type_is_sniffed(verifier):
    [event] = verifier.verify(request(BANKID_XML, legacy(BANKID_XML), "")).events
    assert event.name == "sbid-another"


# --- rejected --------------------------------------------------------------------------------------------

def test_wrong_secret(verifier):
    body = json.dumps(BANKID).encode()
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier.verify(request(body, legacy(body, "not-the-secret")))
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier.verify(request(body, f"t={NOW},v1={v1(body, NOW, 'not-the-secret')}"))


def test_secret_is_utf8_not_latin1(verifier):
    body = json.dumps(BANKID).encode()
    latin1 = base64.b64encode(hmac.new(SECRET.encode("latin-1"), body, hashlib.sha256).digest()).decode()
    with pytest.raises(VerificationFailed):
        verifier.verify(request(body, latin1))


def test_tampered_body(verifier):
    body = json.dumps(BANKID).encode()
    tampered = body.replace(b"LARS", b"LASSE")
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier.verify(request(tampered, legacy(body)))
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier.verify(request(tampered, f"t={NOW},v1={v1(body, NOW)}"))


def test_timestamp_is_part_of_the_signed_string(verifier):
    body = json.dumps(BANKID).encode()
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier.verify(request(body, f"t={NOW - 1},v1={v1(body, NOW)}"))


def test_missing_header(verifier):
    with pytest.raises(VerificationFailed, match="missing"):
        verifier.verify(request(b"{}", None))


@pytest.mark.parametrize("offset,reason", [(-301, "old"), (301, "in the future")])
def test_stale_and_future_timestamps(verifier, offset, reason):
    body = json.dumps(BANKID).encode()
    with pytest.raises(VerificationFailed, match=reason):
        verifier.verify(request(body, f"t={NOW + offset},v1={v1(body, NOW + offset)}"))


def test_tolerance_is_configurable():
    body = json.dumps(BANKID).encode()
    wide = ZignSecVerifier(ZignSecOptions(tolerance_seconds=3600), [SECRET.encode()], clock=lambda: NOW)
    assert wide.verify(request(body, f"t={NOW - 1800},v1={v1(body, NOW - 1800)}")).events


def test_two_timestamps_are_ambiguous(verifier):
    body = json.dumps(BANKID).encode()
    with pytest.raises(VerificationFailed, match="exactly one t="):
        verifier.verify(request(body, f"t={NOW},t={NOW + 9999},v1={v1(body, NOW)}"))


def test_only_a_v2_signature_is_ignored(verifier):
    body = json.dumps(BANKID).encode()
    with pytest.raises(VerificationFailed, match="no v1"):
        verifier.verify(request(body, f"t={NOW},v2={v1(body, NOW)}"))


@pytest.mark.parametrize("header", [
    "", "garbage!", "sha256=abc", "t=,v1=", f"t={NOW}", f"t=now,v1={'00' * 32}", f"t={NOW},t={NOW},v1={'00' * 32}",
    f"t={NOW},v1=not-hex", "\x00\xff\u202e", "=" * 5000, ",,,,", "v1=" + "00" * 32,
])
def test_garbage_header(verifier, header):
    with pytest.raises(VerificationFailed):
        verifier.verify(request(b"{}", header))


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00\x01", b"[" * 100_000, b"", b'{"id": NaN}'])
def test_malformed_json(verifier, body):
    with pytest.raises(MalformedPayload, match="JSON|nested"):
        verifier.verify(request(body, legacy(body)))


@pytest.mark.parametrize("body", [b"<r><unclosed></r>", b"<r>\xff\xfe</r>", b"not xml", b"",
                                  b"<a>" * 100_000 + b"</a>" * 100_000])
def test_malformed_xml(verifier, body):
    with pytest.raises(MalformedPayload):
        verifier.verify(request(body, legacy(body), "application/xml"))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<r><id>&lol9;</id></r>"""


def test_xml_bomb_is_refused(verifier):
    with pytest.raises(MalformedPayload, match="DTD"):
        verifier.verify(request(BILLION_LAUGHS, legacy(BILLION_LAUGHS), "application/xml"))


def test_external_entity_is_never_read(verifier, tmp_path, monkeypatch):
    target = tmp_path / "passwd"
    target.write_text("root:SECRET-MARKER:0:0")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda file, *a, **k: opened.append(file) or real_open(file, *a, **k))
    for system_id in ("file:///etc/passwd", target.as_uri()):
        body = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "{system_id}">]>'
                f"<r><id>&x;</id></r>").encode()
        with pytest.raises(MalformedPayload, match="DTD") as raised:
            verifier.verify(request(body, legacy(body), "text/xml"))
        assert "SECRET-MARKER" not in raised.value.detail
    assert opened == []


def test_a_dtd_without_entities_is_refused_too(verifier):
    body = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r><id>1</id></r>'
    with pytest.raises(MalformedPayload, match="DTD"):
        verifier.verify(request(body, legacy(body), "application/xml"))


def test_signature_is_checked_before_the_body_is_parsed(verifier):
    with pytest.raises(VerificationFailed):
        verifier.verify(request(BILLION_LAUGHS, legacy(b"other"), "application/xml"))


def test_needs_a_secret():
    with pytest.raises(ValueError):
        ZignSecVerifier(ZignSecOptions(), [])


# --- end to end: the shipped config/providers/zignsec.yaml, a real listener and broker -------------------

def test_e2e_callbacks_reach_kafka_as_cloudevents(webhookbus_listener, kafka_broker, shipped_config):
    import time

    from webhookbus.testing import read_topic, to_cloudevent

    settings, topics = shipped_config("zignsec", [SECRET])  # non-ASCII: UTF-8 all the way from the YAML
    settings["providers"]["zignsec"]["dedup_window"] = 0  # the JSON and XML forms below are one callback (one id)
    listener = webhookbus_listener(settings)
    now = int(time.time())
    session = json.dumps(SESSION_UPDATED).encode()
    bankid = json.dumps(BANKID).encode()
    posts = [
        (session, {"Content-Type": "application/json", "X-ZignSec-Hmac-SHA256": f"t={now},v1={v1(session, now)}"}),
        (bankid, {"Content-Type": "application/json", "X-ZignSec-Hmac-SHA256": legacy(bankid)}),
        (BANKID_XML, {"Content-Type": "application/xml", "X-ZignSec-Hmac-SHA256": legacy(BANKID_XML)}),
    ]
    for body, headers in posts:
        reply = listener.post("/webhooks/zignsec", body, headers)
        assert (reply.status, reply.body) == (200, b""), reply.body

    [record] = read_topic(kafka_broker.bootstrap, topics["zignsec-sessions"], 1)
    event = to_cloudevent(record)
    assert (event.get_type(), event.get_source()) == ("zignsec.session_updated", "zignsec")
    assert event.get_id() == f"{SESSION_UPDATED['id']}:Finished"
    assert event.get_subject() == SESSION_UPDATED["id"] == record.key.decode()
    assert event.get_time() == datetime.fromtimestamp(now, timezone.utc)
    assert event.get_data() == SESSION_UPDATED

    from_json, from_xml = (to_cloudevent(r) for r in read_topic(kafka_broker.bootstrap, topics["zignsec-results"], 2))
    for event in (from_json, from_xml):
        assert (event.get_type(), event.get_id(), event.get_subject()) == (
            "zignsec.sbid-another", BANKID["id"], BANKID["id"])
    assert from_json.get_data() == BANKID
    assert from_xml.get_data()["identity"]["Age"] == "107"
    assert read_topic(kafka_broker.bootstrap, topics["unrouted"], 1, timeout=1) == []


def test_e2e_refusals_are_json_and_publish_nothing(webhookbus_listener, kafka_broker, shipped_config):
    import time

    from webhookbus.testing import read_topic

    settings, topics = shipped_config("zignsec", [SECRET])
    listener = webhookbus_listener(settings)
    body = json.dumps(BANKID).encode()
    now = int(time.time())
    xxe = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r><id>&x;</id></r>'
    cases = {
        "wrong secret": (body, legacy(body, "not-the-secret"), "application/json", 401),
        "tampered": (body.replace(b"LARS", b"LASSE"), legacy(body), "application/json", 401),
        "no header": (body, None, "application/json", 401),
        "garbage header": (body, "t=" + "9" * 400 + ",v1=zz", "application/json", 401),
        "stale t": (body, f"t={now - 3600},v1={v1(body, now - 3600)}", "application/json", 401),
        "v2 only": (body, f"t={now},v2={v1(body, now)}", "application/json", 401),
        "malformed JSON": (b"{not json", legacy(b"{not json"), "application/json", 400),
        "malformed XML": (b"<r><id>", legacy(b"<r><id>"), "application/xml", 400),
        "XML bomb": (BILLION_LAUGHS, legacy(BILLION_LAUGHS), "application/xml", 400),
        "XXE": (xxe, legacy(xxe), "text/xml", 400),
    }
    for name, (sent, signature, content_type, status) in cases.items():
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers["X-ZignSec-Hmac-SHA256"] = signature
        reply = listener.post("/webhooks/zignsec", sent, headers)
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        error = "verification_failed" if status == 401 else "malformed_payload"
        assert reply.json()["error"] == error and reply.json()["detail"], name
        assert SECRET.encode() not in reply.body and b"root:" not in reply.body
    for topic in topics.values():
        assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1) == []


def test_shipped_config_passes_check(monkeypatch, capsys):
    from pathlib import Path

    from webhookbus.cli import main

    monkeypatch.setenv("ZIGNSEC_WEBHOOK_SECRET", "s3cret-value")
    assert main(["check", "--config", str(Path(__file__).parents[2] / "config/providers/zignsec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "zignsec" in out and "s3cret-value" not in out
