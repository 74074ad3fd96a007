"""The whole contract between webhookbus and a verifier plugin.

A verifier is a class registered under the entry-point group ``webhookbus.verifiers``:

    class MyVerifier:
        Options = MyOptions              # a pydantic model; unknown keys are config errors
        methods = {"POST"}               # optional: the HTTP methods that reach verify (else 405)

        def __init__(self, options: MyOptions, secrets: Secrets) -> None: ...

        def verify(self, request: InboundRequest) -> Accepted | Reply: ...   # or ``async def``

        pii_fields = ("subject", "data.user.email")   # optional: what `check` warns about

It is built once per configured provider, after config validation, and then called
concurrently for every request on that provider's path, so it must not keep per-request
state on ``self``.  ``verify`` returns :class:`Accepted` (one or more events, and optionally
the HTTP answer the provider expects), returns :class:`Reply` (an answer and no events: a
handshake or challenge), or raises one of the errors below; the listener turns each error
into its HTTP status and a short JSON reason.  A ``detail`` is shown to the caller: never put
a secret, a signature or a computed digest in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "webhookbus.verifiers"

Secrets = Sequence[bytes]
"""The provider's resolved secrets, in configured order; several during a rotation."""


class VerifierOptions(BaseModel):
    """Base for a verifier's ``Options``: an unknown or misspelt key is a config error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """One HTTP request as it arrived, before anything trusted it.  ``headers`` keys are
    lower-case (a repeated header keeps its first value); ``path`` is percent-decoded,
    ``raw_path`` as sent, ``query`` raw; ``tls_peer`` is ``{"subject": ...}`` when known.
    ``url`` is the public URL the provider called (``scheme://host/raw_path?query``), for
    schemes that sign it: from ``public_url`` in the config, or a trusted proxy's
    ``X-Forwarded-Proto``/``X-Forwarded-Host``, or the listener's own scheme and ``Host``."""

    provider: str
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    received_at: datetime
    client: str | None = None
    tls_peer: Mapping[str, Any] | None = None
    raw_path: str = ""
    url: str = ""

    @property
    def raw_target(self) -> str:
        """Path (as sent on the wire) plus ``?query``: what path-signing schemes sign."""
        target = self.raw_path or self.path
        return f"{target}?{self.query}" if self.query else target

    @property
    def content_type(self) -> str:
        """The media type alone, lower-case, without parameters such as charset."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """What the provider says happened; the listener wraps it into a CloudEvent.

    ``name`` becomes the CloudEvents type ``<provider>.<name>``.  ``id`` is the
    provider's own event id (what a retry repeats); leave it ``None`` and a SHA-256 of
    the body is used.  ``time`` defaults to the receipt time.  ``data`` must be
    JSON-serialisable: it is what consumers read, so keep the payload as parsed.

    ``data_json`` is the JSON text ``data`` was parsed from, verbatim (normally the raw body,
    see :func:`parse_json`): webhookbus copies these bytes into Kafka records instead of
    serialising ``data`` again (for a 100 KB body, about a millisecond per record).
    Must be UTF-8 JSON that parses to ``data``; leave it ``None`` when ``data`` was built or changed.
    """

    name: str
    data: Any
    id: str | None = None
    subject: str | None = None
    time: datetime | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)
    data_json: bytes | None = None


def parse_json(body: bytes) -> tuple[Any, bytes | None]:
    """``body`` parsed as JSON, and what to pass as ``ProviderEvent.data_json`` with it: the
    body itself (without the BOM some senders prepend), or ``None`` when it is not UTF-8 (the
    UTF-16 and UTF-32 that :func:`json.loads` also reads).  ``NaN`` and ``Infinity`` are
    refused: they are not JSON, and a record holding them is unreadable to most consumers; so is
    a number too large for a float (``1e400``), which would parse to one.
    Raises :class:`ValueError` (or :class:`RecursionError` for absurd nesting)."""
    if body[:3] == b"\xef\xbb\xbf":
        body = body[3:]
    try:
        return _STRICT_JSON.decode(body.decode("utf-8")), body
    except UnicodeDecodeError:
        return _STRICT_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass")), None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """``float(text)``, refusing what overflows to infinity: re-serialised (as it is when the
    body is not UTF-8) it would be written ``Infinity``, which is not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number is out of the range of a float")
    return value


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as ``{name: value}``, UTF-8 decoded.
    A name given twice is refused (which one did the sender mean?), as is anything that is not
    ``name=value`` pairs joined by ``&``.  Raises :class:`ValueError`."""
    pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                      errors="strict", max_num_fields=1000)
    form = dict(pairs)
    if len(form) != len(pairs):
        raise ValueError("a form field is given twice")
    return form


# Built once: json.loads with options builds one per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite_float)


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer: ``Response(status, body, content_type)``, or built by :meth:`json` or
    :meth:`text`.  In :class:`Accepted` it is sent once the events are safely on Kafka; in
    :class:`Reply`, at once.  Its status must be 2xx: refusals are errors (below)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode())

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


class Accepted:
    """A verified request: its events and, optionally, the answer to send back.

    ``Accepted(event)``, ``Accepted(e1, e2)`` or ``Accepted(event, response=...)``.
    Without a response the provider gets an empty 200 after the events are published.
    """

    __slots__ = ("events", "response")

    def __init__(self, *events: ProviderEvent, response: Response | None = None) -> None:
        if not events:
            raise ValueError("Accepted needs at least one event")
        self.events, self.response = events, response


@dataclass(frozen=True, slots=True)
class Reply:
    """An authentic request that carries no event, answered at once and published nowhere:
    an endpoint check (Meta's ``hub.challenge``, Slack's ``url_verification``).  The request's
    log line says ``handshake: <what>``; the listener counts them apart from events.
    Return it only for a request you have authenticated (or that proves nothing, like an
    echo of an unsigned challenge): it reaches the provider's sender without Kafka's say."""

    response: Response
    what: str = "handshake"


class WebhookError(Exception):
    """Base of the errors a verifier raises; the class decides the HTTP status (4xx/5xx only)."""

    status: ClassVar[int] = 400
    error: ClassVar[str] = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class VerificationFailed(WebhookError):
    """Signature, token, key, or timestamp check failed: the request is not trusted."""

    status = 401
    error = "verification_failed"


class MalformedPayload(WebhookError):
    """The request is authentic (or could not be judged) but its payload cannot be read."""

    status = 400
    error = "malformed_payload"


@runtime_checkable
class Verifier(Protocol):
    """What a verifier class provides; see the module docstring."""

    Options: ClassVar[type[VerifierOptions]]

    def verify(self, request: InboundRequest) -> Accepted | Reply | Awaitable[Accepted | Reply]: ...


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def accepted_methods(verifier: object) -> frozenset[str]:
    """The HTTP methods a verifier declares in ``methods`` (default: POST only).

    ValueError for anything but a collection of HTTP method names, so the config loader
    refuses the plugin with its name instead of serving it wrong: ``methods = "POST"`` (a
    string) was the letters P, O, S, T, and every POST was answered 405."""
    declared = getattr(verifier, "methods", ("POST",))
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Iterable):
        raise ValueError(f"methods must be a set of HTTP method names such as {{'POST'}}, not {declared!r:.40}")
    methods = frozenset(method.upper() if isinstance(method, str) else method for method in declared)
    if not methods or not methods <= HTTP_METHODS:
        raise ValueError(f"methods must be HTTP method names ({', '.join(sorted(HTTP_METHODS))}), "
                         f"not {sorted(map(str, methods))!r:.80}")
    return methods


@runtime_checkable
class Decides(Protocol):
    """Optional: a verifier whose provider waits for a decision in the HTTP answer (Authgear's
    blocking events) lets a Kafka consumer take it, through a route's ``reply`` (README).

    The requests that wait are those ``verify`` answered with a :class:`Response` (its static
    decision, the fallback by default).  ``decide`` turns a consumer's answer into that
    response, refusing (``ValueError``, e.g. pydantic's, with a message safe to log) what the
    provider would reject; ``event`` is the :attr:`ProviderEvent.name` it answers, or ``None``
    for "any event" (a route's fallback, checked when the config loads).  The provider gives up
    after ``decision_deadline`` seconds, so a route's reply timeout must stay below it.
    """

    decision_deadline: ClassVar[float]

    def decide(self, event: str | None, answer: Any) -> Response: ...


def installed_verifiers() -> dict[str, EntryPoint]:
    """Every verifier installed in this environment, built-in ones included, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def verifier_name_clashes() -> dict[str, list[str]]:
    """Verifier names that several distributions register, with those distributions.

    Only one of them is loaded, and which depends on install order: a plugin named like a
    built-in (or like another plugin) would silently replace it.
    """
    registered: dict[str, set[str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registered.setdefault(ep.name, set()).add(ep.dist.name if ep.dist is not None else ep.value)
    return {name: sorted(dists) for name, dists in registered.items() if len(dists) > 1}
