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
same event ids (so retries deduplicate), and a tampered body, a foreign key, a missing header,
oversized or garbage headers and garbage bodies are refused with :class:`VerificationFailed` or
:class:`MalformedPayload` only — never accepted, never another exception (a 500), and never
with a secret, a signature or a long echo of the input in the detail shown to the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pytest

from webhookbus.events import RESERVED_ATTRIBUTES, encode_structured, normalize
from webhookbus.plugin import (
    Accepted,
    InboundRequest,
    MalformedPayload,
    ProviderEvent,
    Response,
    VerificationFailed,
    Verifier,
    VerifierOptions,
    WebhookError,
)
from webhookbus.testing.samples import SignedRequest

MAX_DETAIL = 300
"""A detail is a short reason; anything longer is probably echoing the request back."""

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")


@dataclass
class ContractCase:
    """What the suite needs to know about one verifier.

    ``sign`` returns a request the verifier must accept; it is called afresh for each check, so
    timestamps are current.  ``forge`` returns the same kind of request signed with a key the
    verifier does not hold.  ``required_headers`` are the headers without which a request must
    be refused (default: every header of a signed request except Content-Type).
    """

    verifier: Verifier
    sign: Callable[[], SignedRequest]
    forge: Callable[[], SignedRequest]
    secrets: Sequence[bytes] = ()
    required_headers: Sequence[str] | None = None
    provider: str = "test"

    def headers(self, signed: SignedRequest) -> list[str]:
        if self.required_headers is not None:
            return [name.lower() for name in self.required_headers]
        return [name.lower() for name in signed.headers if name.lower() != "content-type"]


def verify(verifier: Verifier, request: InboundRequest) -> Accepted:
    """Call ``verify`` as the listener does, whether it is a plain or an ``async`` method."""
    outcome = verifier.verify(request)
    if inspect.isawaitable(outcome):
        async def wait() -> Accepted:
            return await outcome  # type: ignore[no-any-return]

        return asyncio.run(wait())
    return outcome


def with_headers(signed: SignedRequest, **changes: str | None) -> SignedRequest:
    """``signed`` with headers replaced (a value) or removed (``None``), names matched case-insensitively."""
    lowered = {name.lower().replace("_", "-"): value for name, value in changes.items()}
    headers = {name: value for name, value in signed.headers.items() if name.lower() not in lowered}
    headers.update((name, value) for name, value in lowered.items() if value is not None)
    return signed._replace(headers=headers)


def tampered(data: bytes) -> bytes:
    """``data`` with its middle letter or digit changed, so it stays well-formed (JSON, form, JWE...).

    The middle, not the end: the last character of base64 may carry only padding bits, and
    changing it would not change the decoded bytes.
    """
    positions = [i for i, byte in enumerate(data) if chr(byte).isascii() and chr(byte).isalnum()]
    if not positions:
        return data + b"x"
    index = positions[len(positions) // 2]
    char = chr(data[index])
    alphabet = "0123456789" if char.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    replacement = alphabet[(alphabet.index(char.lower()) + 1) % len(alphabet)]
    replacement = replacement.upper() if char.isupper() else replacement
    return data[:index] + replacement.encode() + data[index + 1:]


def garbage_values(original: str) -> Iterator[str]:
    """Header values a fuzzer, a broken proxy or an attacker sends (latin-1, as headers arrive).

    None of them is a valid variant of ``original``: a repeated or re-listed signature can be
    legitimately accepted by a scheme that allows a list, so those are not here."""
    yield from ("", " ", "\t", "null", "0", "-1", "=", ",", ";", "v1=", "t=,v1=", "t=1,v1=zz,v1=", "Bearer x",
                "a.b.c", "a.b.c.d.e", "\x00\x01\x7f", "\xe9\xff\xfe", "%00", "9" * 40, "1e400", "NaN")
    yield "x" * 16384
    yield original + "x" * 16384
    yield original[: len(original) // 2]
    yield original[::-1]
    yield tampered(original.encode("latin-1")).decode("latin-1")


def garbage_bodies() -> Iterator[bytes]:
    rng = random.Random(5)
    yield from (b"", b"{}", b"[]", b"null", b"\x00", b"\xff\xfe\xfd", b"[" * 100_000, b'{"a":' * 50_000)
    yield from (rng.randbytes(size) for size in (1, 64, 4096, 1 << 20))


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
        pytest.fail(f"{what}: accepted ({[e.name for e in accepted.events]})")

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

    def test_accepts_a_correctly_signed_request_with_well_formed_events(self, contract_case: ContractCase) -> None:
        request = contract_case.sign().inbound(contract_case.provider)
        accepted = verify(contract_case.verifier, request)
        assert isinstance(accepted, Accepted) and accepted.events, "verify must return Accepted(event, ...)"
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
        response = accepted.response
        assert response is None or (isinstance(response, Response) and 200 <= response.status < 300
                                    and isinstance(response.body, bytes)), "a response must be a 2xx Response"

    def test_the_same_request_gives_the_same_event_ids(self, contract_case: ContractCase) -> None:
        """A provider's retry of one delivery must deduplicate downstream."""
        request = contract_case.sign().inbound(contract_case.provider)
        first = verify(contract_case.verifier, request)
        again = verify(contract_case.verifier, request)
        ids = [normalize(request, "contract", e).id for e in first.events]
        assert ids == [normalize(request, "contract", e).id for e in again.events]

    def test_concurrent_calls_do_not_interfere(self, contract_case: ContractCase) -> None:
        """One verifier serves every request of its provider at once: no per-request state on ``self``."""
        requests = [contract_case.sign().inbound(contract_case.provider) for _ in range(16)]
        expected = [[e.data for e in verify(contract_case.verifier, r).events] for r in requests]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda r: verify(contract_case.verifier, r), requests))
        assert [[e.data for e in result.events] for result in results] == expected

    # -- what must be refused ----------------------------------------------------------------

    def test_rejects_a_tampered_body(self, contract_case: ContractCase) -> None:
        signed = contract_case.sign()
        self.refuse(contract_case, signed._replace(body=tampered(signed.body)), "tampered body",
                    allowed=(VerificationFailed,))

    def test_rejects_a_request_signed_with_another_key(self, contract_case: ContractCase) -> None:
        self.refuse(contract_case, contract_case.forge(), "signed with a key the verifier does not hold",
                    allowed=(VerificationFailed,))

    def test_rejects_a_missing_header(self, contract_case: ContractCase) -> None:
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
