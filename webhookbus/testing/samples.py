"""Correctly signed requests for every built-in scheme: for tests, ``webhookbus sign`` and ``make run``.

Each signer is written from the provider's documented algorithm, not from the verifier that
checks it, so a test pairing the two checks one reading of the docs against another.  A signer
is ``signer(options, secret, path, data=None) -> SignedRequest``: ``options`` is the verifier's
validated options model (header names, tolerances...), ``secret`` the key the sender signs
with, ``path`` the provider's configured path, and ``data=None`` asks for a realistic sample
payload.  Some schemes have several variants (UIP v1/v2, ZignSec legacy/timestamped...):
:data:`SIGNERS` maps verifier name -> variant -> signer, the first variant being the default.
A third-party plugin offers its own through the ``webhookbus.signers`` entry point group (a
signer, or a dict of them), which is how ``webhookbus sign`` reaches it.

TruValidate is the exception to "the sender signs with the provider's secret": the platform
signs with its own RSA key.  :data:`DEV_PLATFORM_KEY` is a published, test-only key
whose public half a test config lists in ``platform_keys`` (`make run` generates its own); the provider's secret (the service's
private key) is only used to encrypt the ``authorization`` variant's body to.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import inspect
import json
import os
import shlex
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlencode

from webhookbus.config import Provider, resolve_secret
from webhookbus.plugin import InboundRequest

SIGNER_ENTRY_POINT_GROUP = "webhookbus.signers"


class SignedRequest(NamedTuple):
    """What a provider would send: ``path`` includes any ``?query``; header names as the provider writes them.
    ``url`` is the public URL it was signed for, when the scheme signs one (else the listener's is assumed)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    url: str = ""

    def curl(self, base_url: str) -> str:
        """A shell-ready ``curl`` command posting this request to ``base_url`` (scheme://host:port)."""
        parts = ["curl", "-sS", "-i", "-X", self.method, base_url.rstrip("/") + self.path]
        for name, value in self.headers.items():
            parts += ["-H", f"{name}: {value}"]
        return shlex.join([*parts, "--data-binary", self.body.decode("utf-8", "replace")])

    def inbound(self, provider: str = "test", *, received_at: datetime | None = None,
                tls_peer: Mapping[str, Any] | None = None) -> InboundRequest:
        """The :class:`InboundRequest` the listener would build from this request, for unit tests."""
        raw_path, _, query = self.path.partition("?")
        return InboundRequest(
            provider=provider, method=self.method, path=unquote(raw_path), query=query, raw_path=raw_path,
            headers={name.lower(): value for name, value in self.headers.items()}, body=self.body,
            received_at=received_at or datetime.now(timezone.utc), client="127.0.0.1:40000", tls_peer=tls_peer,
            url=self.url or f"http://127.0.0.1:8080{self.path}",
        )


Signer = Callable[..., SignedRequest]

# Sample values for every environment variable config/webhookbus.yaml references: `make run`
# sets the ones that are unset.  Development only; never reuse them.
DEV_SECRETS = {
    "DEMO_WEBHOOK_SECRET": "dev-demo-secret-change-me",
    "UNLOQ_API_SECRET": "dev-unloq-api-secret",
    "UIP_WEBHOOK_SECRET": "dev-uip-webhook-secret",
    "ZIGNSEC_WEBHOOK_SECRET": "dev-zignsec-webhook-secret",
    "AUTHGEAR_WEBHOOK_SECRET": "dev-authgear-webhook-secret",
    "PII_HASH_KEY": "dev-pii-hash-key-change-me",
    "STANDARD_WEBHOOKS_SECRET": "whsec_" + base64.b64encode(b"dev-standard-webhooks-secret!!!!").decode(),
}

# A published RSA key standing in for TruValidate's platform signing key in development and
# tests.  Anyone can sign with it: never list its public half in a production config.
DEV_PLATFORM_KEY = b"""-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDfWtfSk3s0meSM
KheV3o+1uxMaD4W16iJc90yZ5+4/Egaz8+jykETOSdO+Jqsn/aXLXFU3J1cSy1zt
/7VLaqYtZn1wkbpgP/jOH25vfv0qKqzQ/i8f3DubuVhJYFTiGita/G9zhN1uODxy
7rQu+GgXwUP8DFxstoboty907C5FGpFdmY5OdBbWy1ZcNcwppe/cXEQbgtYs6zna
/sO6Jl/2YC2exuPfWQJt2ZPfJyrSu8uh7Jm98w6cyfekAdRNl1OANQTLV2rl9z2I
P7Q0XHainU7YrO577bsK85GqNPwaE+L7LFL//XOgSO9P7lSLxT+8MK7KkzlnSIjY
S5AU2XShAgMBAAECggEAIauIoHJiHtZaKTUJNCsGX/9xDDstzXQbtQcEsajQdgqK
HyOUSMitzqk7dc1PfOpUTXlAUV2pVyh3/FrRYiqUHYD3RPp67ZqHL892LvGmSW6A
ecrvoK5q//krUXhno2QNiBxI0tHDLaPlnO/WEsSYsIgObxcP8cV8ReWjjk0yVnE4
OSf/oDZiQYAFlQxjZakfknUstCQQJq3mngJ5k/j117/EYBNopTDODQrGuusIDv0R
zx8HI1UXQOha1zjGI1mWVYVobe8vAeKtKjq7+QqH7ES7K12dHZUdoHQ2CZeb+BK1
10gTmG2Hr6QdU1CzPPcuJej4KG78mf4P48qAeC4GHwKBgQD3QW/somaFmTDauSqH
SERMrQsaa26i98vNGAezKetQ5IBw5scU0i2CaADC/nZrx9J0XTt0yNYlDVcyJ26I
mUg5vxdPZ5kgr2JEt31d2C2SxXtZc4M+nYHLzaaI9KO4oqbRZqF6iFQd5lbqawak
dPQSNywvMzW6P1pNgG0h6ERXlwKBgQDnQQRcx2cy2GiwwVK/2H4zHL6ZWTOB5Y7Q
W4wE2jjcceBAkHZ32qsSoBTBwLvc+9PGMZX+nGjOnJVBErU7PzFZPI5CeRDwQc9j
yJzCZOBqcbjwF/aCw3Q1Q/btiEuBlh1M0NrxiZOXb3PuVuEeIlZTLkKlq/zUhj81
6x404/NchwKBgGkZDosmKK/nAsYl6Pbh9+4jq9GKEtgAvkcqTLOSQOz8g7/5yGuI
P0HsFU7NPObpZAKEUq58Y9ISDptJ+YjkpretCyp8XbFv+zQ8TnSiXBTEDn9iQ0pN
RwurGXujiSgFMyVVG5Rq+F5RN2ajIYqsD8biXsydVtwY67h/u2OrR8l3AoGBAJeS
MtTI0agu1bd8jss1j8nafkaug6cRGiEQz95iVcCPVweaaDu4dEZZ7CDuPXPjDvQp
jgF67Or3EJC9PVIe4i52FVwWU/bVe6QQWkbDrZ+2+BtN6YHdr+41pMQdgDfodz3g
6pBDtxwbreW6xgRlRyVv/bju2GFHuGiTuZG7EshDAoGBAJm9wHnZRvrM/12DFlnR
wwrc4pSwMLBbvnwlrFSEPjAaFIppXSm19quBfavFxudLErY5q+6KLYgeE6NYEL4l
Z2SplXiRC7+wZvfRnzxozaOcO0JmXFFoef7fDvpYdfU5wKURkUmZYrPfr9/ad8UC
STJkyryN+HkkqR8vudYNMpne
-----END PRIVATE KEY-----
"""


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def _now() -> str:
    return str(int(time.time()))


def sign_hmac(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """Generic: ``options.header = options.prefix + hex|base64(HMAC-SHA256(secret, body))``."""
    body = _json(data if data is not None else {"type": "user.created", "id": f"evt_{uuid.uuid4().hex[:12]}",
                                                "user": {"id": "u_42"}})
    digest = _mac(secret, body)
    text = digest.hex() if options.encoding == "hex" else base64.b64encode(digest).decode()
    return SignedRequest("POST", path, {"Content-Type": "application/json", options.header: options.prefix + text}, body)


def _js_string(value: Any) -> str:
    """``String(value)`` in JavaScript for the scalars UNLOQ sends (its reference code is Node)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _unloq(hook: str, sample: dict[str, Any]) -> Signer:
    def sign(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
        """UNLOQ: base64 HMAC of ``path?query`` + each POST field, sorted by key, as key + value."""
        fields = {key: _js_string(value) for key, value in (data if data is not None else sample).items()}
        segment = next((s for s, name in options.hooks.items() if name == hook), hook)
        target = f"{path.rstrip('/')}/{segment}"
        signed = target + "".join(key + fields[key] for key in sorted(fields))
        signature = base64.b64encode(_mac(secret, signed.encode())).decode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Unloq-Signature": signature}
        return SignedRequest("POST", target, headers, urlencode(fields).encode())

    return sign


def _uip_sample(data: Any, event: str) -> tuple[str, bytes]:
    samples = {
        "identify": {"event": "identify", "data": {"uip_id": "uip_7", "audit_id": f"aud_{uuid.uuid4().hex[:10]}",
                                                   "name": "Ada Example", "country_of_origin": "SE"}},
        "session.completed": {"event": "session.completed", "session_id": f"ses_{uuid.uuid4().hex[:10]}",
                              "client_reference_id": "customer-17", "status": "completed"},
    }
    payload = data if data is not None else samples[event]
    return str(payload.get("event", event)) if isinstance(payload, dict) else event, _json(payload)


def sign_uip_v1(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """UIP v1: ``X-UIP-Signature`` = lowercase hex HMAC-SHA256 of the raw body."""
    _, body = _uip_sample(data, "identify")
    headers = {"Content-Type": "application/json", "X-UIP-Signature": _mac(secret, body).hex()}
    return SignedRequest("POST", path, headers, body)


def sign_uip_v2(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """UIP v2: hex HMAC of ``"{timestamp}.{body}"``, event and delivery id in their own headers."""
    event, body = _uip_sample(data, "session.completed")
    timestamp = _now()
    headers = {"Content-Type": "application/json", "X-UIP-Event": event, "X-UIP-Timestamp": timestamp,
               "X-UIP-Delivery-Id": f"dlv_{uuid.uuid4().hex[:12]}",
               "X-UIP-Signature": _mac(secret, f"{timestamp}.".encode() + body).hex()}
    return SignedRequest("POST", path, headers, body)


_ZIGNSEC_SAMPLE = {"event": "session_updated", "integration_id": "int-1", "relay_state": "order-5",
                   "workflow_session_id": None, "result": {"status": "Finished", "errors": []}}


def _zignsec_body(data: Any) -> bytes:
    return _json(data if data is not None else {**_ZIGNSEC_SAMPLE, "id": str(uuid.uuid4())})


def sign_zignsec(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """ZignSec current: ``t=<unix>,v1=<hex HMAC of "{t}.{body}">``."""
    body, timestamp = _zignsec_body(data), _now()
    header = f"t={timestamp},v1={_mac(secret, f'{timestamp}.'.encode() + body).hex()}"
    return SignedRequest("POST", path, {"Content-Type": "application/json", "X-ZignSec-Hmac-SHA256": header}, body)


def sign_zignsec_legacy(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """ZignSec legacy: base64 HMAC-SHA256 of the raw body."""
    body = _zignsec_body(data)
    header = base64.b64encode(_mac(secret, body)).decode()
    return SignedRequest("POST", path, {"Content-Type": "application/json", "X-ZignSec-Hmac-SHA256": header}, body)


def _authgear(event: str) -> Signer:
    def sign(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
        """Authgear: ``x-authgear-body-signature`` = lowercase hex HMAC-SHA256 of the raw body."""
        body = _json(data if data is not None else {
            "id": str(uuid.uuid4()), "seq": 1, "type": event,
            "payload": {"user": {"id": "user-1", "standard_attributes": {"email": "ada@example.com"}}},
            "context": {"timestamp": int(time.time()), "user_id": "user-1", "triggered_by": "user",
                        "language": "en", "preferred_languages": ["en"]},
        })
        headers = {"Content-Type": "application/json", "x-authgear-body-signature": _mac(secret, body).hex()}
        return SignedRequest("POST", path, headers, body)

    return sign


def sign_standardwebhooks(options: Any, secret: bytes, path: str, data: Any = None) -> SignedRequest:
    """Standard Webhooks: ``v1,<base64 HMAC of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded secret."""
    key = base64.b64decode(secret.strip().removeprefix(b"whsec_") + b"==")
    body = _json(data if data is not None else {
        "type": "user.created", "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": {"id": "user_42", "email": "ada@example.com"}})
    message_id, timestamp = f"msg_{uuid.uuid4().hex}", _now()
    signature = base64.b64encode(_mac(key, f"{message_id}.{timestamp}.".encode() + body)).decode()
    prefix = options.header_prefix
    headers = {"Content-Type": "application/json", f"{prefix}id": message_id, f"{prefix}timestamp": timestamp,
               f"{prefix}signature": f"v1,{signature}"}
    return SignedRequest("POST", path, headers, body)


def launchkey_kid(public_key: Any) -> str:
    """The LaunchKey SDKs' key id: MD5 of the DER SubjectPublicKeyInfo, as colon-separated hex."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _platform_kid(options: Any, platform_key: Any) -> str:
    """The kid under which ``options.platform_keys`` lists this key (by file content), else its fingerprint."""
    from cryptography.hazmat.primitives import serialization

    own = platform_key.public_key().public_numbers()
    listed = options.platform_keys.items() if isinstance(options.platform_keys, dict) else []
    for kid, path in listed:
        try:
            if serialization.load_pem_public_key(Path(path).read_bytes()).public_numbers() == own:
                return str(kid)
        except (OSError, ValueError):
            continue
    return launchkey_kid(platform_key.public_key())


@functools.lru_cache(maxsize=16)
def _jwk(pem: bytes) -> Any:
    """A parsed PEM key; cached, as parsing (and checking) an RSA private key takes milliseconds."""
    from jwcrypto import jwk

    return jwk.JWK.from_pem(pem)


def _truvalidate(event: str) -> Signer:
    def sign(options: Any, secret: bytes, path: str, data: Any = None, *,
             platform_key: bytes | None = None, kid: str | None = None) -> SignedRequest:
        """TruValidate: an RS256 JWT from the platform binding method, path and SHA-256 of the body.

        ``secret`` is the service's key (private or public PEM): the ``authorization`` variant's
        body is a JWE (RSA-OAEP-256, A256GCM) encrypted to it, as the platform encrypts
        authorization responses.  ``platform_key`` signs (default: see :func:`_platform_signing_key`);
        ``kid`` overrides the key id.
        """
        from cryptography.hazmat.primitives import serialization
        from jwcrypto import jwe, jws

        if event == "authorization":
            payload = data if data is not None else {
                "auth_request": str(uuid.uuid4()), "type": "AUTHORIZED", "reason": "APPROVED", "denial_reason": None,
                "device_id": "device-1", "service_pins": ["1234"], "service_user_hash": "user-hash-1"}
            service = _jwk(secret)
            service_public = serialization.load_pem_public_key(service.export_to_pem())
            header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": launchkey_kid(service_public)}
            token = jwe.JWE(_json(payload), protected=header)
            token.add_recipient(service)
            body, content_type = token.serialize(compact=True).encode(), "application/jose"
        else:
            body = _json(data if data is not None else {"service_user_hash": "user-hash-1", "api_time": int(time.time())})
            content_type = "application/json"
        now = int(time.time())
        claims = {"iss": "lka", "aud": options.audience, "sub": options.audience, "iat": now, "nbf": now,
                  "exp": now + 5, "jti": str(uuid.uuid4()),
                  "request": {"meth": "POST", "path": path, "func": "S256", "hash": hashlib.sha256(body).hexdigest()}}
        jwt = jws.JWS(_json(claims))
        signer_key = _jwk(platform_key or _platform_signing_key(options))
        jwt.add_signature(signer_key, alg="RS256", protected={
            "alg": "RS256", "typ": "JWT", "kid": kid or _platform_kid(options, signer_key.get_op_key("sign"))})
        return SignedRequest("POST", path, {"Content-Type": content_type, "X-IOV-JWT": jwt.serialize(compact=True)}, body)

    return sign


def _platform_signing_key(options: Any) -> bytes:
    """``platform-signing.pem`` beside the first configured platform key, as `make run` writes it
    (a key made on this machine, so nobody else can sign for its listener); else the published
    :data:`DEV_PLATFORM_KEY` that tests configure."""
    listed = options.platform_keys.values() if isinstance(options.platform_keys, dict) else options.platform_keys
    for path in list(listed)[:1]:
        beside = Path(path).with_name("platform-signing.pem")
        if beside.exists():
            return beside.read_bytes()
    return DEV_PLATFORM_KEY


def dev_platform_public_pem(private_pem: bytes = DEV_PLATFORM_KEY) -> bytes:
    """The public half of a platform key (by default :data:`DEV_PLATFORM_KEY`), for ``platform_keys``."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_private_pem() -> bytes:
    """A fresh 2048-bit RSA private key, PEM (PKCS#8), for development and test key files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# Key files config/webhookbus.yaml names (relative to where `make run` runs), generated once, in
# this order: a platform signing key standing in for TruValidate's (the sample signer finds it
# beside platform.pem), its public half, and the service's key.
DEV_FILES: dict[str, Callable[[], bytes]] = {
    ".dev/truvalidate/platform-signing.pem": new_private_pem,
    ".dev/truvalidate/platform.pem": lambda: dev_platform_public_pem(
        Path(".dev/truvalidate/platform-signing.pem").read_bytes()),
    ".dev/truvalidate/service.pem": new_private_pem,
}


def install_dev_secrets() -> list[str]:
    """Provide `make run`'s sample secrets: every unset variable of :data:`DEV_SECRETS`, and every
    missing file of :data:`DEV_FILES` (existing ones are kept).  Returns the files it created."""
    for name, value in DEV_SECRETS.items():
        os.environ.setdefault(name, value)
    created = []
    for name, make in DEV_FILES.items():
        path = Path(name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(make())
            path.chmod(0o600)
            created.append(name)
    return created


SIGNERS: dict[str, dict[str, Signer]] = {
    "hmac": {"default": sign_hmac},
    "unloq": {"logout": _unloq("logout", {"unloq_id": 12345, "sid": "sess-abc"}),
              "account": _unloq("account", {"unloq_id": 12345, "email": "ada@example.com", "ip": "192.0.2.7"})},
    "uip": {"v1": sign_uip_v1, "v2": sign_uip_v2},
    "truvalidate": {"session_end": _truvalidate("session_end"), "authorization": _truvalidate("authorization")},
    "zignsec": {"timestamped": sign_zignsec, "legacy": sign_zignsec_legacy},
    "authgear": {"user.created": _authgear("user.created"), "user.pre_create": _authgear("user.pre_create")},
    "standardwebhooks": {"default": sign_standardwebhooks},
}


def signers_for(verifier: str) -> dict[str, Signer]:
    """Variant name -> signer for a verifier, built-in or offered by a plugin; empty if none is known."""
    if verifier in SIGNERS:
        return SIGNERS[verifier]
    for entry in entry_points(group=SIGNER_ENTRY_POINT_GROUP, name=verifier):
        found = entry.load()
        return dict(found) if isinstance(found, Mapping) else {"default": found}
    return {}


def sample_request(provider: Provider, data: Any = None, variant: str | None = None,
                   url: str | None = None) -> SignedRequest | None:
    """A request signed for ``provider`` with its first secret, or None if no signer is known.

    ``url`` is the public URL the request will be verified at (``InboundRequest.url`` of the
    listener), passed to a signer that takes a ``url`` keyword: a URL-signing scheme signs it.
    Raises ``KeyError`` for an unknown variant and ``ValueError`` when a secret cannot be read.
    """
    signers = signers_for(provider.settings.verifier)
    if not signers:
        return None
    signer = signers[variant] if variant is not None else next(iter(signers.values()))
    secrets = provider.settings.secrets
    secret = bytes(resolve_secret(secrets[0])) if secrets else b""
    if url is not None and "url" in inspect.signature(signer).parameters:
        return signer(provider.options, secret, provider.path, data, url=url)
    return signer(provider.options, secret, provider.path, data)
