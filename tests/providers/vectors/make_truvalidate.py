"""Write ``truvalidate.json``: TruValidate (LaunchKey) webhook requests signed and encrypted
without jwcrypto, so the verifier is checked against an independent JOSE implementation.

JWTs are signed with PyJWT; JWEs are assembled here by hand from RFC 7516/7518 with
``cryptography`` primitives (RSA-OAEP, AES-GCM, AES-CBC + HMAC-SHA-512).  Key ids are computed
as the LaunchKey SDKs do: MD5 of the DER SubjectPublicKeyInfo, colon-separated lowercase hex.

The recorded JWTs expire a few seconds after ``iat`` like real ones, so each case stores the
``now`` at which it was made; the tests replay it through the verifier's ``clock`` argument.
The tests import the builders below for their fresh (time-of-test) requests.

Regenerate with ``python tests/providers/vectors/make_truvalidate.py`` (new keys each run).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

OUT = Path(__file__).with_name("truvalidate.json")
BODY_HASHES = {"S256": hashlib.sha256, "S384": hashlib.sha384, "S512": hashlib.sha512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def kid(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.md5(der).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def claims(audience: str, method: str, path: str, body: bytes, now: int, func: str = "S256", **extra: Any) -> dict:
    """LaunchKey's webhook JWT claims: exp five seconds after iat, as the platform issues them."""
    return {"iss": "lka", "aud": audience, "sub": audience, "iat": now, "nbf": now, "exp": now + 5,
            "jti": str(uuid.uuid4()),
            "request": {"meth": method, "path": path, "func": func, "hash": BODY_HASHES[func](body).hexdigest()},
            **extra}


def sign(key: rsa.RSAPrivateKey, payload: dict, alg: str = "RS256", key_id: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": key_id or kid(key)})


def encrypt(key: rsa.RSAPrivateKey, plaintext: bytes, alg: str = "RSA-OAEP", enc: str = "A256GCM",
            key_id: str | None = "derive") -> bytes:
    """A compact JWE (RFC 7516 section 7.1) to ``key``'s public half."""
    header: dict[str, str] = {"alg": alg, "enc": enc}
    if key_id is not None:
        header["kid"] = kid(key) if key_id == "derive" else key_id
    protected = b64url(json.dumps(header).encode())
    aad = protected.encode()
    sha = hashes.SHA1() if alg == "RSA-OAEP" else hashes.SHA256()
    if enc == "A256GCM":
        cek, iv = os.urandom(32), os.urandom(12)
        sealed = AESGCM(cek).encrypt(iv, plaintext, aad)
        ciphertext, tag = sealed[:-16], sealed[-16:]
    else:  # A256CBC-HS512, RFC 7518 section 5.2.2
        cek, iv = os.urandom(64), os.urandom(16)
        mac_key, enc_key = cek[:32], cek[32:]
        padder = padding.PKCS7(128).padder()
        encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
        tag = hmac.new(mac_key, aad + iv + ciphertext + struct.pack(">Q", len(aad) * 8), hashlib.sha512).digest()[:32]
    encrypted_key = key.public_key().encrypt(cek, asym.OAEP(asym.MGF1(sha), sha, None))
    return ".".join([protected, b64url(encrypted_key), b64url(iv), b64url(ciphertext), b64url(tag)]).encode()


def build() -> dict:
    platform_old, platform_new, service_old, service_new = (new_key() for _ in range(4))
    service = f"svc:{uuid.uuid4()}"
    directory = f"dir:{uuid.uuid4()}"
    now = 1767225600  # 2026-01-01T00:00:00Z
    path = "/webhooks/truvalidate"
    cases = []

    def case(name: str, audience: str, body: bytes, token: str, content_type: str, expect: dict, **extra: Any) -> None:
        cases.append({"name": name, "audience": audience, "now": now + 1, "method": "POST", "path": path,
                      "headers": {"content-type": content_type, **extra.pop("headers", {"x-iov-jwt": token})},
                      "body": body.decode(), "expect": expect})

    session_end = {"service_user_hash": "a1b2c3d4e5f6", "api_time": "2026-01-01T00:00:00Z"}
    body = json.dumps(session_end).encode()
    token = sign(platform_old, claims(service, "POST", path, body, now), "RS256")
    case("session_end, plain JSON, RS256 by the older platform key, Authorization: IOV-JWT", service, body, token,
         "application/json", {"name": "session_end", "subject": "a1b2c3d4e5f6", "time": "2026-01-01T00:00:00Z",
                              "data": session_end}, headers={"authorization": f"IOV-JWT {token}"})

    auth = {"auth_request": str(uuid.uuid4()), "type": "AUTHORIZED", "reason": "APPROVED", "denial_reason": None,
            "service_user_hash": "f6e5d4", "user_push_id": "push-123", "org_user_hash": "0a0b",
            "device_id": str(uuid.uuid4()), "service_pins": ["1234", "2345"]}
    body = encrypt(service_old, json.dumps(auth).encode(), "RSA-OAEP", "A256CBC-HS512")
    case("authorization_response, JWE RSA-OAEP + A256CBC-HS512 to the older service key, RS512/S512", service,
         body, sign(platform_new, claims(service, "POST", path, body, now, "S512"), "RS512"), "application/jose",
         {"name": "authorization_response", "subject": "push-123", "time": "2026-01-01T00:00:00Z", "data": auth})

    denied = {**auth, "type": "DENIED", "reason": "FRAUDULENT", "user_push_id": None}
    body = encrypt(service_new, json.dumps(denied).encode(), "RSA-OAEP-256", "A256GCM", key_id=None)
    case("authorization_response, JWE RSA-OAEP-256 + A256GCM, no JWE kid, RS384/S384", service,
         body, sign(platform_new, claims(service, "POST", path, body, now, "S384"), "RS384"), "application/jose",
         {"name": "authorization_response", "subject": "f6e5d4", "time": "2026-01-01T00:00:00Z", "data": denied})

    link = {"type": "DEVICE_LINK_COMPLETION", "device_id": str(uuid.uuid4()), "device_public_key": "-----BEGIN...",
            "device_public_key_id": "00:11:22"}
    body = encrypt(service_new, json.dumps(link).encode())
    case("device_link_completion to a directory, JWE RSA-OAEP + A256GCM", directory, body,
         sign(platform_new, claims(directory, "POST", path, body, now)), "application/jose",
         {"name": "device_link_completion", "subject": link["device_id"], "time": "2026-01-01T00:00:00Z",
          "data": link})

    for item in cases:
        token = item["headers"].get("x-iov-jwt") or item["headers"]["authorization"].split(" ", 1)[1]
        item["expect"]["id"] = jwt.decode(token, options={"verify_signature": False})["jti"]
    return {
        "comment": "Generated by make_truvalidate.py with PyJWT + cryptography; test keys only.",
        "platform_public_keys": [public_pem(k).decode() for k in (platform_old, platform_new)],
        "platform_kids": [kid(k) for k in (platform_old, platform_new)],
        "service_private_keys": [private_pem(k).decode() for k in (service_old, service_new)],
        "cases": cases,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
