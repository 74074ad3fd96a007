"""TruValidate (LaunchKey) verifier: JWT-bound requests, JWE bodies, key rotation, mutual TLS.

Every token and JWE here is made by PyJWT and ``cryptography`` (see vectors/make_truvalidate.py),
never by jwcrypto, which the verifier uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import jwt
import pytest
from jwt.algorithms import RSAAlgorithm

from webhookbus.events import normalize
from webhookbus.plugin import InboundRequest, MalformedPayload, VerificationFailed
from webhookbus.verifiers.truvalidate import TruValidateOptions, TruValidateVerifier

VECTORS = Path(__file__).parent / "vectors"
_spec = importlib.util.spec_from_file_location("make_truvalidate", VECTORS / "make_truvalidate.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)  # type: ignore[union-attr]

SERVICE = f"svc:{uuid.uuid4()}"
PATH = "/webhooks/truvalidate"
SESSION_END = {"service_user_hash": "hash-1", "api_time": 1767225600}


@pytest.fixture(scope="module")
def keys():
    """platform old/new (they sign), service old/new (we decrypt), stranger (nobody configured)."""
    return {name: make.new_key() for name in ("platform_old", "platform_new", "service_old", "service_new", "stranger")}


@pytest.fixture
def pem_paths(keys, tmp_path):
    paths = []
    for name in ("platform_old", "platform_new"):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(make.public_pem(keys[name]))
        paths.append(str(path))
    return paths


@pytest.fixture
def verifier(keys, pem_paths):
    secrets = [make.private_pem(keys["service_old"]), make.private_pem(keys["service_new"])]
    return TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=pem_paths), secrets)


def request(body: bytes, token: str | None, *, method: str = "POST", path: str = PATH, query: str = "",
            content_type: str = "application/json", header: str = "x-iov-jwt", tls_peer=None) -> InboundRequest:
    headers = {"content-type": content_type}
    if token is not None:
        headers[header] = token if header == "x-iov-jwt" else f"IOV-JWT {token}"
    return InboundRequest(provider="truvalidate", method=method, path=path, query=query, headers=headers, body=body,
                          received_at=datetime.now(timezone.utc), tls_peer=tls_peer)


def signed(keys, body: bytes, signer: str = "platform_new", alg: str = "RS256", **overrides) -> str:
    payload = make.claims(SERVICE, "POST", PATH, body, int(time.time()))
    payload.update(overrides)
    return make.sign(keys[signer], payload, alg)


def body_of(data) -> bytes:
    return json.dumps(data).encode()


# --- committed vectors, replayed at the time they were made -----------------------------------------

VECTOR_FILE = json.loads((VECTORS / "truvalidate.json").read_text())


@pytest.mark.parametrize("case", VECTOR_FILE["cases"], ids=lambda case: case["name"])
def test_committed_vectors(case, tmp_path):
    paths = []
    for index, pem in enumerate(VECTOR_FILE["platform_public_keys"]):
        paths.append(tmp_path / f"platform{index}.pem")
        paths[-1].write_text(pem)
    secrets = [pem.encode() for pem in VECTOR_FILE["service_private_keys"]]
    options = TruValidateOptions(audience=case["audience"], platform_keys=[str(p) for p in paths])
    verifier = TruValidateVerifier(options, secrets, clock=lambda: case["now"])
    inbound = InboundRequest(provider="truvalidate", method=case["method"], path=case["path"], query="",
                             headers=case["headers"], body=case["body"].encode(), received_at=datetime.now(timezone.utc))
    [event] = verifier.verify(inbound).events
    cloud = normalize(inbound, "truvalidate", event)
    expect = case["expect"]
    assert (cloud.type, cloud.id, cloud.subject, cloud.data) == (
        f"truvalidate.{expect['name']}", expect["id"], expect["subject"], expect["data"])
    assert cloud.time == datetime.fromisoformat(expect["time"])

    late = TruValidateVerifier(options, secrets, clock=lambda: case["now"] + 60)
    with pytest.raises(VerificationFailed, match="expired"):
        late.verify(inbound)


def test_committed_kids_are_the_launchkey_fingerprints(tmp_path):
    """The verifier derives the same kid as the script (cryptography DER + hashlib MD5)."""
    from jwcrypto import jwk

    from webhookbus.verifiers.truvalidate import launchkey_kid

    derived = [launchkey_kid(jwk.JWK.from_pem(pem.encode())) for pem in VECTOR_FILE["platform_public_keys"]]
    assert derived == VECTOR_FILE["platform_kids"]
    assert all(len(kid.split(":")) == 16 for kid in derived)


# --- accepted requests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header", ["x-iov-jwt", "authorization"])
def test_session_end_either_header(verifier, keys, header):
    body = body_of(SESSION_END)
    token = signed(keys, body)
    [event] = verifier.verify(request(body, token, header=header)).events
    assert event.name == "session_end"
    assert event.subject == "hash-1"
    assert event.time == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert event.id == jwt.decode(token, options={"verify_signature": False})["jti"]
    assert event.data == SESSION_END


def test_old_platform_key_still_verifies(verifier, keys):
    body = body_of(SESSION_END)
    assert verifier.verify(request(body, signed(keys, body, signer="platform_old", alg="RS512"))).events


@pytest.mark.parametrize("service_key", ["service_old", "service_new"])
@pytest.mark.parametrize("jwe_kid", ["derive", None])
@pytest.mark.parametrize("alg,enc", [("RSA-OAEP", "A256CBC-HS512"), ("RSA-OAEP-256", "A256GCM")])
def test_authorization_response_decrypts_with_either_service_key(verifier, keys, service_key, jwe_kid, alg, enc):
    auth = {"auth_request": "ar-1", "type": "AUTHORIZED", "service_user_hash": "svc-hash", "device_id": "dev-1"}
    body = make.encrypt(keys[service_key], body_of(auth), alg, enc, key_id=jwe_kid)
    [event] = verifier.verify(request(body, signed(keys, body), content_type="application/jose")).events
    assert (event.name, event.subject, event.data) == ("authorization_response", "svc-hash", auth)


def test_jwe_is_recognised_without_content_type(verifier, keys):
    link = {"type": "DEVICE_LINK_COMPLETION", "device_id": "dev-9"}
    body = make.encrypt(keys["service_new"], body_of(link))
    [event] = verifier.verify(request(body, signed(keys, body), content_type="text/plain")).events
    assert (event.name, event.subject) == ("device_link_completion", "dev-9")


@pytest.mark.parametrize("data,name,subject", [
    ({"auth_request": "a", "user_push_id": "push", "service_user_hash": "h", "device_id": "d"},
     "authorization_response", "push"),
    ({"auth_request": "a", "device_id": "d"}, "authorization_response", "d"),
    ({"auth_request": "a"}, "authorization_response", None),
    ({"something": "else"}, "unknown", None),
    ([1, 2], "unknown", None),
])
def test_event_names_and_subjects(verifier, keys, data, name, subject):
    body = body_of(data)
    [event] = verifier.verify(request(body, signed(keys, body))).events
    assert (event.name, event.subject) == (name, subject)


def test_time_falls_back_to_iat(verifier, keys):
    body = body_of({"auth_request": "a"})
    token = signed(keys, body)
    [event] = verifier.verify(request(body, token)).events
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert event.time == datetime.fromtimestamp(iat, timezone.utc)


def test_empty_body_is_allowed_when_its_hash_matches(verifier, keys):
    [event] = verifier.verify(request(b"", signed(keys, b""))).events
    assert (event.name, event.data) == ("unknown", None)


def test_path_claim_may_include_the_query(verifier, keys):
    body = body_of(SESSION_END)
    token = signed(keys, body, request={"meth": "POST", "path": f"{PATH}?tenant=a", "func": "S256",
                                        "hash": hashlib.sha256(body).hexdigest()})
    assert verifier.verify(request(body, token, query="tenant=a")).events


def test_explicit_kid_mapping_and_jwks(keys, tmp_path):
    pem = tmp_path / "platform.pem"
    pem.write_bytes(make.public_pem(keys["platform_old"]))
    jwks = tmp_path / "platform.jwks"
    jwk = json.loads(RSAAlgorithm.to_jwk(keys["platform_new"].public_key()))
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "2026-rotation"}]}))
    verifier = TruValidateVerifier(
        TruValidateOptions(audience=SERVICE, platform_keys={"legacy-1": str(pem)}, platform_jwks=str(jwks)), [])
    body = body_of(SESSION_END)
    for signer, kid in (("platform_old", "legacy-1"), ("platform_new", "2026-rotation")):
        payload = make.claims(SERVICE, "POST", PATH, body, int(time.time()))
        assert verifier.verify(request(body, make.sign(keys[signer], payload, key_id=kid))).events
    # a fingerprint kid is not accepted for a key configured under an explicit kid
    with pytest.raises(VerificationFailed, match="kid"):
        verifier.verify(request(body, signed(keys, body, signer="platform_old")))


def test_directory_audience(keys, pem_paths):
    directory = f"dir:{uuid.uuid4()}"
    verifier = TruValidateVerifier(TruValidateOptions(audience=directory, platform_keys=pem_paths), [])
    body = body_of(SESSION_END)
    payload = make.claims(directory, "POST", PATH, body, int(time.time()))
    assert verifier.verify(request(body, make.sign(keys["platform_new"], payload))).events


# --- rejected requests ---------------------------------------------------------------------------------

def _claims(body: bytes, **changes) -> dict:
    payload = make.claims(SERVICE, "POST", PATH, body, int(time.time()))
    payload.update(changes)
    return payload


@pytest.mark.parametrize("changes,reason", [
    ({"aud": f"svc:{uuid.uuid4()}"}, "aud is not this service"),
    ({"sub": f"svc:{uuid.uuid4()}"}, "sub is not this service"),
    ({"iss": "someone"}, "iss is not"),
    ({"exp": int(time.time()) - 30, "iat": int(time.time()) - 40, "nbf": int(time.time()) - 40}, "expired"),
    ({"nbf": int(time.time()) + 60, "exp": int(time.time()) + 65}, "not valid for another"),
    ({"iat": int(time.time()) + 60}, "issued .* in the future"),
    ({"exp": None}, "no numeric exp"),
    ({"nbf": float("inf")}, "no numeric nbf"),  # json writes Infinity and reads it back
    ({"jti": None}, "no jti"),
    ({"request": None}, "no request claim"),
])
def test_bad_claims(verifier, keys, changes, reason):
    body = body_of(SESSION_END)
    token = make.sign(keys["platform_new"], _claims(body, **changes))
    with pytest.raises(VerificationFailed, match=reason):
        verifier.verify(request(body, token))


def test_leeway_is_configurable(keys, pem_paths):
    body = body_of(SESSION_END)
    now = int(time.time())
    token = make.sign(keys["platform_new"], _claims(body, iat=now - 20, nbf=now - 20, exp=now - 15))
    strict = TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=pem_paths), [])
    lenient = TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=pem_paths, leeway_seconds=30), [])
    with pytest.raises(VerificationFailed, match="expired"):
        strict.verify(request(body, token))
    assert lenient.verify(request(body, token)).events


def test_tampered_body(verifier, keys):
    body = body_of(SESSION_END)
    token = signed(keys, body)
    with pytest.raises(VerificationFailed, match="body does not match"):
        verifier.verify(request(body.replace(b"hash-1", b"hash-2"), token))


@pytest.mark.parametrize("func", ["S1", "MD5", None])
def test_unknown_body_hash_function(verifier, keys, func):
    body = body_of(SESSION_END)
    token = signed(keys, body, request={"meth": "POST", "path": PATH, "func": func,
                                        "hash": hashlib.sha1(body).hexdigest()})
    with pytest.raises(VerificationFailed, match="func"):
        verifier.verify(request(body, token))


def test_wrong_method_and_path(verifier, keys):
    body = body_of(SESSION_END)
    token = signed(keys, body)
    with pytest.raises(VerificationFailed, match="method"):
        verifier.verify(request(body, token, method="PUT"))
    with pytest.raises(VerificationFailed, match="path"):
        verifier.verify(request(body, token, path="/webhooks/other"))


def test_unknown_kid_and_foreign_signature(verifier, keys):
    body = body_of(SESSION_END)
    with pytest.raises(VerificationFailed, match="kid is not a configured platform key"):
        verifier.verify(request(body, signed(keys, body, signer="stranger")))
    # a stranger's signature under a configured kid
    forged = make.sign(keys["stranger"], _claims(body), key_id=make.kid(keys["platform_new"]))
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        verifier.verify(request(body, forged))


def test_alg_none(verifier, keys):
    body = body_of(SESSION_END)
    token = jwt.encode(_claims(body), None, algorithm="none", headers={"kid": make.kid(keys["platform_new"])})
    with pytest.raises(VerificationFailed, match="alg must be"):
        verifier.verify(request(body, token))


def test_hs256_with_the_public_key_as_secret(verifier, keys):
    """The classic confusion: an HMAC 'signed' with the platform's public PEM."""
    body = body_of(SESSION_END)
    header = make.b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": make.kid(keys["platform_new"])}).encode())
    payload = make.b64url(json.dumps(_claims(body)).encode())
    mac = hmac.new(make.public_pem(keys["platform_new"]), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(VerificationFailed, match="alg must be"):
        verifier.verify(request(body, f"{header}.{payload}.{make.b64url(mac)}"))


def test_jwe_for_a_key_we_do_not_hold(verifier, keys):
    body = make.encrypt(keys["stranger"], body_of({"auth_request": "a"}))
    with pytest.raises(VerificationFailed, match="cannot decrypt"):
        verifier.verify(request(body, signed(keys, body), content_type="application/jose"))


def test_jwe_claiming_our_kid_but_for_another_key(verifier, keys):
    body = make.encrypt(keys["stranger"], body_of({"auth_request": "a"}), key_id=make.kid(keys["service_old"]))
    with pytest.raises(VerificationFailed, match="cannot decrypt"):
        verifier.verify(request(body, signed(keys, body), content_type="application/jose"))


def test_jwe_without_service_keys(keys, pem_paths):
    verifier = TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=pem_paths), [])
    body = make.encrypt(keys["service_old"], body_of({"auth_request": "a"}))
    with pytest.raises(VerificationFailed, match="cannot decrypt"):
        verifier.verify(request(body, signed(keys, body), content_type="application/jose"))


@pytest.mark.parametrize("body", [b"not a jwe at all", b"a.b.c.d.e", b"\xff\xfe.\x00"])
def test_garbage_jose_body(verifier, keys, body):
    with pytest.raises(VerificationFailed, match="cannot decrypt"):
        verifier.verify(request(body, signed(keys, body), content_type="application/jose"))


def test_non_json_jwe_payload(verifier, keys):
    body = make.encrypt(keys["service_new"], b"<xml>not json</xml>")
    with pytest.raises(MalformedPayload, match="decrypted body is not valid JSON"):
        verifier.verify(request(body, signed(keys, body), content_type="application/jose"))


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b"[" * 100_000, b'{"api_time": Infinity}'])
def test_non_json_plain_body(verifier, keys, body):
    with pytest.raises(MalformedPayload, match="body is not valid JSON"):
        verifier.verify(request(body, signed(keys, body)))


def test_missing_header(verifier):
    with pytest.raises(VerificationFailed, match="missing"):
        verifier.verify(request(b"{}", None))
    basic = InboundRequest(provider="truvalidate", method="POST", path=PATH, query="",
                           headers={"authorization": "Bearer abc"}, body=b"{}", received_at=datetime.now(timezone.utc))
    with pytest.raises(VerificationFailed, match="missing"):
        verifier.verify(basic)


@pytest.mark.parametrize("token", [
    "", "garbage", "a.b.c", "a.b", "....", "\x00\xff\u202e.x.y", "é" * 5000,
    base64.urlsafe_b64encode(b'{"alg":"RS256","kid":["x"]}').decode() + ".e30.sig",
    base64.urlsafe_b64encode(b'["RS256"]').decode() + ".e30.sig",
])
def test_garbage_header(verifier, token):
    with pytest.raises(VerificationFailed):
        verifier.verify(request(b"{}", token))


def test_valid_signature_over_non_object_claims(verifier, keys):
    header = {"kid": make.kid(keys["platform_new"])}
    token = jwt.api_jws.encode(b"[1,2]", keys["platform_new"], algorithm="RS256", headers=header)
    with pytest.raises(VerificationFailed, match="not an object"):
        verifier.verify(request(b"{}", token))


# --- mutual TLS ------------------------------------------------------------------------------------------

PRODUCTION = "CN=webhooks.launchkey.com,O=iovation\\, Inc.,L=Portland,ST=Oregon,C=US"
OPENSSL_FORM = ((("countryName", "US"),), (("stateOrProvinceName", "Oregon"),), (("localityName", "Portland"),),
                (("organizationName", "iovation, Inc."),), (("commonName", "webhooks.launchkey.com"),))


@pytest.mark.parametrize("configured", [PRODUCTION, "CN=webhooks.launchkey.com,O=iovation, Inc.,L=Portland,ST=Oregon,C=US"])
@pytest.mark.parametrize("peer", [
    PRODUCTION,
    "CN=webhooks.launchkey.com,O=iovationx5C, Inc.,L=Portland,ST=Oregon,C=US",
    "cn=WEBHOOKS.launchkey.com,o=iovation\\2C Inc.,l=Portland,st=Oregon,c=US",
    "C=US,ST=Oregon,L=Portland,O=iovation\\, Inc.,CN=webhooks.launchkey.com",
    "/C=US/ST=Oregon/L=Portland/O=iovation, Inc./CN=webhooks.launchkey.com",
    OPENSSL_FORM,
])
def test_client_certificate_subject_matches(keys, pem_paths, configured, peer):
    verifier = TruValidateVerifier(
        TruValidateOptions(audience=SERVICE, platform_keys=pem_paths, client_subject=configured), [])
    body = body_of(SESSION_END)
    assert verifier.verify(request(body, signed(keys, body), tls_peer={"subject": peer})).events


@pytest.mark.parametrize("peer,reason", [
    (None, "client certificate required"),
    ({}, "client certificate required"),
    ({"subject": "CN=ci-webhooks.launchkey.com,O=iovation\\, Inc.,L=Portland,ST=Oregon,C=US"}, "not the configured"),
    ({"subject": "CN=webhooks.launchkey.com,O=iovation\\, Inc.,L=Portland,ST=Oregon"}, "not the configured"),
    ({"subject": "CN=webhooks.launchkey.com,O=evil\\, Inc.,L=Portland,ST=Oregon,C=US"}, "not the configured"),
    ({"subject": [["not", "pairs", "at all"]]}, "not the configured"),
    ({"subject": 42}, "not the configured"),
])
def test_client_certificate_rejected(keys, pem_paths, peer, reason):
    verifier = TruValidateVerifier(
        TruValidateOptions(audience=SERVICE, platform_keys=pem_paths, client_subject=PRODUCTION), [])
    body = body_of(SESSION_END)
    with pytest.raises(VerificationFailed, match=reason):
        verifier.verify(request(body, signed(keys, body), tls_peer=peer))


def test_client_subject_unset_ignores_peer(verifier, keys):
    body = body_of(SESSION_END)
    assert verifier.verify(request(body, signed(keys, body), tls_peer={"subject": "CN=anyone"})).events


# --- configuration ---------------------------------------------------------------------------------------

def test_missing_key_file_is_a_construction_error(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=str(missing)):
        TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=[str(missing)]), [])


def test_unparsable_key_file_names_the_path_not_the_content(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nTOPSECRETBYTES\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="bad.pem") as raised:
        TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys={"k": str(bad)}), [])
    assert "TOPSECRETBYTES" not in str(raised.value)


def test_secret_that_is_not_a_private_key(keys, pem_paths):
    for secret in (b"literal-secret-value", make.public_pem(keys["service_old"])):
        with pytest.raises(ValueError, match="secret #1") as raised:
            TruValidateVerifier(TruValidateOptions(audience=SERVICE, platform_keys=pem_paths), [secret])
        assert "literal-secret-value" not in str(raised.value)


def test_options_are_validated(pem_paths):
    from pydantic import ValidationError

    for bad in ({"audience": "svc:not-a-uuid"}, {"audience": SERVICE, "platform_key": pem_paths}):
        with pytest.raises(ValidationError):
            TruValidateOptions(**bad)
    with pytest.raises(ValueError, match="at least one platform key"):
        TruValidateVerifier(TruValidateOptions(audience=SERVICE), [])


# --- end to end: the shipped config/providers/truvalidate.yaml, a real listener and broker ---------------

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "providers" / "truvalidate.yaml"


@pytest.fixture
def e2e(keys, pem_paths, shipped_config, webhookbus_listener):
    """The shipped config with this test's keys, service id, and mTLS pinned through the proxy header."""
    settings, topics = shipped_config(
        "truvalidate", [make.private_pem(k).decode() for k in (keys["service_old"], keys["service_new"])])
    options = settings["providers"]["truvalidate"]["options"]
    options.update(audience=SERVICE, platform_keys=pem_paths, client_subject=PRODUCTION)
    settings["server"]["client_cert_header"] = {"header": "X-SSL-Client-S-DN", "trusted_proxies": ["127.0.0.1"]}
    return webhookbus_listener(settings), topics


def e2e_headers(token: str, content_type: str = "application/json", **extra: str) -> dict[str, str]:
    return {"Content-Type": content_type, "X-IOV-JWT": token, "X-SSL-Client-S-DN": PRODUCTION, **extra}


def test_e2e_events_reach_kafka_as_cloudevents(e2e, keys, kafka_broker):
    from webhookbus.testing import read_topic, to_cloudevent

    listener, topics = e2e
    auth = {"auth_request": str(uuid.uuid4()), "type": "AUTHORIZED", "reason": "APPROVED",
            "service_user_hash": "svc-hash", "user_push_id": "push-7", "device_id": "dev-1"}
    sent = {
        "truvalidate-sessions": (body_of(SESSION_END), "application/json", "session_end", "hash-1", SESSION_END),
        "truvalidate-auth": (make.encrypt(keys["service_old"], body_of(auth), "RSA-OAEP", "A256CBC-HS512"),
                             "application/jose", "authorization_response", "push-7", auth),
        "unrouted": (body_of({"new": "kind"}), "application/json", "unknown", None, {"new": "kind"}),
    }
    for topic, (body, content_type, name, subject, data) in sent.items():
        token = signed(keys, body, signer="platform_old" if name == "session_end" else "platform_new")
        reply = listener.post(PATH, body, e2e_headers(token, content_type))
        assert (reply.status, reply.body) == (200, b""), reply.body
        [record] = read_topic(kafka_broker.bootstrap, topics[topic], 1)
        event = to_cloudevent(record)
        assert (event.get_type(), event.get_source()) == (f"truvalidate.{name}", "truvalidate")
        assert event.get_id() == jwt.decode(token, options={"verify_signature": False})["jti"]
        assert event.get_subject() == subject
        assert event.get_data() == data
        assert event.get_extension("verifier") == "truvalidate"
    [record] = read_topic(kafka_broker.bootstrap, topics["truvalidate-sessions"], 1)
    assert to_cloudevent(record).get_time() == datetime(2026, 1, 1, tzinfo=timezone.utc)  # from api_time


def test_e2e_refusals_are_json_and_publish_nothing(e2e, keys, kafka_broker):
    from webhookbus.testing import read_topic

    listener, topics = e2e
    body = body_of(SESSION_END)
    token = signed(keys, body)
    foreign_jwe = make.encrypt(keys["stranger"], body_of({"auth_request": "a"}))
    xml_jwe = make.encrypt(keys["service_new"], b"<not-json/>")
    now = int(time.time())
    cases = {
        "foreign signer": (PATH, body, e2e_headers(signed(keys, body, signer="stranger")), 401),
        "tampered body": (PATH, body.replace(b"hash-1", b"hash-2"), e2e_headers(token), 401),
        "no header": (PATH, body, {"Content-Type": "application/json", "X-SSL-Client-S-DN": PRODUCTION}, 401),
        "garbage header": (PATH, body, e2e_headers("!~" * 1500), 401),  # DEL bytes: malformed HTTP
        "wrong path": (f"{PATH}/other", body, e2e_headers(token), 401),
        "expired": (PATH, body, e2e_headers(make.sign(keys["platform_new"], _claims(
            body, iat=now - 60, nbf=now - 60, exp=now - 55))), 401),
        "alg none": (PATH, body, e2e_headers(jwt.encode(_claims(body), None, algorithm="none",
                                                        headers={"kid": make.kid(keys["platform_new"])})), 401),
        "no client certificate": (PATH, body, {"Content-Type": "application/json", "X-IOV-JWT": token}, 401),
        "JWE for another key": (PATH, foreign_jwe, e2e_headers(signed(keys, foreign_jwe), "application/jose"), 401),
        "JWE of non-JSON": (PATH, xml_jwe, e2e_headers(signed(keys, xml_jwe), "application/jose"), 400),
    }
    for name, (path, sent, headers, status) in cases.items():
        reply = listener.post(path, sent, headers)
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        error = "verification_failed" if status == 401 else "malformed_payload"
        assert reply.json()["error"] == error and reply.json()["detail"], name
        assert b"PRIVATE KEY" not in reply.body
    assert "client certificate required" in listener.post(PATH, body, cases["no client certificate"][2]).json()["detail"]
    for topic in topics.values():
        assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1) == []


def test_shipped_config_passes_check(keys, tmp_path, capsys):
    """The file as shipped, with its /etc/webhookbus/truvalidate/ key files provided in a temp dir."""
    from webhookbus.cli import main

    (tmp_path / "service.pem").write_bytes(make.private_pem(keys["service_old"]))
    (tmp_path / "platform-current.pem").write_bytes(make.public_pem(keys["platform_old"]))
    config = tmp_path / "truvalidate.yaml"
    config.write_text(SHIPPED.read_text().replace("/etc/webhookbus/truvalidate/", f"{tmp_path}/"))
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "truvalidate" in out and "PRIVATE KEY" not in out


# --- native mutual TLS: webhookbus terminates TLS and checks the subject the handshake verified ----


@pytest.fixture
def e2e_native_tls(keys, pem_paths, shipped_config, webhookbus_listener, tmp_path):
    from webhookbus.testing.pki import TestPki

    pki = TestPki(tmp_path / "pki")
    settings, topics = shipped_config(
        "truvalidate", [make.private_pem(k).decode() for k in (keys["service_old"], keys["service_new"])])
    settings["providers"]["truvalidate"]["options"].update(
        audience=SERVICE, platform_keys=pem_paths, client_subject=PRODUCTION)
    settings["server"]["tls"] = pki.server_tls("optional")  # required would refuse the no-certificate case earlier
    return webhookbus_listener(settings), topics, pki


@pytest.mark.parametrize("webhookbus_engine", ["uvicorn"])  # the engine that hands the certificate to the app
def test_e2e_native_mutual_tls_checks_the_verified_subject_and_its_chain(e2e_native_tls, keys, kafka_broker):
    import http.client
    import ssl

    from webhookbus.testing import read_topic

    listener, topics, pki = e2e_native_tls
    body = body_of(SESSION_END)

    def send(client, **headers: str) -> tuple[int, dict]:
        connection = http.client.HTTPSConnection("127.0.0.1", listener.port, context=pki.client_context(client),
                                                 timeout=10)
        try:
            connection.request("POST", PATH, body, {"Content-Type": "application/json",
                                                   "X-IOV-JWT": signed(keys, body), **headers})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    assert send(pki.client(PRODUCTION)) == (200, None), "the platform's subject, issued under ca_certs (intermediate)"
    status, reply = send(pki.client("CN=webhooks.launchkey.com,O=someone else,C=US"))
    assert status == 401 and "subject is not the configured one" in reply["detail"]
    status, reply = send(None, **{"X-SSL-Client-S-DN": PRODUCTION})  # no certificate; a header proves nothing
    assert status == 401 and "client certificate required" in reply["detail"]
    with pytest.raises((ssl.SSLError, ConnectionError)):  # the right subject from a CA nobody configured
        send(pki.client(PRODUCTION, trusted=False))
    records = read_topic(kafka_broker.bootstrap, topics["truvalidate-sessions"], 2, timeout=3)
    assert len(records) == 1
