"""The Slack plugin: the webhookbus contract suite (events, slash commands, the url_verification
handshake), Slack's own documented signature example, and a run through a real listener and broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from webhookbus.plugin import Accepted, Reply, VerificationFailed
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SignedRequest, signers_for
from webhookbus_slack import SlackOptions, SlackVerifier
from webhookbus_slack.sample import SIGNERS, VERIFICATION_TOKEN, sign_command, sign_event, sign_url_verification

SECRET, OTHER = b"slack-signing-secret-for-tests", b"someone-elses-signing-secret"
PATH = "/webhooks/slack"

# From Slack's "Verifying requests from Slack": this signing secret, timestamp and slash-command body
# give this signature (checked with: printf '%s' "v0:1531420618:$BODY" | openssl dgst -sha256 -hmac "$SECRET").
DOCS_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
DOCS_TIMESTAMP = 1531420618
DOCS_BODY = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
             b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
             b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
             b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
DOCS_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def case(sign) -> ContractCase:
    options = SlackOptions()
    return ContractCase(
        verifier=SlackVerifier(options, [SECRET]),
        sign=lambda: sign(options, SECRET, PATH),
        forge=lambda: sign(options, OTHER, PATH),
        sign_payload=lambda data: sign(options, SECRET, PATH, data),
        secrets=[SECRET, VERIFICATION_TOKEN.encode()],  # the verification token must not be published either
        handshake=lambda: sign_url_verification(options, SECRET, PATH),
        forge_handshake=lambda: sign_url_verification(options, OTHER, PATH),
        provider="slack",
    )


class TestSlackEvents(VerifierContract):
    @pytest.fixture
    def contract_case(self) -> ContractCase:
        return case(sign_event)


class TestSlackCommands(VerifierContract):
    @pytest.fixture
    def contract_case(self) -> ContractCase:
        return case(sign_command)


def docs_request(signature: str = DOCS_SIGNATURE) -> SignedRequest:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(DOCS_TIMESTAMP),
               "X-Slack-Signature": signature}
    return SignedRequest("POST", PATH, headers, DOCS_BODY)


def received(seconds_later: float) -> datetime:
    return datetime.fromtimestamp(DOCS_TIMESTAMP, timezone.utc) + timedelta(seconds=seconds_later)


def test_slacks_documented_example():
    verifier = SlackVerifier(SlackOptions(), [b"an-older-secret", DOCS_SECRET])
    accepted = verifier.verify(docs_request().inbound("slack", received_at=received(10)))
    (event,) = accepted.events
    assert (event.name, event.subject) == ("command", "U2CERLKJA")
    assert event.data["command"] == "/webhook-collect" and "token" not in event.data


@pytest.mark.parametrize("seconds", [301, -301])
def test_a_timestamp_outside_five_minutes_is_a_replay(seconds):
    with pytest.raises(VerificationFailed, match="tolerance"):
        SlackVerifier(SlackOptions(), [DOCS_SECRET]).verify(docs_request().inbound("slack", received_at=received(seconds)))


@pytest.mark.parametrize("signature", [DOCS_SIGNATURE.replace("v0=", "v1="), DOCS_SIGNATURE[:-1] + "4",
                                       DOCS_SIGNATURE.removeprefix("v0=")])
def test_refused_signatures(signature):
    with pytest.raises(VerificationFailed):
        SlackVerifier(SlackOptions(), [DOCS_SECRET]).verify(docs_request(signature).inbound("slack", received_at=received(1)))


def test_url_verification_is_answered_with_the_challenge_and_no_event():
    signed = sign_url_verification(SlackOptions(), SECRET, PATH, {"type": "url_verification", "challenge": "3eZbrw1aB"})
    reply = SlackVerifier(SlackOptions(), [SECRET]).verify(signed.inbound("slack"))
    assert isinstance(reply, Reply) and (reply.response.body, reply.what) == (b"3eZbrw1aB", "url_verification")


def test_an_event_without_the_token_is_published_from_its_own_text():
    body = {"type": "event_callback", "event_id": "Ev1", "event": {"type": "reaction_added", "user": "U1"}}
    accepted = SlackVerifier(SlackOptions(), [SECRET]).verify(sign_event(None, SECRET, PATH, body).inbound("slack"))
    assert isinstance(accepted, Accepted)
    assert accepted.events[0].data_json is not None and json.loads(accepted.events[0].data_json) == body


def test_the_signers_are_registered_for_webhookbus_sign():
    assert signers_for("slack") == SIGNERS


def test_end_to_end_through_a_listener(webhookbus_listener, topic_name, read_events):
    topic = topic_name("slack")
    listener = webhookbus_listener({
        "providers": {"slack": {"verifier": "slack", "path": PATH, "secrets": [f"literal:{SECRET.decode()}"]}},
        "routes": [{"provider": "slack", "topic": topic}],
    })
    handshake = sign_url_verification(SlackOptions(), SECRET, PATH, {"type": "url_verification", "challenge": "c-123"})
    answer = listener.post(handshake.path, handshake.body, handshake.headers)
    assert (answer.status, answer.body, answer.headers["content-type"]) == (200, b"c-123", "text/plain; charset=utf-8")
    forged = sign_event(None, OTHER, PATH)
    assert listener.post(forged.path, forged.body, forged.headers).status == 401
    stale = sign_event(None, SECRET, PATH)
    old = str(int(time.time()) - 3600)  # re-signed here with hmac, independently of the plugin
    stale.headers.update({"X-Slack-Request-Timestamp": old, "X-Slack-Signature": "v0=" + hmac.new(
        SECRET, f"v0:{old}:".encode() + stale.body, hashlib.sha256).hexdigest()})
    assert listener.post(stale.path, stale.body, stale.headers).status == 401
    event = sign_event(None, SECRET, PATH)
    assert listener.post(event.path, event.body, event.headers).status == 200

    [published] = read_events(topic, 1)
    sent = json.loads(event.body)
    assert (published.get_type(), published.get_id(), published.get_subject()) == (
        "slack.app_mention", sent["event_id"], "U123ABC456")
    assert published.get_data() == {k: v for k, v in sent.items() if k != "token"}
    assert len(read_events(topic, 2, timeout=1.0)) == 1, "the handshake and the refused requests published nothing"
