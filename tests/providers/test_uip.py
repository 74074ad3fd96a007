"""UIP verifier: Node-generated vectors (docs' Express sample, raw body, v2), then refusals.

vectors/uip.json comes from vectors/uip_sign.js; with ``node`` on PATH it is re-run here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhookbus.cli import main
from webhookbus.plugin import MalformedPayload, VerificationFailed
from webhookbus.testing import read_topic, to_cloudevent
from webhookbus.verifiers.uip import UipOptions, UipVerifier

VECTORS = Path(__file__).parent / "vectors"
CASES = json.loads((VECTORS / "uip.json").read_text(encoding="utf-8"))
NODE = shutil.which("node")
SECRET = b"uip-test-secret"
T = 1767225600
IDENTIFY = {"event": "identify", "data": {"uip_id": "user_1", "audit_id": "audit_1", "session_id": "sess_1"}}
V2_BODY = json.dumps({"session_id": "sess_9", "data": {"step": "liveness"}})


def hex_hmac(message: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def verifier(*secrets: bytes, **options) -> UipVerifier:
    return UipVerifier(UipOptions(**options), list(secrets or [SECRET]))


def v1_request(make_request, body: bytes | str, signature: str | None = None, **headers):
    body = body.encode() if isinstance(body, str) else body
    sig = {"X-UIP-Signature": hex_hmac(body) if signature is None else signature}
    return make_request("uip", "POST", "/webhooks/uip", body, {"Content-Type": "application/json"} | sig | headers)


def v2_request(make_request, body: str = V2_BODY, timestamp: str = str(T), received: float = T + 5, signature=None, **headers):
    sig = signature if signature is not None else hex_hmac(f"{timestamp}.{body}".encode())
    all_headers = {"Content-Type": "application/json", "X-UIP-Signature": sig, "X-UIP-Timestamp": timestamp,
                   "X-UIP-Event": "session.completed", "X-UIP-Delivery-Id": "dlv_1"} | headers
    return make_request("uip", "POST", "/webhooks/uip", body, all_headers, received_at=at(received))


def vector_request(make_request, case, **changes):
    fields = {"body": case["body"], "headers": case["headers"], "received_at": case["received_at"]} | changes
    return make_request("uip", "POST", "/webhooks/uip", fields["body"], fields["headers"],
                        received_at=at(fields["received_at"]))


def check_vector(make_request, case) -> None:
    check = verifier(case["secret"].encode()).verify
    request = vector_request(make_request, case)
    if case["expect"] == "malformed":
        with pytest.raises(MalformedPayload):
            check(request)
        return
    if case["expect"] == "rejected":
        with pytest.raises(VerificationFailed, match="does not match"):
            check(request)
        return
    (event,) = check(request).events
    expected = case["expected"]
    assert (event.name, event.id, event.subject) == (expected["event"], expected["id"], expected["subject"])
    assert event.time == (at(expected["time"]) if expected.get("time") else None)
    assert event.data == json.loads(case["body"])


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_node_vectors(make_request, case):
    check_vector(make_request, case)


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
def test_fresh_node_vectors_match_and_verify(make_request):
    fresh = json.loads(subprocess.run([NODE, str(VECTORS / "uip_sign.js")], capture_output=True,
                                      check=True, timeout=60).stdout)
    assert fresh == CASES, "vectors/uip.json is stale: regenerate it with node uip_sign.js"
    for case in fresh:
        check_vector(make_request, case)


def test_express_form_needs_the_compact_option(make_request):
    (case,) = [case for case in CASES if case["name"] == "v1 pretty body signed the Express way"]
    with pytest.raises(VerificationFailed):
        UipVerifier(UipOptions(accept_compact_json=False), [case["secret"].encode()]).verify(
            vector_request(make_request, case))


def test_rotation_old_secret_still_verifies(make_request, caplog):
    caplog.set_level(logging.DEBUG, logger="webhookbus.verifiers.uip")
    body = json.dumps(IDENTIFY)
    old = b"old-secret"
    (event,) = verifier(b"new-secret", old).verify(v1_request(make_request, body, hex_hmac(body.encode(), old))).events
    assert event.id == "audit_1"
    assert [r.secret_index for r in caplog.records if r.name == "webhookbus.verifiers.uip"] == [1]
    v2 = v2_request(make_request, signature=hex_hmac(f"{T}.{V2_BODY}".encode(), old))
    assert verifier(b"new-secret", old).verify(v2).events[0].subject == "sess_9"


def test_v1_normalisation(make_request):
    (event,) = verifier().verify(v1_request(make_request, json.dumps(IDENTIFY))).events
    assert (event.name, event.id, event.subject, event.time, event.data) == (
        "identify", "audit_1", "user_1", None, IDENTIFY)


def signed_id(name: str, body: str) -> str:
    """What the v2 id is without an audit_id: SHA-256 of the event name, a newline and the body."""
    return hashlib.sha256(f"{name}\n{body}".encode()).hexdigest()


def test_v2_normalisation(make_request):
    (event,) = verifier().verify(v2_request(make_request)).events
    assert (event.name, event.id, event.subject, event.time, event.data) == (
        "session.completed", signed_id("session.completed", V2_BODY), "sess_9", at(T), json.loads(V2_BODY))
    assert event.extensions == {"uipdeliveryid": "dlv_1"}, "kept for correlation, never the id"


def test_v2_a_replay_with_another_delivery_id_keeps_the_event_id(make_request):
    """X-UIP-Delivery-Id is not signed: a replay inside the window must still be a duplicate."""
    first = verifier().verify(v2_request(make_request)).events[0]
    replay = verifier().verify(v2_request(make_request, **{"X-UIP-Delivery-Id": "dlv_forged"})).events[0]
    assert replay.id == first.id and replay.extensions == {"uipdeliveryid": "dlv_forged"}


def test_wrong_secret(make_request):
    body = json.dumps(IDENTIFY)
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(v1_request(make_request, body, hex_hmac(body.encode(), b"wrong")))
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(v2_request(make_request, signature=hex_hmac(f"{T}.{V2_BODY}".encode(), b"wrong")))


@pytest.mark.parametrize("index", [0, 10, 25, -2])
def test_tampered_body_byte(make_request, index):
    body = bytearray(json.dumps(IDENTIFY, separators=(",", ":")).encode())
    signature = hex_hmac(bytes(body))
    body[index] ^= 0x01
    with pytest.raises(VerificationFailed):
        verifier().verify(v1_request(make_request, bytes(body), signature))


def test_tampered_value_is_not_rescued_by_the_compact_form(make_request):
    signed = json.dumps(IDENTIFY)
    tampered = signed.replace("user_1", "user_2")
    with pytest.raises(VerificationFailed):
        verifier().verify(v1_request(make_request, tampered, hex_hmac(signed.encode())))


def test_v2_tampered_body_or_timestamp(make_request):
    body = V2_BODY
    signature = hex_hmac(f"{T}.{body}".encode())
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(v2_request(make_request, body.replace("sess_9", "sess_8"), signature=signature))
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(v2_request(make_request, body, timestamp=str(T + 1), signature=signature))
    # a v1 signature (raw body) does not pass as v2 once a timestamp header is added
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(v2_request(make_request, body, signature=hex_hmac(body.encode())))


def test_missing_header(make_request):
    request = make_request("uip", "POST", "/webhooks/uip", json.dumps(IDENTIFY), {"Content-Type": "application/json"})
    with pytest.raises(VerificationFailed, match="missing X-UIP-Signature"):
        verifier().verify(request)


@pytest.mark.parametrize("garbage", ["", "zz" * 32, "sha256=" + "0" * 64, "f" * 10240, "\x00\xff\x80\x7fbinary", "é" * 64])
def test_garbage_header(make_request, garbage):
    body = json.dumps(IDENTIFY)
    with pytest.raises(VerificationFailed):
        verifier().verify(v1_request(make_request, body, garbage))
    with pytest.raises(VerificationFailed):
        verifier().verify(v2_request(make_request, signature=garbage))


@pytest.mark.parametrize(("received", "reason"), [(T + 301, "old"), (T - 301, "in the future")])
def test_v2_stale_and_future_timestamps(make_request, received, reason):
    request = v2_request(make_request, received=received)
    with pytest.raises(VerificationFailed, match=f"timestamp is 301 s {reason}"):
        verifier().verify(request)
    assert verifier(tolerance_seconds=400).verify(request).events[0].time == at(T)


@pytest.mark.parametrize("timestamp", ["", "abc", "1767225600.5", "9" * 400, "١٧٦٧٢٢٥٦٠٠", "1_767_225_600", "\x00\xff"])
def test_v2_garbage_timestamp_is_401_not_a_crash(make_request, timestamp):
    with pytest.raises(VerificationFailed, match="timestamp"):
        verifier().verify(v2_request(make_request, timestamp=timestamp))


def test_v2_unsigned_event_header_must_agree_with_the_signed_body(make_request):
    body = json.dumps({"event": "session.failed", "session_id": "s"})
    with pytest.raises(VerificationFailed, match="X-UIP-Event does not match"):
        verifier().verify(v2_request(make_request, body, **{"X-UIP-Event": "session.completed"}))
    with pytest.raises(MalformedPayload, match="not an event name"):
        verifier().verify(v2_request(make_request, json.dumps({"session_id": "s"}), **{"X-UIP-Event": "a b\x00"}))


@pytest.mark.parametrize("body", ['{"event": "identify",', "[1, 2]", '"identify"', '{"event": NaN}',
                                  "[" * 100_000, b"\xff\xfe\x00", '{"data": {}}', '{"event": 7}'])
def test_authentic_but_unreadable_body_is_400(make_request, body):
    with pytest.raises(MalformedPayload) as caught:
        verifier().verify(v1_request(make_request, body))
    assert caught.value.status == 400


def test_unparsable_body_with_bad_signature_is_401_not_400(make_request):
    with pytest.raises(VerificationFailed):
        verifier().verify(v1_request(make_request, "{not json", "0" * 64))


def test_options():
    with pytest.raises(ValidationError):
        UipOptions(tolerance=10)
    with pytest.raises(ValidationError):
        UipOptions(tolerance_seconds=0)
    with pytest.raises(ValueError):
        UipVerifier(UipOptions(), [])


# --- end to end: the shipped config/providers/uip.yaml, a real listener and broker --------------------

def test_e2e_v1_and_v2_reach_kafka_as_cloudevents(webhookbus_listener, kafka_broker, shipped_config):
    (case,) = [case for case in CASES if case["name"] == "v1 pretty body signed the Express way"]
    settings, topics = shipped_config("uip", [case["secret"]])
    listener = webhookbus_listener(settings)
    reply = listener.post("/webhooks/uip", case["body"].encode(), case["headers"])
    assert (reply.status, reply.body) == (200, b""), reply.body

    now = str(int(time.time()))
    body = json.dumps({"event": "session.completed", "client_reference_id": "order-9", "session_id": "sess_x"})
    headers = {"Content-Type": "application/json", "X-UIP-Timestamp": now, "X-UIP-Event": "session.completed",
               "X-UIP-Delivery-Id": "dlv_e2e", "X-UIP-Signature": hex_hmac(f"{now}.{body}".encode(),
                                                                           case["secret"].encode())}
    assert listener.post("/webhooks/uip", body.encode(), headers).status == 200

    [identify] = read_topic(kafka_broker.bootstrap, topics["uip-identify"], 1)
    event = to_cloudevent(identify)
    assert (event.get_type(), event.get_source(), event.get_id(), event.get_subject()) == (
        "uip.identify", "uip", "audit_9z8y7x6w5v4u", "user_abc123def456")
    assert event.get_data() == json.loads(case["body"])
    assert identify.key == b"user_abc123def456"

    [session] = read_topic(kafka_broker.bootstrap, topics["uip-other"], 1)
    event = to_cloudevent(session)
    assert (event.get_type(), event.get_id(), event.get_subject()) == (
        "uip.session.completed", signed_id("session.completed", body), "order-9")
    assert event.get_extension("uipdeliveryid") == "dlv_e2e"
    assert event.get_time() == at(int(now))
    assert event.get_data() == json.loads(body)


def test_e2e_refusals_are_json_and_publish_nothing(webhookbus_listener, kafka_broker, shipped_config):
    settings, topics = shipped_config("uip", [SECRET.decode()])
    listener = webhookbus_listener(settings)
    body = json.dumps(IDENTIFY).encode()
    headers = {"Content-Type": "application/json", "X-UIP-Signature": hex_hmac(body)}
    stale = str(int(time.time()) - 3600)
    v2_headers = {"Content-Type": "application/json", "X-UIP-Timestamp": stale, "X-UIP-Event": "session.completed",
                  "X-UIP-Signature": hex_hmac(f"{stale}.{V2_BODY}".encode())}
    not_json = b'{"event": "identify",'

    cases = {
        "wrong secret": (listener.post("/webhooks/uip", body, headers | {"X-UIP-Signature": hex_hmac(body, b"x")}),
                         401, "verification_failed"),
        "tampered": (listener.post("/webhooks/uip", body.replace(b"user_1", b"user_2"), headers), 401,
                     "verification_failed"),
        "no header": (listener.post("/webhooks/uip", body, {"Content-Type": "application/json"}), 401,
                      "verification_failed"),
        "garbage header": (listener.post("/webhooks/uip", body, headers | {"X-UIP-Signature": "\xff" * 10240}), 401,
                           "verification_failed"),
        "stale v2": (listener.post("/webhooks/uip", V2_BODY.encode(), v2_headers), 401, "verification_failed"),
        "signed but not JSON": (listener.post("/webhooks/uip", not_json, headers | {"X-UIP-Signature": hex_hmac(not_json)}),
                                400, "malformed_payload"),
    }
    for name, (reply, status, error) in cases.items():
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"] == error and reply.json()["detail"], name
        assert SECRET not in reply.body
    assert "s old" in cases["stale v2"][0].json()["detail"]
    for topic in topics.values():
        assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1) == []


def test_shipped_config_passes_check(monkeypatch, capsys):
    monkeypatch.setenv("UIP_WEBHOOK_SECRET", "s3cret-value")
    assert main(["check", "--config", str(Path(__file__).parents[2] / "config/providers/uip.yaml")]) == 0
    assert "s3cret-value" not in capsys.readouterr().out
