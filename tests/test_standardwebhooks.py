"""Standard Webhooks verifier, checked against the official ``standardwebhooks`` package as signer."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from webhookbus.plugin import InboundRequest, MalformedPayload, VerificationFailed
from webhookbus.signing import matched_secret_index
from webhookbus.verifiers.standardwebhooks import StandardWebhooksOptions, StandardWebhooksVerifier

OLD = "whsec_" + base64.b64encode(b"old-secret-of-thirty-two-bytes!!").decode()
NEW = "whsec_" + base64.b64encode(b"\x00\xffnew secret, binary bytes\x80\x81").decode()
BODY = json.dumps({"type": "invoice.paid", "timestamp": "2026-01-02T03:04:05.678Z",
                   "data": {"customer": {"id": "cus_9"}, "amount": 1200}}).encode()


def signed_headers(secret: str, body: bytes = BODY, msg_id: str = "msg_2abc", at: datetime | None = None,
                   prefix: str = "webhook-") -> dict[str, str]:
    """What a Standard Webhooks sender puts on the wire, made by the official library."""
    at = at or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(int(at.timestamp())), f"{prefix}signature": signature}


def inbound(headers: dict[str, str], body: bytes = BODY) -> InboundRequest:
    return InboundRequest(provider="vendor", method="POST", path="/hooks/vendor", query="",
                          headers={k.lower(): v for k, v in headers.items()}, body=body,
                          received_at=datetime.now(timezone.utc))


def verifier(*secrets: str, **options: object) -> StandardWebhooksVerifier:
    return StandardWebhooksVerifier(StandardWebhooksOptions(**options), [s.encode() for s in secrets])


def test_accepts_what_the_official_library_signs_and_agrees_with_its_verify():
    headers = signed_headers(NEW)
    accepted = verifier(NEW, subject_field="data.customer.id").verify(inbound(headers))
    (event,) = accepted.events
    assert event.name == "invoice.paid"
    assert event.id == "msg_2abc"  # signed, repeated on retries: the dedup key
    assert event.subject == "cus_9"
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert event.data["data"]["amount"] == 1200
    assert Webhook(NEW).verify(BODY, headers) == event.data


def test_secret_without_prefix_is_the_same_key():
    bare = NEW.removeprefix("whsec_")
    assert verifier(bare).verify(inbound(signed_headers(NEW))).events[0].id == "msg_2abc"


def test_rotation_any_configured_secret_and_any_listed_signature():
    both = verifier(NEW, OLD)
    both.verify(inbound(signed_headers(OLD)))
    assert matched_secret_index.get() == 1  # what the request's log line reports

    # The sender mid-rotation lists a signature per secret; an unknown version is skipped.
    headers = signed_headers(OLD)
    new_signature = signed_headers(NEW)["webhook-signature"]
    headers["webhook-signature"] = f"v1a,AAAA {headers['webhook-signature']} {new_signature}"
    verifier(NEW).verify(inbound(headers))


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "secret", "version"])
def test_rejects_any_change_to_what_is_signed(change):
    now = datetime.now(timezone.utc)
    headers = signed_headers(NEW if change != "secret" else OLD, at=now)
    body = BODY
    if change == "body":
        body = BODY.replace(b"1200", b"1201")
    elif change == "id":
        headers["webhook-id"] = "msg_other"
    elif change == "timestamp":
        headers["webhook-timestamp"] = str(int(now.timestamp()) - 1)
    elif change == "version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(VerificationFailed):
        verifier(NEW).verify(inbound(headers, body))


@pytest.mark.parametrize(("offset", "words"), [(-301, "old"), (301, "in the future")])
def test_timestamp_outside_tolerance_is_refused_even_when_signed(offset, words):
    headers = signed_headers(NEW, at=datetime.now(timezone.utc) + timedelta(seconds=offset))
    with pytest.raises(VerificationFailed, match=words):
        verifier(NEW).verify(inbound(headers))
    verifier(NEW, tolerance_seconds=600).verify(inbound(headers))


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_header_is_required(header):
    headers = signed_headers(NEW)
    del headers[header]
    with pytest.raises(VerificationFailed, match=header):
        verifier(NEW).verify(inbound(headers))


def test_svix_header_names_by_option():
    headers = signed_headers(NEW, prefix="svix-")
    with pytest.raises(VerificationFailed, match="missing webhook-id"):
        verifier(NEW).verify(inbound(headers))
    assert verifier(NEW, header_prefix="svix-").verify(inbound(headers)).events[0].name == "invoice.paid"


def test_signed_body_that_is_not_json_is_malformed():
    body = b"<not json>"
    with pytest.raises(MalformedPayload):
        verifier(NEW).verify(inbound(signed_headers(NEW, body=body), body))


def test_event_name_falls_back_and_payload_time_is_optional():
    body = json.dumps({"data": {}}).encode()
    (event,) = verifier(NEW).verify(inbound(signed_headers(NEW, body=body), body)).events
    assert (event.name, event.time) == ("received", None)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", "plain text secret"])
def test_a_secret_that_is_not_base64_is_a_config_error_that_does_not_echo_it(secret):
    with pytest.raises(ValueError, match="secret #2") as caught:
        verifier(NEW, secret)
    assert "base64!" not in str(caught.value) and "text" not in str(caught.value)
