"""Authgear verifier: signatures as Authgear's Go sample computes them, decisions, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhookbus.cli import main
from webhookbus.config import ConfigError, parse_config
from webhookbus.plugin import MalformedPayload, VerificationFailed
from webhookbus.testing import read_topic, to_cloudevent
from webhookbus.verifiers.authgear import AuthgearOptions, AuthgearVerifier

SECRET = b"authgear-webhook-secret"
USER_ID = "5a2b4c6d-0000-4000-8000-00000000a11c"
STAMP = 1767225600  # context.timestamp of the test events: 2026-01-01T00:00:00Z
NOW = STAMP + 2  # the verifiers' clock: delivered two seconds after the event


def hmac_sha256_string(data: bytes, secret: bytes) -> str:
    """Authgear's Go sample ``HMACSHA256String``: hex of HMAC-SHA256(secret, body)."""
    hasher = hmac.new(secret, digestmod=hashlib.sha256)
    hasher.update(data)
    return hasher.digest().hex()


def event_body(event_type: str, stamp: int = STAMP, **overrides) -> dict:
    body = {
        "id": "0E1E9537-DF4F-4AF6-8B48-3DB4574D4F24",
        "seq": 435,
        "type": event_type,
        "payload": {"user": {"id": USER_ID, "standard_attributes": {"email": "jane@example.com"}}},
        "context": {"timestamp": stamp, "user_id": USER_ID, "triggered_by": "user", "language": "en",
                    "preferred_languages": ["en"], "ip_address": "203.0.113.9", "user_agent": "ua",
                    "client_id": "portal"},
    }
    body.update(overrides)
    return body


def verifier(*secrets: bytes, now: float = NOW, **options) -> AuthgearVerifier:
    return AuthgearVerifier(AuthgearOptions(**options), list(secrets or [SECRET]), clock=lambda: now)


def request_for(make_request, body: dict | bytes | str, signature: str | None = None, secret: bytes = SECRET):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    raw = raw.encode() if isinstance(raw, str) else raw
    headers = {"Content-Type": "application/json",
               "X-Authgear-Body-Signature": hmac_sha256_string(raw, secret) if signature is None else signature}
    return make_request("authgear", "POST", "/webhooks/authgear", raw, headers)


def test_non_blocking_event_normalisation_and_no_response(make_request):
    body = event_body("user.created")
    accepted = verifier().verify(request_for(make_request, body))
    (event,) = accepted.events
    assert accepted.response is None
    assert (event.name, event.id, event.subject, event.data) == (
        "user.created", "0E1E9537-DF4F-4AF6-8B48-3DB4574D4F24", USER_ID, body)
    assert event.time == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_subject_falls_back_to_payload_user_id(make_request):
    body = event_body("user.created")
    body["context"].pop("user_id")
    assert verifier().verify(request_for(make_request, body)).events[0].subject == USER_ID
    body["payload"] = {}
    assert verifier().verify(request_for(make_request, body)).events[0].subject is None


ABSURD_TIMESTAMPS = [None, "1767225600", 10**30, -10**30, True]


@pytest.mark.parametrize("timestamp", ABSURD_TIMESTAMPS)
def test_absent_or_absurd_timestamp_means_receipt_time_without_replay_check(make_request, timestamp):
    body = event_body("user.created")
    body["context"]["timestamp"] = timestamp
    raw = json.dumps(body).encode()
    assert verifier(tolerance_seconds=0).verify(request_for(make_request, raw)).events[0].time is None


@pytest.mark.parametrize("timestamp", ["1767225600", 10**30, -10**30, True, 1767225600.5, -1, [], 10**16])
def test_absurd_timestamp_is_refused_by_the_replay_check(make_request, timestamp):
    body = event_body("user.created")
    body["context"]["timestamp"] = timestamp
    with pytest.raises(VerificationFailed) as caught:
        verifier().verify(request_for(make_request, body))
    assert caught.value.status == 401


def test_an_unstamped_body_has_no_age_to_check(make_request):
    """Authgear stamps every event, so every body it signed is checked; an unstamped one keeps receipt time."""
    body = event_body("user.created")
    del body["context"]["timestamp"]
    assert verifier(now=STAMP + 3600).verify(request_for(make_request, body)).events[0].time is None


@pytest.mark.parametrize("event_type", ["user.created", "user.pre_create"])
@pytest.mark.parametrize("age", [3600, 301, -301, -3600])
def test_signed_but_stale_or_future_event_is_refused(make_request, event_type, age):
    """A captured event, correctly signed, replayed an hour later (or stamped ahead): 401."""
    request = request_for(make_request, event_body(event_type))
    with pytest.raises(VerificationFailed, match="outside the 300 s tolerance") as caught:
        verifier(now=STAMP + age).verify(request)
    assert caught.value.status == 401


@pytest.mark.parametrize("age", [0, 299, 300, -300])
def test_event_within_tolerance_passes(make_request, age):
    accepted = verifier(now=STAMP + age).verify(request_for(make_request, event_body("user.pre_create")))
    assert accepted.events[0].time == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_tolerance_is_configurable_and_zero_turns_it_off(make_request):
    request = request_for(make_request, event_body("user.created"))
    assert verifier(now=STAMP + 3600, tolerance_seconds=0).verify(request).events[0].id
    assert verifier(now=STAMP + 3600, tolerance_seconds=3601).verify(request).events[0].id
    with pytest.raises(VerificationFailed):
        verifier(now=STAMP + 3600, tolerance_seconds=60).verify(request)
    with pytest.raises(ValidationError):
        AuthgearOptions(tolerance_seconds=-1)


def test_the_real_clock_is_the_default(make_request):
    body = event_body("user.created")
    body["context"]["timestamp"] = int(time.time())
    AuthgearVerifier(AuthgearOptions(), [SECRET]).verify(request_for(make_request, body))
    with pytest.raises(VerificationFailed):
        AuthgearVerifier(AuthgearOptions(), [SECRET]).verify(request_for(make_request, event_body("user.created")))


def test_timestamp_is_only_checked_once_the_signature_verified(make_request):
    stale = request_for(make_request, event_body("user.created"), "0" * 64)
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier(now=STAMP + 3600).verify(stale)


def test_nan_is_not_json_and_is_refused(make_request):
    body = event_body("user.created")
    body["context"]["timestamp"] = float("nan")
    raw = json.dumps(body).encode()  # Python writes NaN, which is not JSON: no consumer could read the record
    with pytest.raises(MalformedPayload):
        verifier().verify(request_for(make_request, raw))


@pytest.mark.parametrize("event_type", [
    "user.pre_create", "user.profile.pre_update", "user.pre_schedule_deletion", "user.pre_schedule_anonymization",
    "oidc.jwt.pre_create", "oidc.id_token.pre_create", "authentication.pre_initialize",
    "authentication.post_identified", "authentication.pre_authenticated", "user.future.pre_something",
])
def test_blocking_events_get_the_default_decision(make_request, event_type):
    accepted = verifier().verify(request_for(make_request, event_body(event_type)))
    assert accepted.events[0].name == event_type
    assert accepted.response is not None
    assert (accepted.response.status, accepted.response.content_type) == (200, "application/json")
    assert json.loads(accepted.response.body) == {"is_allowed": True}


@pytest.mark.parametrize("event_type", [
    "user.created", "user.authenticated", "user.profile.updated", "user.deleted", "identity.email.added",
    "user.post_create", "prefix.pre", "user.preview_created",
])
def test_non_blocking_events_get_no_response(make_request, event_type):
    assert verifier().verify(request_for(make_request, event_body(event_type))).response is None


def test_configured_deny_and_per_event_answers(make_request):
    check = verifier(
        blocking_response={"is_allowed": False, "title": "Sign-up closed", "reason": "Invitations only"},
        blocking_responses={
            "oidc.jwt.pre_create": {"is_allowed": True, "mutations": {"jwt": {"payload": {"tier": "gold"}}}},
            "authentication.pre_authenticated": {"is_allowed": True, "constraints": {"amr": ["mfa"]}},
            "user.pre_create": {"mutations": {"user": {"roles": ["member"], "standard_attributes": {"locale": "en"}}}},
        },
    ).verify

    def answer(event_type):
        return json.loads(check(request_for(make_request, event_body(event_type))).response.body)

    assert answer("user.pre_schedule_deletion") == {"is_allowed": False, "title": "Sign-up closed",
                                                    "reason": "Invitations only"}
    assert answer("oidc.jwt.pre_create") == {"is_allowed": True, "mutations": {"jwt": {"payload": {"tier": "gold"}}}}
    assert answer("authentication.pre_authenticated") == {"is_allowed": True, "constraints": {"amr": ["mfa"]}}
    assert answer("user.pre_create") == {
        "is_allowed": True, "mutations": {"user": {"standard_attributes": {"locale": "en"}, "roles": ["member"]}}}


@pytest.mark.parametrize(("event_type", "decision"), [
    ("user.pre_create", {"is_allowed": True, "constraints": {"amr": ["mfa"]}}),
    ("user.profile.pre_update", {"is_allowed": True, "mutations": {"jwt": {"payload": {"a": 1}}}}),
    ("oidc.jwt.pre_create", {"is_allowed": True, "mutations": {"user": {"roles": ["admin"]}}}),
    ("oidc.id_token.pre_create", {"is_allowed": True, "constraints": {"amr": ["mfa"]}}),
    ("authentication.pre_initialize", {"is_allowed": True, "mutations": {"user": {"roles": ["admin"]}}}),
    ("authentication.pre_authenticated", {"is_allowed": True, "mutations": {"jwt": {"payload": {"a": 1}}}}),
    ("authentication.post_identified", {"is_allowed": False, "title": "No", "reason": "r",
                                        "constraints": {"amr": ["mfa"]}}),
    ("user.future.pre_thing", {"is_allowed": True, "constraints": {"amr": ["mfa"]}}),
    ("billing.pre_charge", {"is_allowed": True, "mutations": {"user": {"roles": ["admin"]}}}),  # unknown family
])
def test_keys_of_another_event_family_are_refused(event_type, decision):
    """Authgear checks each event's answer with additionalProperties: false: it would fail every such operation."""
    with pytest.raises(ValidationError) as caught:
        AuthgearOptions(blocking_responses={event_type: decision})
    assert caught.value.errors()[0]["loc"][:2] == ("blocking_responses", event_type)


@pytest.mark.parametrize("decision", [
    {"is_allowed": True, "mutations": {"user": {"roles": ["member"]}}},
    {"is_allowed": True, "mutations": {"jwt": {"payload": {"tier": "gold"}}}},
    {"is_allowed": True, "constraints": {"amr": ["mfa"]}},
])
def test_default_answer_holds_only_what_every_blocking_event_accepts(decision):
    with pytest.raises(ValidationError, match="only for"):
        AuthgearOptions(blocking_response=decision)


def test_each_family_accepts_its_own_keys_and_the_verifier_answers_them(make_request):
    answers = {
        "user.pre_create": {"is_allowed": True, "mutations": {"user": {"custom_attributes": {"plan": "free"}}}},
        "user.profile.pre_update": {"is_allowed": False, "title": "Locked", "reason": "Profile is managed by HR"},
        "oidc.id_token.pre_create": {"is_allowed": True, "mutations": {"jwt": {"payload": {"org": "acme"}}}},
        "authentication.pre_initialize": {"is_allowed": True, "constraints": {"amr": ["x_secondary_totp"]}},
        "authentication.post_identified": {"is_allowed": False, "title": "Blocked", "reason": "Not from here"},
        "billing.pre_charge": {"is_allowed": False, "title": "No", "reason": "Not yet"},
    }
    check = verifier(blocking_responses=answers).verify
    for event_type, answer in answers.items():
        response = check(request_for(make_request, event_body(event_type))).response
        assert json.loads(response.body) == answer, event_type
    assert json.loads(check(request_for(make_request, event_body("oidc.jwt.pre_create"))).response.body) == {
        "is_allowed": True}


def config_with_options(options: str) -> str:
    """The shipped config/providers/authgear.yaml with its ``options:`` block replaced."""
    shipped = (Path(__file__).parents[2] / "config/providers/authgear.yaml").read_text()
    head, tail = shipped.split("    options:\n", 1)
    return head + "    options:\n" + options + "\nroutes:" + tail.split("\nroutes:", 1)[1]


def test_a_wrong_family_key_is_a_config_error_naming_file_and_line(monkeypatch):
    monkeypatch.setenv("AUTHGEAR_WEBHOOK_SECRET", "s3cret-value")
    options = ("      blocking_responses:\n"
               "        authentication.pre_authenticated: {is_allowed: true, constraints: {amr: [mfa]}}\n"
               "        user.pre_create:\n"
               "          is_allowed: true\n"
               "          constraints: {amr: [mfa]}\n")
    text = config_with_options(options)
    line = text.splitlines().index("        user.pre_create:") + 1
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "authgear.yaml")
    message = str(caught.value)
    assert f"authgear.yaml:{line}: providers.authgear.options.blocking_responses.user.pre_create:" in message
    assert "constraints is only for authentication.* events" in message


def test_a_default_answer_with_mutations_is_a_config_error(monkeypatch):
    monkeypatch.setenv("AUTHGEAR_WEBHOOK_SECRET", "s3cret-value")
    text = config_with_options("      blocking_response: {is_allowed: true, mutations: {user: {roles: [x]}}}\n")
    line = text.splitlines().index("      blocking_response: {is_allowed: true, mutations: {user: {roles: [x]}}}") + 1
    with pytest.raises(ConfigError, match=rf"authgear.yaml:{line}: providers.authgear.options.blocking_response: "
                                          r".*mutations is only for user.\* and oidc.\* events"):
        parse_config(text, "authgear.yaml")


def test_a_valid_per_event_config_loads(monkeypatch):
    monkeypatch.setenv("AUTHGEAR_WEBHOOK_SECRET", "s3cret-value")
    text = config_with_options("      tolerance_seconds: 60\n"
                              "      blocking_responses:\n"
                              "        oidc.jwt.pre_create: {is_allowed: true, mutations: {jwt: {payload: {t: 1}}}}\n")
    options = parse_config(text, "authgear.yaml").providers["authgear"].options
    assert options.tolerance_seconds == 60
    assert options.blocking_responses["oidc.jwt.pre_create"].body() == {
        "is_allowed": True, "mutations": {"jwt": {"payload": {"t": 1}}}}


@pytest.mark.parametrize("decision", [
    {"is_allowed": False},  # a deny must say why
    {"is_allowed": False, "title": "No"},
    {"is_allowed": True, "title": "Yes", "reason": "because"},  # Authgear rejects extra keys on allow
    {"is_allowed": False, "title": "No", "reason": "r", "mutations": {"user": {"roles": ["x"]}}},
    {"is_allowed": "maybe"},
    {"is_allowed": True, "mutation": {}},
    {"is_allowed": True, "mutations": {"users": {}}},
    {"is_allowed": True, "mutations": {"user": {"roles": "admin"}}},
    {"is_allowed": True, "constraints": {"amr": ["retina"]}},
])
def test_decisions_authgear_would_reject_are_config_errors(decision):
    with pytest.raises(ValidationError):
        AuthgearOptions(blocking_response=decision)
    with pytest.raises(ValidationError):
        AuthgearOptions(blocking_responses={"user.pre_create": decision})


def test_rotation_old_secret_still_verifies(make_request, caplog):
    caplog.set_level(logging.DEBUG, logger="webhookbus.verifiers.authgear")
    old = b"old-authgear-secret"
    request = request_for(make_request, event_body("user.created"), secret=old)
    assert verifier(b"new-authgear-secret", old).verify(request).events[0].name == "user.created"
    assert [r.secret_index for r in caplog.records if r.name == "webhookbus.verifiers.authgear"] == [1]
    with pytest.raises(VerificationFailed):
        verifier(b"new-authgear-secret").verify(request)


def test_wrong_secret(make_request):
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(request_for(make_request, event_body("user.created"), secret=b"wrong"))


@pytest.mark.parametrize("index", [0, 20, 100, -3])
def test_tampered_body_byte(make_request, index):
    raw = bytearray(json.dumps(event_body("user.pre_create")).encode())
    signature = hmac_sha256_string(bytes(raw), SECRET)
    raw[index] ^= 0x20
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(request_for(make_request, bytes(raw), signature))


def test_whitespace_change_is_tampering_too(make_request):
    body = event_body("user.created")
    signature = hmac_sha256_string(json.dumps(body).encode(), SECRET)
    with pytest.raises(VerificationFailed):
        verifier().verify(request_for(make_request, json.dumps(body, indent=1), signature))


def test_missing_header(make_request):
    request = make_request("authgear", "POST", "/webhooks/authgear", json.dumps(event_body("user.created")),
                           {"Content-Type": "application/json"})
    with pytest.raises(VerificationFailed, match="missing x-authgear-body-signature"):
        verifier().verify(request)


@pytest.mark.parametrize("garbage", ["", "xyz", "0" * 63, "a" * 10240, "\x00\xff\x80binary", "ü" * 64,
                                     "sha256=" + "0" * 64])
def test_garbage_header(make_request, garbage):
    with pytest.raises(VerificationFailed):
        verifier().verify(request_for(make_request, event_body("user.created"), garbage))


@pytest.mark.parametrize("raw", ['{"type": "user.created",', "[]", '{"id": "x"}', '{"type": ""}', '{"type": 5}',
                                 "[" * 100_000, b"\xff\xfe"])
def test_authentic_but_unreadable_body_is_400(make_request, raw):
    with pytest.raises(MalformedPayload) as caught:
        verifier().verify(request_for(make_request, raw))
    assert caught.value.status == 400


def test_unreadable_body_with_a_bad_signature_is_401(make_request):
    with pytest.raises(VerificationFailed):
        verifier().verify(request_for(make_request, "{not json", "0" * 64))


def test_options():
    with pytest.raises(ValidationError):
        AuthgearOptions(blocking="allow")
    with pytest.raises(ValidationError, match="user.precreate"):
        AuthgearOptions(blocking_responses={"user.precreate": {"is_allowed": True}})
    with pytest.raises(ValueError):
        AuthgearVerifier(AuthgearOptions(), [])


# --- end to end: the shipped config/providers/authgear.yaml, a real listener and broker ---------------

def signed_post(listener, body: dict | bytes, secret: bytes = SECRET, **headers):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": "application/json", "X-Authgear-Body-Signature": hmac_sha256_string(raw, secret)}
    return listener.post("/webhooks/authgear", raw, all_headers | headers)


def test_e2e_events_reach_kafka_and_blocking_ones_get_the_decision(webhookbus_listener, kafka_broker, shipped_config):
    settings, topics = shipped_config("authgear", ["old-secret", SECRET.decode()])
    settings["providers"]["authgear"]["options"]["blocking_responses"] = {
        "user.pre_create": {"is_allowed": False, "title": "Closed", "reason": "Invitations only"}}
    listener = webhookbus_listener(settings)
    now = int(time.time())  # the listener checks context.timestamp against its real clock

    created = signed_post(listener, event_body("user.created", now))
    assert (created.status, created.body) == (200, b"")
    blocked = signed_post(listener, event_body("user.pre_create", now, id="evt-pre-create"))
    assert (blocked.status, blocked.headers["content-type"]) == (200, "application/json")
    assert blocked.json() == {"is_allowed": False, "title": "Closed", "reason": "Invitations only"}
    jwt = signed_post(listener, event_body("oidc.jwt.pre_create", now, id="evt-jwt"), b"old-secret")  # rotation
    assert (jwt.status, jwt.json()) == (200, {"is_allowed": True})

    users = sorted(read_topic(kafka_broker.bootstrap, topics["authgear-users"], 2), key=lambda r: r.offset)
    [auth] = read_topic(kafka_broker.bootstrap, topics["authgear-auth"], 1)
    expected = [("authgear.user.created", "0E1E9537-DF4F-4AF6-8B48-3DB4574D4F24"),
                ("authgear.user.pre_create", "evt-pre-create"), ("authgear.oidc.jwt.pre_create", "evt-jwt")]
    for record, (event_type, event_id) in zip([*users, auth], expected, strict=True):
        event = to_cloudevent(record)
        assert (event.get_type(), event.get_id(), event.get_subject(), event.get_source()) == (
            event_type, event_id, USER_ID, "authgear")
        assert event.get_time() == datetime.fromtimestamp(now, timezone.utc)
        assert event.get_data()["type"] == event_type[len("authgear."):]
        assert record.key == USER_ID.encode()


def test_e2e_refusals_are_json_and_publish_nothing(webhookbus_listener, kafka_broker, shipped_config):
    settings, topics = shipped_config("authgear", [SECRET.decode()])
    listener = webhookbus_listener(settings)
    raw = json.dumps(event_body("user.pre_create", int(time.time()))).encode()
    good = hmac_sha256_string(raw, SECRET)
    replayed = json.dumps(event_body("user.pre_create", int(time.time()) - 3600)).encode()

    def post(body: bytes, **headers):
        return listener.post("/webhooks/authgear", body, {"Content-Type": "application/json"} | headers)

    cases = {
        "wrong secret": (post(raw, **{"X-Authgear-Body-Signature": hmac_sha256_string(raw, b"x")}), 401,
                         "verification_failed"),
        "tampered": (post(raw.replace(b"jane", b"joan"), **{"X-Authgear-Body-Signature": good}), 401,
                     "verification_failed"),
        "no header": (post(raw), 401, "verification_failed"),
        "replayed an hour later": (post(replayed, **{"X-Authgear-Body-Signature": hmac_sha256_string(replayed, SECRET)}),
                                   401, "verification_failed"),
        "garbage header": (post(raw, **{"X-Authgear-Body-Signature": "g" * 10240}), 401, "verification_failed"),
        "signed but not JSON": (post(b"{nope", **{"X-Authgear-Body-Signature": hmac_sha256_string(b"{nope", SECRET)}),
                                400, "malformed_payload"),
    }
    for name, (reply, status, error) in cases.items():
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"] == error and reply.json()["detail"], name
        assert "is_allowed" not in reply.json(), "a refused request must not look like a decision"
        assert SECRET not in reply.body
    for topic in topics.values():
        assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1) == []


def test_shipped_config_passes_check(monkeypatch, capsys):
    monkeypatch.setenv("AUTHGEAR_WEBHOOK_SECRET", "s3cret-value")
    assert main(["check", "--config", str(Path(__file__).parents[2] / "config/providers/authgear.yaml")]) == 0
    assert "s3cret-value" not in capsys.readouterr().out
