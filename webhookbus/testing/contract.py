"""The contract every verifier plugin must keep, as a reusable pytest suite.

Mix :class:`VerifierContract` into a test class and give it a ``contract_case`` fixture::

    class TestMyVerifier(VerifierContract):
        @pytest.fixture
        def contract_case(self):
            options = MyOptions()
            return ContractCase(
                verifier=MyVerifier(options, [b"secret"]),
                sign=lambda: sign_mine(options, b"secret", "/hooks/mine"),
                forge=lambda: sign_mine(options, b"another secret", "/hooks/mine"),
                secrets=[b"secret"],
            )

The suite then checks what the listener relies on and a provider or an attacker can throw at
it: a correctly signed request is accepted with well-formed events, the same request gives the
same event ids (so retries deduplicate), no secret reaches the published records, JSON values
become attributes as JSON spells them, and a tampered body, URL or in-payload secret (for the
parts the scheme authenticates), a foreign key, a missing header, oversized or garbage headers
and garbage bodies are refused with :class:`VerificationFailed` or :class:`MalformedPayload`
only — never accepted, never another exception (a 500), and never with a secret, a signature or
a long echo of the input in the detail shown to the caller.  A handshake (a request answered
with a :class:`Reply`) is checked when the case gives one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import pytest

from webhookbus.events import RESERVED_ATTRIBUTES, encode_binary, encode_structured, normalize
from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Reply,
    Response,
    VerificationFailed,
    Verifier,
    VerifierOptions,
    WebhookError,
    accepted_methods,
)
from webhookbus.testing.mutations import (
    garbage_bodies, garbage_values, leaf_paths, python_spellings, tampered, with_headers, with_value,
)
from webhookbus.testing.samples import SignedRequest

__all__ = ["ContractCase", "Part", "VerifierContract", "accept", "tampered", "verify", "with_headers"]

MAX_DETAIL = 300
"""A detail is a short reason; anything longer is probably echoing the request back."""

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")

Part = Literal["body", "headers", "url", "payload"]
"""What a scheme authenticates: the body's bytes, its headers (a signature or a token), the URL
the provider called (``InboundRequest.url``), or a secret the provider puts inside the payload."""


@dataclass
class ContractCase:
    """What the suite needs to know about one verifier.

    ``sign`` returns a request the verifier must accept with events; it is called afresh for
    each check, so timestamps are current.  ``forge`` returns the same kind of request signed
    with a key the verifier does not hold.  ``authenticates`` says what the scheme protects, and
    so which tampering checks apply (a static token in a header protects no body: ``("headers",)``;
    a scheme signing the URL adds ``"url"``, and its signer must set ``SignedRequest.url``; a
    secret inside the payload is ``"payload"``).  ``required_headers`` are the headers without which
    a request must be refused (default: every header of a signed request except Content-Type).
    ``sign_payload(data)`` signs a given payload, as the signer's ``data`` argument does: the suite
    then puts JSON's true, false, objects and arrays in each field to see how they become
    attributes.  ``handshake`` returns a request the verifier answers with a :class:`Reply`, and
    ``forge_handshake`` one it must refuse (a wrong verify token, a bad signature).
    """

    verifier: Verifier
    sign: Callable[[], SignedRequest]
    forge: Callable[[], SignedRequest]
    secrets: Sequence[bytes] = ()
    required_headers: Sequence[str] | None = None
    provider: str = "test"
    authenticates: Collection[Part] = ("body", "headers")
    sign_payload: Callable[[Any], SignedRequest] | None = None
    handshake: Callable[[], SignedRequest] | None = None
    forge_handshake: Callable[[], SignedRequest] | None = None

    def headers(self, signed: SignedRequest) -> list[str]:
        if self.required_headers is not None:
            return [name.lower() for name in self.required_headers]
        if "headers" not in self.authenticates:
            return []
        return [name.lower() for name in signed.headers if name.lower() != "content-type"]

    def require(self, part: Part) -> None:
        if part not in self.authenticates:
            pytest.skip(f"the scheme does not authenticate the {part} (ContractCase.authenticates)")


def verify(verifier: Verifier, request: InboundRequest) -> Accepted | Reply:
    """Call ``verify`` as the listener does, whether it is a plain or an ``async`` method."""
    outcome = verifier.verify(request)
    if inspect.isawaitable(outcome):
        async def wait() -> Accepted | Reply:
            return await outcome  # type: ignore[no-any-return]

        return asyncio.run(wait())
    return outcome


def accept(case: ContractCase, request: InboundRequest) -> Accepted:
    """``verify``, asserting the request was accepted with events."""
    accepted = verify(case.verifier, request)
    assert isinstance(accepted, Accepted) and accepted.events, "verify must return Accepted(event, ...) for sign()"
    return accepted


class VerifierContract:
    """The suite; see the module docstring.  Needs a ``contract_case`` fixture."""

    def refuse(self, case: ContractCase, signed: SignedRequest, what: str,
               allowed: tuple[type[WebhookError], ...] = (VerificationFailed, MalformedPayload)) -> WebhookError:
        """Assert the verifier refuses ``signed`` with one of ``allowed``, with a short, clean detail."""
        try:
            accepted = verify(case.verifier, signed.inbound(case.provider))
        except allowed as error:
            self.check_detail(case, error, signed, what)
            return error
        except Exception as error:  # noqa: BLE001 - that is the finding
            pytest.fail(f"{what}: raised {type(error).__name__} ({error!s:.200}); "
                        f"only {' or '.join(e.__name__ for e in allowed)} may be raised")
        pytest.fail(f"{what}: accepted ({[e.name for e in getattr(accepted, 'events', ())] or accepted})")

    def check_detail(self, case: ContractCase, error: WebhookError, sent: SignedRequest, what: str) -> None:
        detail = error.detail
        assert isinstance(detail, str) and detail, f"{what}: the detail must be a non-empty reason"
        assert len(detail) <= MAX_DETAIL, f"{what}: detail is {len(detail)} characters, echoing input? {detail:.80}"
        for secret in case.secrets:
            text = bytes(secret).decode("latin-1")
            assert len(text) < 4 or text not in detail, f"{what}: the detail contains a secret"
        for name, value in sent.headers.items():
            if name.lower() != "content-type":
                assert len(value) < 16 or value not in detail, f"{what}: the detail echoes the {name} header"

    # -- what must be accepted ---------------------------------------------------------------

    def test_options_are_a_strict_pydantic_model(self, contract_case: ContractCase) -> None:
        options = type(contract_case.verifier).Options
        assert issubclass(options, VerifierOptions), "Options must subclass webhookbus.plugin.VerifierOptions"
        json.dumps(options.model_json_schema())  # `webhookbus plugins --schema` and `schema` print it
        with pytest.raises(ValueError):
            options.model_validate({"no_such_option_anywhere": 1})

    def test_declares_the_methods_it_answers(self, contract_case: ContractCase) -> None:
        methods = accepted_methods(contract_case.verifier)  # ValueError: not HTTP method names
        assert contract_case.sign().method in methods, "sign() uses a method the verifier does not declare"
        if contract_case.handshake is not None:
            assert contract_case.handshake().method in methods, "handshake() uses an undeclared method"

    def test_accepts_a_correctly_signed_request_with_well_formed_events(self, contract_case: ContractCase) -> None:
        request = contract_case.sign().inbound(contract_case.provider)
        accepted = accept(contract_case, request)
        for event in accepted.events:
            assert isinstance(event, ProviderEvent)
            assert isinstance(event.name, str) and event.name and event.name.isprintable(), event.name
            assert " " not in event.name and len(event.name) <= 200, f"event name {event.name!r:.80}"
            assert event.id is None or (isinstance(event.id, str) and event.id), f"id {event.id!r}"
            assert event.subject is None or isinstance(event.subject, str), f"subject {event.subject!r}"
            assert event.time is None or (isinstance(event.time, datetime) and event.time.tzinfo), "time needs a tz"
            for name, value in event.extensions.items():
                assert _EXTENSION_NAME.fullmatch(name) and name not in RESERVED_ATTRIBUTES, f"extension name {name!r}"
                assert isinstance(value, str), f"extension {name} must be a string"
            if event.data_json is not None:  # copied into records as is: it must say what data says
                assert isinstance(event.data_json, bytes), "data_json must be bytes"
                assert json.loads(event.data_json.decode("utf-8")) == event.data, "data_json must parse to data"
            cloud_event = normalize(request, "contract", event)
            value, _ = encode_structured(cloud_event)
            assert json.loads(value)["type"] == f"{contract_case.provider}.{event.name}"
            self.check_attributes(event, request.body, "a signed request")
        response = accepted.response
        assert response is None or (isinstance(response, Response) and 200 <= response.status < 300
                                    and isinstance(response.body, bytes)), "a response must be a 2xx Response"

    def check_attributes(self, event: ProviderEvent, body: bytes, what: str) -> None:
        """No attribute is a Python spelling of a JSON value (``True``, ``{'k': 'v'}``, ``100.0`` for ``1e2``):
        a consumer in another language computes the JSON one, and routes compare that too."""
        leaked = python_spellings(event.data, body)
        attributes = {"name": event.name, "id": event.id, "subject": event.subject, **event.extensions}
        for attribute, value in attributes.items():
            assert value not in leaked, f"{what}: {attribute} is {value!r}, Python's spelling of a JSON value"

    def test_json_values_become_attributes_as_json_spells_them(self, contract_case: ContractCase) -> None:
        if contract_case.sign_payload is None:
            pytest.skip("no ContractCase.sign_payload to sign chosen payloads with")
        signed = contract_case.sign()
        try:
            sample = json.loads(signed.body)
        except ValueError:  # a form, a JWE...: the payload as the verifier read it
            sample = accept(contract_case, signed.inbound(contract_case.provider)).events[0].data
        if not isinstance(sample, dict):
            pytest.skip("neither the signed body nor the event's data is a JSON object to put values in")
        for path in list(leaf_paths(sample))[:40]:
            for probe in (True, False, {"k": "v"}, ["a", 1]):
                signed = contract_case.sign_payload(with_value(sample, path, probe))
                what = f"{path} = {json.dumps(probe)}"
                try:
                    outcome = verify(contract_case.verifier, signed.inbound(contract_case.provider))
                except (VerificationFailed, MalformedPayload):
                    continue  # refusing a value the scheme does not allow there is fine
                except Exception as error:  # noqa: BLE001 - that is the finding
                    pytest.fail(f"{what}: raised {type(error).__name__} ({error!s:.200}): a 500 for an authentic request")
                for event in outcome.events if isinstance(outcome, Accepted) else ():
                    self.check_attributes(event, signed.body, what)

    def test_no_secret_reaches_the_published_records(self, contract_case: ContractCase) -> None:
        """Neither a configured secret nor one the provider put in the payload is published."""
        request = contract_case.sign().inbound(contract_case.provider)
        texts = [bytes(s) for s in contract_case.secrets if len(s) >= 4]
        for event in accept(contract_case, request).events:
            cloud_event = normalize(request, "contract", event)
            for value, headers in (encode_structured(cloud_event), encode_binary(cloud_event)):
                record = value + b"".join(header for _, header in headers)
                for secret in texts:
                    assert secret not in record, "a secret reaches the published record (data or an attribute)"

    def test_the_same_request_gives_the_same_event_ids(self, contract_case: ContractCase) -> None:
        """A provider's retry of one delivery must deduplicate downstream."""
        request = contract_case.sign().inbound(contract_case.provider)
        first = accept(contract_case, request)
        again = accept(contract_case, request)
        ids = [normalize(request, "contract", e).id for e in first.events]
        assert ids == [normalize(request, "contract", e).id for e in again.events]

    def test_concurrent_calls_do_not_interfere(self, contract_case: ContractCase) -> None:
        """One verifier serves every request of its provider at once: no per-request state on ``self``."""
        requests = [contract_case.sign().inbound(contract_case.provider) for _ in range(16)]
        expected = [[e.data for e in accept(contract_case, r).events] for r in requests]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda r: accept(contract_case, r), requests))
        assert [[e.data for e in result.events] for result in results] == expected

    # -- what must be refused ----------------------------------------------------------------

    def test_rejects_a_tampered_body(self, contract_case: ContractCase) -> None:
        contract_case.require("body")
        signed = contract_case.sign()
        self.refuse(contract_case, signed._replace(body=tampered(signed.body)), "tampered body",
                    allowed=(VerificationFailed,))

    def test_rejects_another_url(self, contract_case: ContractCase) -> None:
        """Signed for one address, replayed to (or claimed for) another: another host, scheme, path or query."""
        contract_case.require("url")
        signed = contract_case.sign()
        assert signed.url, "a URL-signing scheme's signer must set SignedRequest.url to the URL it signed"
        parts = urlsplit(signed.url)
        others = {
            "another host": parts._replace(netloc="evil.example.net"),
            "another scheme": parts._replace(scheme="http" if parts.scheme == "https" else "https"),
            "another path": parts._replace(path=parts.path + "x"),
            "another query": parts._replace(query=parts.query + "&x=1" if parts.query else "x=1"),
        }
        for what, other in others.items():
            self.refuse(contract_case, signed._replace(url=urlunsplit(other)), what, allowed=(VerificationFailed,))

    def test_rejects_another_secret_in_the_payload(self, contract_case: ContractCase) -> None:
        contract_case.require("payload")
        signed = contract_case.sign()
        inside = [bytes(s) for s in contract_case.secrets if bytes(s) in signed.body]
        assert inside, "authenticates 'payload', but no configured secret is inside the signed body"
        body = signed.body.replace(inside[0], tampered(inside[0]))
        self.refuse(contract_case, signed._replace(body=body), "another secret in the payload",
                    allowed=(VerificationFailed,))

    def test_answers_a_handshake_with_a_reply(self, contract_case: ContractCase) -> None:
        if contract_case.handshake is None:
            pytest.skip("no ContractCase.handshake")
        signed = contract_case.handshake()
        try:
            reply = verify(contract_case.verifier, signed.inbound(contract_case.provider))
        except Exception as error:  # noqa: BLE001 - that is the finding
            pytest.fail(f"handshake: raised {type(error).__name__} ({error!s:.200}) instead of a Reply")
        assert isinstance(reply, Reply), "handshake() must be answered with Reply(response)"
        response = reply.response
        assert isinstance(response, Response) and 200 <= response.status < 300 and isinstance(response.body, bytes)
        assert isinstance(reply.what, str) and reply.what and reply.what.isprintable(), "Reply.what names the handshake"
        for secret in contract_case.secrets:
            assert len(secret) < 4 or bytes(secret) not in response.body, "the reply contains a secret"
        if contract_case.forge_handshake is not None:
            self.refuse(contract_case, contract_case.forge_handshake(), "forged handshake", allowed=(VerificationFailed,))

    def test_rejects_a_request_signed_with_another_key(self, contract_case: ContractCase) -> None:
        self.refuse(contract_case, contract_case.forge(), "signed with a key the verifier does not hold",
                    allowed=(VerificationFailed,))

    def test_rejects_a_missing_header(self, contract_case: ContractCase) -> None:
        contract_case.require("headers")
        signed = contract_case.sign()
        names = contract_case.headers(signed)
        assert names, "a signed request must carry at least one authenticating header"
        for name in names:
            self.refuse(contract_case, with_headers(signed, **{name: None}), f"without {name}",
                        allowed=(VerificationFailed,))
        self.refuse(contract_case, with_headers(signed, **dict.fromkeys(names)), "without any authenticating header",
                    allowed=(VerificationFailed,))

    def test_survives_oversized_and_garbage_headers(self, contract_case: ContractCase) -> None:
        signed = contract_case.sign()
        for name in contract_case.headers(signed):
            original = next(v for k, v in signed.headers.items() if k.lower() == name)
            for value in garbage_values(original):
                self.refuse(contract_case, with_headers(signed, **{name: value}), f"{name}: {value!r:.40}")

    def test_survives_garbage_bodies(self, contract_case: ContractCase) -> None:
        signed = contract_case.sign()
        for body in garbage_bodies():
            self.refuse(contract_case, signed._replace(body=body), f"body {body[:20]!r} ({len(body)} bytes)")
