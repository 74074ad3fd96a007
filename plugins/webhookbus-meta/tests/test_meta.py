"""The Meta plugin: the webhookbus contract suite (signed notifications and the hub.challenge
subscription check), vectors computed with Node's crypto, and a run through a real listener."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from webhookbus.plugin import MalformedPayload, Reply, VerificationFailed
from webhookbus.signing import matched_secret_index
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SignedRequest, signers_for
from webhookbus_meta import MetaOptions, MetaVerifier
from webhookbus_meta.sample import SIGNERS, sign_event, subscribe

SECRET, OTHER = b"meta-app-secret-for-tests", b"another-apps-secret"
TOKEN = "verify-token-typed-in-the-dashboard"
PATH = "/webhooks/meta"

# A Page feed notification shaped as in Meta's Webhooks reference; its signatures were computed with Node:
#   node -e 'const c=require("crypto"); console.log(c.createHmac("sha256", "meta-app-secret-for-tests")
#            .update(process.argv[1]).digest("hex"))' "$BODY"        (and "sha1" for the legacy header)
VECTOR_BODY = (b'{"object":"page","entry":[{"id":"444444444","time":1569262486134,"changes":[{"field":"feed","value":'
               b'{"item":"post","post_id":"444444444_123","verb":"add","created_time":1569262486,'
               b'"from":{"id":"111","name":"Ada"}}}]}]}')
VECTOR_SHA256 = "sha256=e38c41ba94a72f2982f2a62d19bf6fbfd468320ae3bd3a26721dac3c5bd69a6a"
VECTOR_SHA1 = "sha1=1cc0f5e3e9e92ed98ee6088792ed4c91a58b3bb4"


@pytest.fixture(autouse=True)
def verify_token(monkeypatch):
    monkeypatch.setenv("META_VERIFY_TOKEN", TOKEN)


def verifier(*secrets: bytes, **options: object) -> MetaVerifier:
    return MetaVerifier(MetaOptions(**options), list(secrets or [SECRET]))


class TestMetaContract(VerifierContract):
    @pytest.fixture
    def contract_case(self, verify_token) -> ContractCase:
        options = MetaOptions()
        return ContractCase(
            verifier=MetaVerifier(options, [SECRET]),
            sign=lambda: sign_event(options, SECRET, PATH),
            forge=lambda: sign_event(options, OTHER, PATH),
            sign_payload=lambda data: sign_event(options, SECRET, PATH, data),
            secrets=[SECRET, TOKEN.encode()],
            handshake=lambda: subscribe(options, SECRET, PATH),
            forge_handshake=lambda: subscribe(options, SECRET, PATH, verify_token="a guess"),
            provider="meta",
        )


def notification(header: str, value: str, body: bytes = VECTOR_BODY) -> SignedRequest:
    return SignedRequest("POST", PATH, {"Content-Type": "application/json", header: value}, body)


def test_the_node_vector_with_either_app_secret_of_a_rotation():
    (event,) = verifier(b"the-new-secret", SECRET).verify(notification("X-Hub-Signature-256", VECTOR_SHA256)
                                                          .inbound("meta")).events
    assert (event.name, event.subject, event.id) == ("page.feed", "444444444", None)  # id: the body's SHA-256
    assert event.data_json == VECTOR_BODY
    assert matched_secret_index.get() == 1


def test_the_legacy_sha1_header_only_when_configured():
    request = notification("X-Hub-Signature", VECTOR_SHA1).inbound("meta")
    assert verifier(signature="sha1").verify(request).events[0].name == "page.feed"
    with pytest.raises(VerificationFailed):
        verifier().verify(request)  # the default reads X-Hub-Signature-256 only
    with pytest.raises(VerificationFailed):
        verifier(signature="sha1").verify(notification("X-Hub-Signature", VECTOR_SHA256.replace("256", "1"))
                                          .inbound("meta"))


def get(**query: str) -> SignedRequest:
    return SignedRequest("GET", f"{PATH}?{urlencode(query)}", {}, b"")


def test_the_subscription_check_echoes_the_challenge_for_the_right_token_only():
    reply = verifier().verify(get(**{"hub.mode": "subscribe", "hub.challenge": "1158201444",
                                     "hub.verify_token": TOKEN}).inbound("meta"))
    assert isinstance(reply, Reply) and (reply.response.body, reply.what) == (b"1158201444", "subscribe")
    with pytest.raises(VerificationFailed, match="hub.verify_token"):
        verifier().verify(get(**{"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": TOKEN[:-1]})
                          .inbound("meta"))
    for query in ({"hub.mode": "unsubscribe", "hub.challenge": "1", "hub.verify_token": TOKEN},
                  {"hub.mode": "subscribe", "hub.verify_token": TOKEN}):
        with pytest.raises(MalformedPayload):
            verifier().verify(get(**query).inbound("meta"))
    repeated = SignedRequest("GET", f"{PATH}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=x"
                                    f"&hub.verify_token={TOKEN}", {}, b"")
    with pytest.raises(MalformedPayload):
        verifier().verify(repeated.inbound("meta"))


def test_without_the_verify_token_in_the_environment_it_cannot_start(monkeypatch):
    monkeypatch.delenv("META_VERIFY_TOKEN")
    with pytest.raises(ValueError, match=r"\$META_VERIFY_TOKEN"):
        verifier()


def test_names_follow_the_changed_field():
    def name(body: dict) -> str:
        return verifier().verify(sign_event(None, SECRET, PATH, body).inbound("meta")).events[0].name

    assert name({"object": "instagram", "entry": [{"id": "1", "messaging": [{}]}]}) == "instagram.messaging"
    two = [{"field": "feed"}, {"field": "mention"}]
    assert name({"object": "page", "entry": [{"id": "1", "changes": two}]}) == "page"
    assert name({"object": "page", "entry": [{"id": "1", "changes": [{"field": True}]}]}) == "page"


def test_the_signers_are_registered_for_webhookbus_sign():
    assert signers_for("meta") == SIGNERS


def test_end_to_end_through_a_listener(webhookbus_listener, topic_name, read_events):
    topic = topic_name("meta")
    listener = webhookbus_listener({
        "providers": {"meta": {"verifier": "meta", "path": PATH, "secrets": [f"literal:{SECRET.decode()}"]}},
        "routes": [{"provider": "meta", "type": "meta.page.*", "topic": topic}],
    })
    check = listener.post(f"{PATH}?hub.mode=subscribe&hub.challenge=8734&hub.verify_token={TOKEN}", method="GET")
    assert (check.status, check.body) == (200, b"8734")
    wrong = listener.post(f"{PATH}?hub.mode=subscribe&hub.challenge=8734&hub.verify_token=guess", method="GET")
    assert (wrong.status, wrong.json()["error"]) == (401, "verification_failed")
    put = listener.post(PATH, b"{}", method="PUT")
    assert (put.status, put.headers["allow"]) == (405, "GET, POST")
    assert listener.post(PATH, VECTOR_BODY, {"X-Hub-Signature-256": VECTOR_SHA256.replace("e3", "e4", 1)}).status == 401
    assert listener.post(PATH, VECTOR_BODY, {"X-Hub-Signature-256": VECTOR_SHA256}).status == 200

    [event] = read_events(topic, 1)
    assert (event.get_type(), event.get_subject()) == ("meta.page.feed", "444444444")
    assert event.get_data() == json.loads(VECTOR_BODY)
    assert len(read_events(topic, 2, timeout=1.0)) == 1, "the checks and the refused requests published nothing"
