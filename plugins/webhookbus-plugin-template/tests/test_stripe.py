"""Tests for the Stripe verifier: the webhookbus contract suite, the scheme's own rules, and one
end-to-end run through a real listener and broker (fixtures from webhookbus's pytest plugin)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from webhookbus.plugin import VerificationFailed
from webhookbus.signing import matched_secret_index
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SignedRequest, signers_for
from webhookbus_plugin_template import StripeOptions, StripeVerifier
from webhookbus_plugin_template.sample import sign, signature_header

SECRET, OLD_SECRET = b"whsec_template_test_secret", b"whsec_template_old_secret"
PATH = "/webhooks/stripe"

# An independent vector, made without Python:
#   printf '%s' "1700000000.$BODY" | openssl dgst -sha256 -hmac whsec_template_test_secret
VECTOR_BODY = (b'{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"customer.created",'
               b'"created":1700000000,"data":{"object":{"id":"cus_9","object":"customer"}}}')
VECTOR_HEADER = "t=1700000000,v1=5e81e12823aba239b9d3c71472ace22f5ec8a3e7e6aa63814cbc078d5c22f655"
VECTOR_TIME = datetime.fromtimestamp(1700000000, timezone.utc)


def verifier(*secrets: bytes, **options: object) -> StripeVerifier:
    return StripeVerifier(StripeOptions(**options), list(secrets or [SECRET]))


def request(header: str, body: bytes = VECTOR_BODY, received_at: datetime = VECTOR_TIME):
    headers = {"Content-Type": "application/json", "Stripe-Signature": header}
    return SignedRequest("POST", PATH, headers, body).inbound("stripe", received_at=received_at)


class TestStripeContract(VerifierContract):
    """Everything webhookbus requires of any verifier: see webhookbus.testing.contract."""

    @pytest.fixture
    def contract_case(self) -> ContractCase:
        options = StripeOptions()
        return ContractCase(
            verifier=StripeVerifier(options, [SECRET]),
            sign=lambda: sign(options, SECRET, PATH),
            forge=lambda: sign(options, b"whsec_someone_else", PATH),
            sign_payload=lambda data: sign(options, SECRET, PATH, data),  # JSON values in every field
            secrets=[SECRET],
            authenticates=("body", "headers"),  # what the signature covers; see docs/plugins.md
            provider="stripe",
        )


def test_independent_vector():
    (event,) = verifier().verify(request(VECTOR_HEADER)).events
    assert (event.name, event.id, event.time) == ("customer.created", "evt_1NG8Du2eZvKYlo2CUI79vXWy", VECTOR_TIME)
    assert event.subject is None  # a customer object has no data.object.customer
    assert verifier(subject_field="data.object.id").verify(request(VECTOR_HEADER)).events[0].subject == "cus_9"
    assert event.data_json == VECTOR_BODY  # records carry these bytes, not a re-serialisation of event.data


def test_one_v1_per_secret_while_rolling_and_the_matching_index_is_reported():
    rolled = signature_header([OLD_SECRET, SECRET], 1700000000, VECTOR_BODY)
    verifier(SECRET).verify(request(rolled))  # Stripe lists both; we hold only the new one
    assert matched_secret_index.get() == 0
    verifier(SECRET, OLD_SECRET).verify(request(signature_header([OLD_SECRET], 1700000000, VECTOR_BODY)))
    assert matched_secret_index.get() == 1  # the request's log line says the old secret is still in use


@pytest.mark.parametrize(("seconds", "words"), [(301, "old"), (-301, "in the future")])
def test_a_replay_outside_the_tolerance_is_refused(seconds, words):
    later = VECTOR_TIME + timedelta(seconds=seconds)
    with pytest.raises(VerificationFailed, match=words):
        verifier().verify(request(VECTOR_HEADER, received_at=later))
    verifier(tolerance_seconds=600).verify(request(VECTOR_HEADER, received_at=later))


@pytest.mark.parametrize("header", [
    VECTOR_HEADER.replace("v1=", "v0="),                       # test-mode v0 is not a v1
    VECTOR_HEADER.replace("t=1700000000", "t=1700000001"),    # the timestamp is signed
    VECTOR_HEADER + ",t=1700000000",                          # two timestamps: which one was signed?
    "t=1700000000",
])
def test_refused_headers(header):
    with pytest.raises(VerificationFailed):
        verifier().verify(request(header))


def test_the_signer_is_registered_for_webhookbus_sign():
    assert signers_for("stripe") == {"default": sign}


def test_end_to_end_through_a_listener(webhookbus_listener, topic_name, read_events):
    topic = topic_name("stripe")
    listener = webhookbus_listener({
        "providers": {"stripe": {"verifier": "stripe", "path": PATH, "secrets": [f"literal:{SECRET.decode()}"]}},
        "routes": [{"provider": "stripe", "type": "stripe.payment_intent.*", "topic": topic}],
    })
    signed = sign(StripeOptions(), SECRET, PATH)
    forged = sign(StripeOptions(), b"whsec_someone_else", PATH)

    refused = listener.post(forged.path, forged.body, forged.headers)
    assert (refused.status, refused.json()["error"]) == (401, "verification_failed")
    assert listener.post(signed.path, signed.body, signed.headers).status == 200

    [event] = read_events(topic, 1)
    sent = json.loads(signed.body)
    assert (event.get_type(), event.get_id(), event.get_subject()) == (
        "stripe.payment_intent.succeeded", sent["id"], "cus_Example")
    assert event.get_data() == sent
    assert len(read_events(topic, 2, timeout=1.0)) == 1, "the refused request never reached Kafka"
