"""``truvalidate``: TransUnion TruValidate Multifactor (formerly iovation LaunchKey) webhooks.

Each request carries a JWT, ``X-IOV-JWT: <jwt>`` or ``Authorization: IOV-JWT <jwt>``, signed
RS256/384/512 by one of the platform's keys (header ``kid``).  Its ``request`` claim binds the
method, the path and a SHA-2 digest of the raw body, so the JWT authenticates the whole request.
Authorization responses arrive as a compact JWE encrypted to the service's own RSA key: the
provider ``secrets`` are those PEM private keys (several during a rotation).

Platform keys are configured, never fetched: ``platform_keys`` maps kid -> PEM path, or lists PEM
paths whose kid is derived as the LaunchKey SDKs derive it (MD5 of the DER public key, as
colon-separated hex); ``platform_jwks`` adds a JWKS file.  Key expiry is deliberately not checked:
the platform may sign with a key that expired after the triggering request was made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from jwcrypto import jwe, jwk, jws
from pydantic import Field

from webhookbus.plugin import (
    Accepted, InboundRequest, MalformedPayload, ProviderEvent, Secrets, VerificationFailed, VerifierOptions, parse_json,
)

logger = logging.getLogger("webhookbus.verifiers.truvalidate")

ISSUER = "lka"
JWS_ALGS = ("RS256", "RS384", "RS512")
JWE_ALGS = ["RSA-OAEP", "RSA-OAEP-256", "A256GCM", "A256CBC-HS512"]
BODY_HASHES = {"S256": hashlib.sha256, "S384": hashlib.sha384, "S512": hashlib.sha512}
USER_FIELDS = ("user_push_id", "service_user_hash", "device_id")
_COMPACT_JWE = re.compile(rb"\s*[\w-]+\.[\w-]+\.[\w-]+\.[\w-]+\.[\w-]+\s*", re.ASCII)
_DN_NAMES = {"commonname": "CN", "organizationname": "O", "organizationalunitname": "OU", "localityname": "L",
             "stateorprovincename": "ST", "countryname": "C"}


class TruValidateOptions(VerifierOptions):
    audience: str = Field(pattern=r"^(svc|dir):[0-9a-fA-F-]{36}$",
                          description="This service's id as the JWT aud/sub: 'svc:<uuid>' (or 'dir:<uuid>').")
    platform_keys: dict[str, str] | list[str] = Field(
        default_factory=list, description="kid -> PEM path, or PEM paths whose kid is their LaunchKey fingerprint.")
    platform_jwks: str | None = Field(None, description="Path to a JWKS file of further platform keys.")
    leeway_seconds: float = Field(5, ge=0, description="Clock leeway for nbf/exp/iat, as the LaunchKey SDKs allow.")
    client_subject: str | None = Field(None, description="Required mutual-TLS client certificate subject (RFC 4514).")


def launchkey_kid(key: jwk.JWK) -> str:
    """The SDKs' key id: MD5 of the DER SubjectPublicKeyInfo, colon-separated lowercase hex."""
    pem = key.export_to_pem().decode()
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class TruValidateVerifier:
    Options = TruValidateOptions
    # What the README's PII paragraph lists: `webhookbus check` warns of a route sending them unruled.
    pii_fields: ClassVar[tuple[str, ...]] = (
        "subject", "data.service_user_hash", "data.org_user_hash", "data.user_push_id", "data.device_id",
        "data.service_pins", "data.reason", "data.denial_reason",
    )

    def __init__(self, options: TruValidateOptions, secrets: Secrets, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock`` exists for tests replaying recorded requests; the listener never passes it."""
        self.options = options
        self.audience = options.audience.lower()
        self.clock = clock
        self.platform_keys = _platform_keys(options)
        self.service_keys: list[tuple[str, jwk.JWK]] = []
        for index, secret in enumerate(secrets):
            try:
                key = jwk.JWK.from_pem(secret)
            except Exception:  # noqa: BLE001 - never echo the secret
                raise ValueError(f"truvalidate secret #{index + 1} is not a PEM RSA private key") from None
            if key.get("kty") != "RSA" or not key.has_private:
                raise ValueError(f"truvalidate secret #{index + 1} is not a PEM RSA private key")
            self.service_keys.append((launchkey_kid(key), key))
        self.client_subject = _dn_pairs(options.client_subject) if options.client_subject else None

    def verify(self, request: InboundRequest) -> Accepted:
        self._check_client(request)
        claims = self._verified_claims(_token(request), request)
        body = request.body
        encrypted = request.content_type in ("application/jose", "application/jwe") or _COMPACT_JWE.fullmatch(body)
        if encrypted:
            body = self._decrypt(body)
        try:
            data, data_json = parse_json(body) if body.strip() else (None, None)  # empty is allowed: its hash matched
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MalformedPayload(f"{'decrypted ' if encrypted else ''}body is not valid JSON") from None
        return Accepted(_event(data, data_json, claims))

    def _check_client(self, request: InboundRequest) -> None:
        if self.client_subject is None:
            return
        subject = (request.tls_peer or {}).get("subject")
        if not subject:
            raise VerificationFailed("client certificate required")
        if _dn_pairs(subject) != self.client_subject:
            raise VerificationFailed("client certificate subject is not the configured one")

    def _verified_claims(self, token: str, request: InboundRequest) -> dict[str, Any]:
        parts = token.split(".")
        header = _b64json(parts[0]) if len(parts) == 3 else None
        if not isinstance(header, dict):
            raise VerificationFailed("IOV-JWT is not a compact JWS")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in JWS_ALGS:
            raise VerificationFailed("IOV-JWT alg must be RS256, RS384 or RS512")
        key = self.platform_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise VerificationFailed("IOV-JWT kid is not a configured platform key")
        try:
            signed = jws.JWS()
            signed.allowed_algs = [alg]
            signed.deserialize(token, key, alg)
            claims = json.loads(signed.payload)
        except Exception:  # noqa: BLE001 - jwcrypto raises many types on hostile input
            raise VerificationFailed("IOV-JWT signature does not verify") from None
        if not isinstance(claims, dict):
            raise VerificationFailed("IOV-JWT claims are not an object")
        self._check_claims(claims, request)
        return claims

    def _check_claims(self, claims: dict[str, Any], request: InboundRequest) -> None:
        if claims.get("iss") != ISSUER:
            raise VerificationFailed(f"IOV-JWT iss is not {ISSUER!r}")
        for name in ("aud", "sub"):
            if claims.get(name) != self.audience:
                raise VerificationFailed(f"IOV-JWT {name} is not this service ({self.audience})")
        now, leeway = self.clock(), self.options.leeway_seconds
        nbf, exp, iat = (_number(claims, name) for name in ("nbf", "exp", "iat"))
        if nbf > now + leeway:
            raise VerificationFailed(f"IOV-JWT is not valid for another {int(nbf - now)} s (nbf)")
        if exp < now - leeway:
            raise VerificationFailed(f"IOV-JWT expired {int(now - exp)} s ago")
        if iat > now + leeway:
            raise VerificationFailed(f"IOV-JWT was issued {int(iat - now)} s in the future")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise VerificationFailed("IOV-JWT has no jti")
        bound = claims.get("request")
        if not isinstance(bound, dict):
            raise VerificationFailed("IOV-JWT has no request claim")
        if bound.get("meth") != request.method.upper():
            raise VerificationFailed("IOV-JWT was issued for another HTTP method")
        if bound.get("path") not in (request.path, request.raw_target):
            raise VerificationFailed("IOV-JWT was issued for another path")
        hasher, claimed = BODY_HASHES.get(bound.get("func")), bound.get("hash")  # type: ignore[arg-type]
        if hasher is None or not isinstance(claimed, str):
            raise VerificationFailed("IOV-JWT request claim lacks func S256/S384/S512 and hash")
        if not hmac.compare_digest(claimed.lower().encode(), hasher(request.body).hexdigest().encode()):
            raise VerificationFailed("body does not match the IOV-JWT hash")

    def _decrypt(self, body: bytes) -> bytes:
        text = body.decode("ascii", "replace").strip()
        header = _b64json(text.split(".")[0])
        kid = header.get("kid") if isinstance(header, dict) else None
        if not isinstance(header, dict) or "zip" in header:
            raise VerificationFailed("cannot decrypt the body: not a compact JWE this service accepts")
        keys = [(i, key) for i, (key_id, key) in enumerate(self.service_keys) if key_id == kid]
        for index, key in keys or enumerate(key for _, key in self.service_keys):
            token = jwe.JWE()
            token.allowed_algs = JWE_ALGS
            try:
                token.deserialize(text, key)
            except Exception:  # noqa: BLE001 - wrong key or hostile input: both mean "not for us"
                continue
            logger.debug("decrypted with service key", extra={"secret_index": index})
            return token.payload
        raise VerificationFailed("cannot decrypt the body with any configured service key")


def _platform_keys(options: TruValidateOptions) -> dict[str, jwk.JWK]:
    """Every configured platform public key by kid; an unreadable file is a config error."""
    keys: dict[str, jwk.JWK] = {}
    paths = options.platform_keys.items() if isinstance(options.platform_keys, dict) else (
        (None, path) for path in options.platform_keys)
    for kid, path in paths:
        try:
            key = jwk.JWK.from_pem(Path(path).read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read platform key file {path}: {exc.strerror}") from None
        except Exception:  # noqa: BLE001
            raise ValueError(f"platform key file {path} holds no PEM RSA key") from None
        keys[kid or launchkey_kid(key)] = _public_rsa(key, path)
    if options.platform_jwks:
        try:
            keyset = jwk.JWKSet.from_json(Path(options.platform_jwks).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read platform JWKS {options.platform_jwks}: {exc.strerror}") from None
        except Exception:  # noqa: BLE001
            raise ValueError(f"platform JWKS {options.platform_jwks} is not a JWK set") from None
        for key in keyset["keys"]:
            keys[key.get("kid") or launchkey_kid(key)] = _public_rsa(key, options.platform_jwks)
    if not keys:
        raise ValueError("truvalidate needs at least one platform key (platform_keys or platform_jwks)")
    return keys


def _public_rsa(key: jwk.JWK, path: str) -> jwk.JWK:
    if key.get("kty") != "RSA":
        raise ValueError(f"platform key in {path} is not an RSA key")
    return jwk.JWK(**key.export_public(as_dict=True))


def _token(request: InboundRequest) -> str:
    token = request.headers.get("x-iov-jwt")
    if token is None:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "iov-jwt":
            raise VerificationFailed("missing X-IOV-JWT or Authorization: IOV-JWT header")
    return token.strip()


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VerificationFailed(f"IOV-JWT has no numeric {name}")
    return value


def _moment(value: Any) -> datetime | None:
    """``api_time`` as ISO-8601 or unix seconds; ``None`` when unreadable (it is not security relevant)."""
    try:
        if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
            moment = datetime.fromisoformat(value.strip())
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _event(data: Any, data_json: bytes | None, claims: dict[str, Any]) -> ProviderEvent:
    record = data if isinstance(data, dict) else {}
    if record.get("type") == "DEVICE_LINK_COMPLETION":
        name = "device_link_completion"
    elif "auth_request" in record:
        name = "authorization_response"
    elif "service_user_hash" in record and "api_time" in record:
        name = "session_end"
    else:
        name = "unknown"
    fields = ("service_user_hash",) if name == "session_end" else USER_FIELDS
    subject = next((record[f] for f in fields if isinstance(record.get(f), str) and record[f]), None)
    time_ = _moment(record.get("api_time")) or _moment(claims["iat"])
    return ProviderEvent(name=name, data=data, id=claims["jti"], subject=subject, time=time_, data_json=data_json)


def _dn_pairs(subject: Any) -> tuple[tuple[str, str], ...] | None:
    """A certificate subject as sorted (attribute, lower-cased value) pairs, so that RFC 4514 strings
    (any RDN order; ``\\,``, ``\\2C``, ``x5C,`` or even an unescaped comma in a value), OpenSSL's
    one-line ``/C=US/.../CN=...`` and the ``ssl`` module's nested tuples compare equal.
    ``None`` if the shape is not a subject."""
    if isinstance(subject, str):
        text = re.sub(r"x5c,|\\2c", r"\\,", subject.strip(), flags=re.IGNORECASE)
        sep = "/" if text.startswith("/") else ","
        pairs: list[tuple[str, str]] = []
        for part in re.split(rf"(?<!\\){sep}", text.removeprefix("/")):
            name, eq, value = part.partition("=")
            if not eq and pairs:  # "O=iovation, Inc." printed unescaped: the separator belongs to the value
                pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]}{sep}{part}")
            else:
                pairs.append((name, value))
    elif isinstance(subject, list | tuple):
        try:
            pairs = [(str(name), str(value)) for rdn in subject for name, value in rdn]
        except (TypeError, ValueError):
            return None
    else:
        return None
    normal = ((_DN_NAMES.get(n.strip().lower(), n.strip().upper()), re.sub(r"\\(.)", r"\1", v).strip().lower())
              for n, v in pairs)
    return tuple(sorted(normal))
