"""UNLOQ verifier: Node-generated vectors, then every way a request must be refused.

The vectors in vectors/unloq.json come from vectors/unloq_sign.js, a Node script written
from UNLOQ's documented algorithm; with ``node`` on PATH the script is also re-run here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhookbus.cli import main
from webhookbus.plugin import MalformedPayload, VerificationFailed
from webhookbus.testing import read_topic, to_cloudevent
from webhookbus.verifiers.unloq import UnloqOptions, UnloqVerifier, js_number

VECTORS = Path(__file__).parent / "vectors"
CASES = json.loads((VECTORS / "unloq.json").read_text(encoding="utf-8"))
NODE = shutil.which("node")
FORM = "application/x-www-form-urlencoded"
SECRET = b"unloq-test-secret"


def sign(target: str, fields: dict[str, str], secret: bytes = SECRET) -> str:
    """Test-side signer for plain string fields (the Node vectors cover the subtle cases)."""
    message = target + "".join(key + fields[key] for key in sorted(fields))
    return base64.b64encode(hmac.new(secret, message.encode(), hashlib.sha256).digest()).decode()


def verifier(*secrets: bytes, **options) -> UnloqVerifier:
    return UnloqVerifier(UnloqOptions(**options), list(secrets or [SECRET]))


def vector_request(make_request, case, signature=None, **changes):
    fields = {
        "path": case["path"], "raw_path": case["raw_path"], "query": case["query"], "body": case["body"],
        "content_type": case["content_type"],
    } | changes
    headers = {"Content-Type": fields["content_type"], "X-Unloq-Signature": signature or case["signature"]}
    return make_request("unloq", "POST", fields["path"], fields["body"], headers, fields["query"],
                        raw_path=fields["raw_path"])


def check_vector(make_request, case) -> None:
    request = vector_request(make_request, case)
    if case["expect"] == "malformed":
        with pytest.raises(MalformedPayload):
            verifier(case["secret"].encode()).verify(request)
        return
    (event,) = verifier(case["secret"].encode()).verify(request).events
    assert event.name == case["event"]
    assert event.id == case["id"]
    if case["content_type"] == FORM:
        assert event.data == case["fields"]
        assert event.subject == case["fields"].get("unloq_id")
    else:
        assert event.data == json.loads(case["body"])


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_committed_node_vectors(make_request, case):
    check_vector(make_request, case)


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
def test_fresh_node_vectors_match_and_verify(make_request):
    fresh = json.loads(subprocess.run([NODE, str(VECTORS / "unloq_sign.js")], capture_output=True,
                                      check=True, timeout=60).stdout)
    assert fresh == CASES, "vectors/unloq.json is stale: regenerate it with node unloq_sign.js"
    for case in fresh:
        check_vector(make_request, case)


def test_utf16_order_vector_really_differs_from_code_point_order():
    (case,) = [case for case in CASES if case["name"] == "keys in UTF-16 order"]
    keys = list(json.loads(case["body"]))
    assert sorted(keys) != sorted(keys, key=lambda key: key.encode("utf-16-be", "surrogatepass"))


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
def test_js_number_matches_node_string_conversion():
    rng = random.Random(20240601)
    values = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(300)]
    values += [rng.uniform(-1e6, 1e6) for _ in range(100)] + [rng.randint(-10**6, 10**6) / 1000 for _ in range(100)]
    values += [0.0, -0.0, 1.0, 1.5, 1e21, 1e20, 1e-6, 1e-7, 123e-20, 5e-324, 1.7976931348623157e308]
    values = [value for value in values if value == value and abs(value) != float("inf")]
    script = "const xs = JSON.parse(require('fs').readFileSync(0, 'utf8')); console.log(JSON.stringify(xs.map(String)))"
    result = subprocess.run([NODE, "-e", script], input=json.dumps(values), capture_output=True, text=True,
                            check=True, timeout=60)
    assert [js_number(value) for value in values] == json.loads(result.stdout)


def test_rotation_old_secret_still_verifies_and_only_index_is_logged(make_request, caplog):
    case = CASES[0]
    old = case["secret"].encode()
    caplog.set_level(logging.DEBUG, logger="webhookbus.verifiers.unloq")
    (event,) = verifier(b"the-new-secret", old).verify(vector_request(make_request, case)).events
    assert event.id == case["id"]
    (record,) = [r for r in caplog.records if r.name == "webhookbus.verifiers.unloq"]
    assert record.secret_index == 1
    assert case["secret"] not in caplog.text and "the-new-secret" not in caplog.text


def test_wrong_secret(make_request):
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier(b"not-the-secret").verify(vector_request(make_request, CASES[0]))


@pytest.mark.parametrize("body", [
    "unloq_id=123457&sid=s%3Aabc.DEF%2Fghi",  # one byte of a value
    "unloq_id=123456&sid=s%3Aabc.DEF%2Fghj",
    "unloq_id=123456&sid=s%3Aabc.DEF%2Fghi&x=",  # an added (blank) field is signed too
])
def test_tampered_body(make_request, body):
    with pytest.raises(VerificationFailed):
        verifier(CASES[0]["secret"].encode()).verify(vector_request(make_request, CASES[0], body=body))


def test_missing_header(make_request):
    request = make_request("unloq", "POST", "/webhooks/unloq/logout", "unloq_id=1", {"Content-Type": FORM})
    with pytest.raises(VerificationFailed, match="missing X-Unloq-Signature"):
        verifier().verify(request)


@pytest.mark.parametrize("garbage", [
    "", "not base64 at all!", "%%%%", "A" * 10240, "QUJD" * 2560, "\x00\xff\xfe\x80binary\x7f", "é" * 44,
])
def test_garbage_header(make_request, garbage):
    headers = {"Content-Type": FORM, "X-Unloq-Signature": garbage}
    request = make_request("unloq", "POST", "/webhooks/unloq/logout", "unloq_id=1&sid=2", headers)
    with pytest.raises(VerificationFailed):
        verifier().verify(request)


def test_signed_for_logout_replayed_to_account_fails(make_request):
    fields = {"unloq_id": "42", "sid": "s-1"}
    body = "unloq_id=42&sid=s-1"
    signature = sign("/webhooks/unloq/logout", fields)
    headers = {"Content-Type": FORM, "X-Unloq-Signature": signature}
    assert verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", body, headers)).events[0].name == "logout"
    with pytest.raises(VerificationFailed, match="does not match"):
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/account", body, headers))


def test_query_string_is_part_of_the_signature(make_request):
    case = next(case for case in CASES if case["query"])
    with pytest.raises(VerificationFailed):
        verifier(case["secret"].encode()).verify(vector_request(make_request, case, query=""))
    with pytest.raises(VerificationFailed):
        verifier(case["secret"].encode()).verify(vector_request(make_request, case, query=case["query"] + "&y=2"))


def test_unknown_hook_path(make_request):
    fields = {"unloq_id": "42"}
    headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/delete", fields)}
    with pytest.raises(VerificationFailed, match="unknown UNLOQ hook path"):
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/delete", "unloq_id=42", headers))


def test_hooks_option_maps_segments_to_names(make_request):
    fields = {"unloq_id": "42", "email": "a@b.c", "ip": ""}
    body = "unloq_id=42&email=a%40b.c&ip="
    headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/hooks/unloq/activate", fields)}
    (event,) = verifier(hooks={"activate": "account.activated"}).verify(
        make_request("unloq", "POST", "/hooks/unloq/activate", body, headers)).events
    assert (event.name, event.subject, event.data) == ("account.activated", "42", fields)
    with pytest.raises(VerificationFailed, match="unknown UNLOQ hook path"):
        verifier(hooks={"activate": "account.activated"}).verify(
            make_request("unloq", "POST", "/hooks/unloq/logout", body, headers))


def test_id_is_deterministic_and_depends_on_content(make_request):
    def event_for(sid):
        fields = {"unloq_id": "42", "sid": sid}
        headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/logout", fields)}
        request = make_request("unloq", "POST", "/webhooks/unloq/logout", f"unloq_id=42&sid={sid}", headers)
        return verifier().verify(request).events[0]

    assert event_for("a").id == event_for("a").id != event_for("b").id
    expected = hashlib.sha256(b"/webhooks/unloq/logoutsidaunloq_id42").hexdigest()
    assert event_for("a").id == expected


def test_malformed_json_with_valid_signature_is_400(make_request):
    # What a Node receiver would sign for an unparsable body: the target and no fields.
    headers = {"Content-Type": "application/json", "X-Unloq-Signature": sign("/webhooks/unloq/logout", {})}
    for body in ['{"unloq_id": "1",', "[1, 2]", '{"unloq_id": NaN}', "[" * 100_000, b"\xff\xfe{}"]:
        with pytest.raises(MalformedPayload) as caught:
            verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", body, headers))
        assert caught.value.status == 400


def test_ten_thousand_field_form_is_400_not_a_crash(make_request):
    fields = {f"f{i}": str(i) for i in range(10_000)}
    body = "&".join(f"{key}={value}" for key, value in fields.items())
    headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/logout", fields)}
    with pytest.raises(MalformedPayload, match="more than 1000 fields") as caught:
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", body, headers))
    assert caught.value.status == 400
    json_body = json.dumps(fields)
    with pytest.raises(MalformedPayload, match="more than 1000 fields"):
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", json_body,
                                       headers | {"Content-Type": "application/json"}))


@pytest.mark.parametrize(("content_type", "body"), [
    (FORM, "unloq_id=1&unloq_id=2"),  # Node would make an array and sign "1,2"
    (FORM, "unloq_id=%FF"),  # not UTF-8 once unescaped
    (FORM, b"unloq_id=\xff"),
    ("text/plain", "unloq_id=1"),
    ("", "unloq_id=1"),
])
def test_unreadable_forms_are_400(make_request, content_type, body):
    headers = {"Content-Type": content_type, "X-Unloq-Signature": sign("/webhooks/unloq/logout", {"unloq_id": "1"})}
    with pytest.raises(MalformedPayload):
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", body, headers))


def test_errors_never_contain_the_secret_or_digest(make_request):
    fields = {"unloq_id": "1"}
    good = sign("/webhooks/unloq/logout", fields)
    headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/logout", fields, b"other")}
    with pytest.raises(VerificationFailed) as caught:
        verifier().verify(make_request("unloq", "POST", "/webhooks/unloq/logout", "unloq_id=1", headers))
    assert SECRET.decode() not in caught.value.detail and good not in caught.value.detail


def test_options_reject_unknown_keys_and_need_a_secret():
    with pytest.raises(ValidationError):
        UnloqOptions(hook={"logout": "logout"})
    with pytest.raises(ValueError):
        UnloqVerifier(UnloqOptions(), [])


# --- end to end: the shipped config/providers/unloq.yaml, a real listener and broker -----------------

def vector(name: str) -> dict:
    return next(case for case in CASES if case["name"] == name)


def post_vector(listener, case, **changes):
    case = case | changes
    target = case["raw_path"] + (f"?{case['query']}" if case["query"] else "")
    headers = {"Content-Type": case["content_type"], "X-Unloq-Signature": case["signature"]}
    return listener.post(target, case["body"].encode(), headers)


def test_e2e_signed_hooks_reach_kafka_as_cloudevents(webhookbus_listener, kafka_broker, shipped_config):
    settings, topics = shipped_config("unloq", [CASES[0]["secret"]])
    listener = webhookbus_listener(settings)
    sent = [vector("query string is signed"), vector("percent-encoded path"), vector("account form")]
    for case in sent:
        reply = post_vector(listener, case)
        assert (reply.status, reply.body) == (200, b""), reply.body

    logouts = read_topic(kafka_broker.bootstrap, topics["unloq-logout"], 2)
    [account] = read_topic(kafka_broker.bootstrap, topics["unloq-account"], 1)
    for case, record in zip(sent, [*sorted(logouts, key=lambda r: r.offset), account]):
        event = to_cloudevent(record)
        assert (event.get_type(), event.get_source()) == (f"unloq.{case['event']}", "unloq")
        assert event.get_id() == case["id"]
        assert event.get_subject() == case["fields"]["unloq_id"] == record.key.decode()
        assert event.get_data() == case["fields"]
        assert event.get_extension("verifier") == "unloq"


def test_e2e_refusals_are_json_and_publish_nothing(webhookbus_listener, kafka_broker, shipped_config):
    settings, topics = shipped_config("unloq", ["the-configured-secret"])
    listener = webhookbus_listener(settings)
    good = vector("logout form")  # signed with another secret than the configured one
    fields = {"unloq_id": "42", "sid": "s-1"}
    body = b"unloq_id=42&sid=s-1"
    headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/logout", fields, b"the-configured-secret")}
    assert listener.post("/webhooks/unloq/logout", body, headers).status == 200  # the control case
    many = {str(i): "" for i in range(10_000)}
    many_body = "&".join(f"{key}=" for key in many).encode()
    many_headers = {"Content-Type": FORM, "X-Unloq-Signature": sign("/webhooks/unloq/logout", many, b"the-configured-secret")}

    cases = {
        "wrong secret": (post_vector(listener, good), 401, "verification_failed"),
        "tampered": (listener.post("/webhooks/unloq/logout", body.replace(b"s-1", b"s-2"), headers), 401,
                     "verification_failed"),
        "no header": (listener.post("/webhooks/unloq/logout", body, {"Content-Type": FORM}), 401, "verification_failed"),
        "garbage header": (listener.post("/webhooks/unloq/logout", body, headers | {"X-Unloq-Signature": "%" * 10240}),
                           401, "verification_failed"),
        "replayed to account": (listener.post("/webhooks/unloq/account", body, headers), 401, "verification_failed"),
        "query added": (listener.post("/webhooks/unloq/logout?x=1", body, headers), 401, "verification_failed"),
        "unknown hook": (listener.post("/webhooks/unloq/other", body, headers), 401, "verification_failed"),
        "10,000 fields": (listener.post("/webhooks/unloq/logout", many_body, many_headers), 400, "malformed_payload"),
    }
    for name, (reply, status, error) in cases.items():
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"] == error and reply.json()["detail"], name
        assert b"the-configured-secret" not in reply.body
    assert len(read_topic(kafka_broker.bootstrap, topics["unloq-logout"], 2, timeout=2)) == 1
    assert read_topic(kafka_broker.bootstrap, topics["unloq-account"], 1, timeout=1) == []


def test_shipped_config_passes_check(monkeypatch, capsys):
    monkeypatch.setenv("UNLOQ_API_SECRET", "s3cret-value")
    assert main(["check", "--config", str(Path(__file__).parents[2] / "config/providers/unloq.yaml")]) == 0
    out = capsys.readouterr().out
    assert "unloq" in out and "s3cret-value" not in out
