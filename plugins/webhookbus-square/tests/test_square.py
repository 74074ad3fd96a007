"""The Square plugin: the webhookbus contract suite for a URL + body scheme, the example from Square's
SDKs, and runs through a real listener behind a (simulated) proxy, with and without ``public_url``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from webhookbus.plugin import VerificationFailed
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SignedRequest, signers_for
from webhookbus_square import SquareOptions, SquareVerifier
from webhookbus_square.sample import sign

KEY, OTHER = b"square-signature-key-for-tests", b"another-subscriptions-key"
PATH = "/webhooks/square"

# The example Square's SDKs test WebhooksHelper.isValidWebhookEventSignature with; checked with
#   printf '%s' "$URL$BODY" | openssl dgst -sha256 -hmac "$KEY" -binary | base64
SDK_KEY = b"Ibxx_5AKakO-3qeNVR61Dw"
SDK_URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"
SDK_BODY = (b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":'
            b'"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z",'
            b'"data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}')
SDK_SIGNATURE = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="


class TestSquareContract(VerifierContract):
    @pytest.fixture
    def contract_case(self) -> ContractCase:
        options, url = SquareOptions(), "https://hooks.example.com/square?env=prod"
        return ContractCase(
            verifier=SquareVerifier(options, [KEY]),
            sign=lambda: sign(options, KEY, PATH, url=url),
            forge=lambda: sign(options, OTHER, PATH, url=url),
            sign_payload=lambda data: sign(options, KEY, PATH, data, url=url),
            secrets=[KEY],
            authenticates=("body", "headers", "url"),
            provider="square",
        )


def sdk_request(url: str = SDK_URL, signature: str = SDK_SIGNATURE) -> SignedRequest:
    return SignedRequest("POST", "/hook", {"x-square-hmacsha256-signature": signature}, SDK_BODY, url)


def test_the_sdk_example():
    (event,) = SquareVerifier(SquareOptions(), [b"rotated-in", SDK_KEY]).verify(sdk_request().inbound("square")).events
    assert (event.name, event.id, event.subject) == (
        "webhooks.test_notification", "ac3ac95b-f97d-458c-a6e6-18981597e05f", "MLEFBHHSJGVHD")
    assert event.time is not None and event.time.isoformat() == "2022-07-13T20:30:59.037339+00:00"


@pytest.mark.parametrize("url", [SDK_URL.replace("https:", "http:"), SDK_URL + "/", SDK_URL + "?x=1",
                                 SDK_URL.replace("webhook.site", "webhook.site:443")])
def test_the_same_body_for_another_url_is_refused(url):
    with pytest.raises(VerificationFailed):
        SquareVerifier(SquareOptions(), [SDK_KEY]).verify(sdk_request(url).inbound("square"))


def test_the_signer_is_registered_for_webhookbus_sign():
    assert signers_for("square") == {"default": sign}


def config(topic: str, **provider: object) -> dict:
    return {"providers": {"square": {"verifier": "square", "path": PATH, "secrets": [f"literal:{KEY.decode()}"],
                                     **provider}},
            "routes": [{"provider": "square", "topic": topic}]}


def test_end_to_end_behind_a_trusted_proxy(webhookbus_listener, topic_name, read_events):
    topic = topic_name("square")
    listener = webhookbus_listener({**config(topic), "server": {"trusted_proxies": ["127.0.0.1"]}})
    public = f"https://hooks.example.com{PATH}"
    signed = sign(SquareOptions(), KEY, PATH, url=public)
    proxied = {**signed.headers, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
    assert listener.post(PATH, signed.body, signed.headers).status == 401, "without the proxy's headers: another URL"
    elsewhere = {**proxied, "X-Forwarded-Host": "evil.example.net"}
    assert listener.post(PATH, signed.body, elsewhere).status == 401
    assert listener.post(PATH, signed.body, proxied).status == 200

    [event] = read_events(topic, 1)
    sent = json.loads(signed.body)
    assert (event.get_type(), event.get_id(), event.get_subject()) == (
        "square.payment.updated", sent["event_id"], "6SSW7HV8K2ST5")
    assert event.get_data() == sent
    assert len(read_events(topic, 2, timeout=1.0)) == 1, "refused requests never reach Kafka"


def test_end_to_end_with_public_url_and_webhookbus_sign(webhookbus_listener, topic_name, read_events, tmp_path):
    """A proxy that also rewrites the path (public /square/notify -> /webhooks/square): only the config can
    say the public URL; `webhookbus sign` signs for it, and forwarded headers from nobody trusted change nothing."""
    topic = topic_name("square")
    settings = config(topic, public_url="https://pay.example.com/square/notify")
    listener = webhookbus_listener(settings)
    signed = sign(SquareOptions(), KEY, PATH, url="https://pay.example.com/square/notify")
    forged_host = {**signed.headers, "X-Forwarded-Host": "evil.example.net"}
    assert listener.post(PATH, signed.body, forged_host).status == 200

    config_file = tmp_path / "square.yaml"
    config_file.write_text(yaml.safe_dump({**settings, "kafka": {"bootstrap_servers": ["127.0.0.1:1"]}}))
    sent = subprocess.run([sys.executable, "-m", "webhookbus.cli", "sign", "--config", str(config_file),
                           "--provider", "square", "--url", f"http://127.0.0.1:{listener.port}", "--send"],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0 and "HTTP 200" in sent.stdout, sent.stdout + sent.stderr
    assert [e.get_type() for e in read_events(topic, 2)] == ["square.payment.updated"] * 2
