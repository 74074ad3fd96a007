"""The plugin contract suite (webhookbus.testing.contract) run against every built-in verifier and
variant, signed by the test kit's signers; and proof that the suite catches a broken verifier."""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from webhookbus.events import dotted_get
from webhookbus.plugin import (Accepted, InboundRequest, MalformedPayload, ProviderEvent, Reply, Response,
                               VerificationFailed, VerifierOptions, installed_verifiers, parse_json)
from webhookbus.signing import require_token
from webhookbus.testing.contract import ContractCase, VerifierContract
from webhookbus.testing.samples import SIGNERS, SignedRequest, dev_platform_public_pem, launchkey_kid
from webhookbus.verifiers.hmac import HmacOptions, HmacVerifier

SECRET, OTHER = b"contract-secret-1", b"contract-secret-2"
WHSEC, OTHER_WHSEC = b"whsec_Y29udHJhY3Qtc2VjcmV0LW9uZQ==", b"whsec_Y29udHJhY3Qtc2VjcmV0LXR3bw=="
OPTIONS = {
    "hmac": {"header": "X-Signature", "prefix": "sha256=", "event_field": "type", "id_field": "id",
             "subject_field": "user.id"},
    "truvalidate": {"audience": "svc:6f1c1b2e-8a1d-4a57-9d59-6b0c1f3e2a10"},
}
REQUIRED_HEADERS = {("uip", "v2"): ["X-UIP-Signature", "X-UIP-Timestamp"]}
CASES = [(verifier, variant) for verifier, variants in SIGNERS.items() for variant in variants]


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_keys():
    return {name: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for name in ("service", "rogue")}


@pytest.fixture(params=CASES, ids=[f"{v}-{variant}" for v, variant in CASES])
def contract_case(request, rsa_keys, tmp_path) -> ContractCase:
    name, variant = request.param
    verifier_class = installed_verifiers()[name].load()
    options = dict(OPTIONS.get(name, {}))
    secret, wrong = (WHSEC, OTHER_WHSEC) if name == "standardwebhooks" else (SECRET, OTHER)
    sign = SIGNERS[name][variant]
    if name == "truvalidate":
        platform = tmp_path / "platform.pem"
        platform.write_bytes(dev_platform_public_pem())
        options["platform_keys"] = [str(platform)]
        secret = rsa_keys["service"]
        configured_kid = launchkey_kid(serialization.load_pem_public_key(dev_platform_public_pem()))
        wrong_signer = partial(sign, platform_key=rsa_keys["rogue"], kid=configured_kid)
    else:
        wrong_signer = sign
    model = verifier_class.Options.model_validate(options)
    path = f"/webhooks/{name}"
    return ContractCase(
        verifier=verifier_class(model, [secret]),
        sign=lambda: sign(model, secret, path),
        forge=lambda: wrong_signer(model, wrong if name != "truvalidate" else secret, path),
        sign_payload=lambda data: sign(model, secret, path, data),
        secrets=[secret],
        required_headers=REQUIRED_HEADERS.get((name, variant)),
        provider=name,
    )


class TestBuiltInVerifiers(VerifierContract):
    """Every built-in scheme keeps the contract a third-party plugin is held to."""


def test_every_built_in_verifier_has_a_signer():
    built_in = {name for name, entry in installed_verifiers().items() if entry.value.startswith("webhookbus.")}
    assert built_in <= set(SIGNERS), f"no signer for {sorted(built_in - set(SIGNERS))}"


# -- the suite must fail a verifier that breaks the contract ---------------------------------------


class AsyncHmac(HmacVerifier):
    """An ``async def verify`` plugin: the suite awaits it as the listener does."""

    async def verify(self, request: InboundRequest) -> Accepted:  # type: ignore[override]
        return super().verify(request)


class TrustsEveryone(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        return Accepted(ProviderEvent("received", json.loads(request.body or b"{}")))


class CrashesOnGarbage(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        bytes.fromhex(request.headers["x-signature"].removeprefix("sha256="))  # KeyError / ValueError: a 500
        return super().verify(request)


class EchoesTheHeader(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        try:
            return super().verify(request)
        except VerificationFailed:
            raise VerificationFailed(f"bad signature {request.headers.get('x-signature')}") from None


class MisstatesDataJson(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        (event,) = super().verify(request).events
        return Accepted(dataclasses.replace(event, data={**event.data, "added": True}))  # data_json kept


class KeepsStateOnSelf(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        self.request = request
        time.sleep(0.01)  # meanwhile another thread's call overwrites self.request
        return super().verify(self.request)


class SpellsLikePython(HmacVerifier):
    """The generic verifier before it wrote JSON values as JSON spells them."""

    def verify(self, request: InboundRequest) -> Accepted:
        (event,) = super().verify(request).events
        name = dotted_get(event.data, self.options.event_field)
        return Accepted(dataclasses.replace(event, name=str(name)))


class PublishesTheSecret(HmacVerifier):
    def verify(self, request: InboundRequest) -> Accepted:
        (event,) = super().verify(request).events
        return Accepted(dataclasses.replace(event, extensions={"token": self.secrets[0].decode()}))


class RepliesToEverything(HmacVerifier):
    methods = {"GET", "POST"}

    def verify(self, request: InboundRequest) -> Accepted | Reply:
        if request.method == "GET":
            return Reply(Response.text("ok"), what="check")
        return super().verify(request)


def hmac_case(verifier_class: type[HmacVerifier]) -> ContractCase:
    options = HmacOptions(**OPTIONS["hmac"])
    sign = SIGNERS["hmac"]["default"]
    return ContractCase(verifier=verifier_class(options, [SECRET]), sign=lambda: sign(options, SECRET, "/h"),
                        forge=lambda: sign(options, OTHER, "/h"), secrets=[SECRET],
                        sign_payload=lambda data: sign(options, SECRET, "/h", data),
                        handshake=lambda: SignedRequest("GET", "/h?check=1", {}, b""),
                        forge_handshake=lambda: SignedRequest("GET", "/h?check=2", {}, b""))


def test_an_async_verifier_keeps_the_contract():
    suite, case = VerifierContract(), hmac_case(AsyncHmac)
    suite.test_accepts_a_correctly_signed_request_with_well_formed_events(case)
    suite.test_rejects_a_tampered_body(case)
    suite.test_concurrent_calls_do_not_interfere(case)


@pytest.mark.parametrize(("broken", "check", "finding"), [
    (TrustsEveryone, "test_rejects_a_tampered_body", "accepted"),
    (TrustsEveryone, "test_rejects_a_request_signed_with_another_key", "accepted"),
    (CrashesOnGarbage, "test_rejects_a_missing_header", "raised KeyError"),
    (CrashesOnGarbage, "test_survives_oversized_and_garbage_headers", "raised ValueError"),
    (EchoesTheHeader, "test_survives_oversized_and_garbage_headers", "echo"),
    (KeepsStateOnSelf, "test_concurrent_calls_do_not_interfere", "assert"),
    (MisstatesDataJson, "test_accepts_a_correctly_signed_request_with_well_formed_events", "parse to data"),
    (SpellsLikePython, "test_json_values_become_attributes_as_json_spells_them", "type = true: name is 'True'"),
    (PublishesTheSecret, "test_no_secret_reaches_the_published_records", "a secret reaches"),
    (HmacVerifier, "test_declares_the_methods_it_answers", "undeclared method"),
    (HmacVerifier, "test_answers_a_handshake_with_a_reply", "raised VerificationFailed .* instead of a Reply"),
    (RepliesToEverything, "test_answers_a_handshake_with_a_reply", "forged handshake: accepted"),
])
def test_the_suite_fails_a_broken_verifier(broken, check, finding):
    with pytest.raises((pytest.fail.Exception, AssertionError), match=finding):
        getattr(VerifierContract(), check)(hmac_case(broken))


# -- a scheme whose secret travels inside the payload ----------------------------------------------


class ClientStateVerifier:
    """Microsoft Graph-style change notifications: each carries the subscription's ``clientState``,
    the only proof it is authentic, which must then be dropped from what is published."""

    class Options(VerifierOptions):
        pass

    def __init__(self, options: VerifierOptions, secrets: list[bytes]) -> None:
        self.secrets = secrets

    def verify(self, request: InboundRequest) -> Accepted:
        try:
            notifications, _ = parse_json(request.body)
        except (ValueError, RecursionError):
            raise MalformedPayload("body is not JSON") from None
        if not isinstance(notifications, dict) or not isinstance(notifications.get("value"), list) \
                or not notifications["value"] or not all(isinstance(n, dict) for n in notifications["value"]):
            raise MalformedPayload("no notifications")
        for notification in notifications["value"]:
            require_token(self.secrets, notification.get("clientState"), "clientState")
        return Accepted(*(ProviderEvent(name="changed", data=self.published(n)) for n in notifications["value"]))

    def published(self, notification: dict) -> dict:
        return {key: value for key, value in notification.items() if key != "clientState"}


class PublishesItsClientState(ClientStateVerifier):
    def published(self, notification: dict) -> dict:
        return notification


def client_state_case(verifier_class: type[ClientStateVerifier]) -> ContractCase:
    def sign(state: bytes) -> SignedRequest:
        body = {"value": [{"subscriptionId": "sub-1", "changeType": "created", "resource": "Users/1",
                           "clientState": state.decode()}]}
        return SignedRequest("POST", "/graph", {"Content-Type": "application/json"}, json.dumps(body).encode())

    return ContractCase(verifier=verifier_class(ClientStateVerifier.Options(), [SECRET]), sign=lambda: sign(SECRET),
                        forge=lambda: sign(OTHER), secrets=[SECRET], authenticates=("payload",))


class TestASecretInsideThePayload(VerifierContract):
    @pytest.fixture
    def contract_case(self) -> ContractCase:
        return client_state_case(ClientStateVerifier)


def test_the_suite_fails_a_verifier_that_publishes_the_secret_inside_the_payload():
    with pytest.raises(AssertionError, match="a secret reaches the published record"):
        VerifierContract().test_no_secret_reaches_the_published_records(client_state_case(PublishesItsClientState))
