"""PII rules per route: what reaches Kafka, what the config refuses, what check warns about."""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from typing import Any

import pytest
import yaml

from webhookbus.cli import main
from webhookbus.config import ConfigError, parse_config
from webhookbus.pii import pii_warnings
from webhookbus.testing import read_topic, to_cloudevent

SECRET = "pii-test-secret"
PATH = "/webhooks/demo"
KEY_A, KEY_B = "pii-hash-key-a", "pii-hash-key-b"
EMAIL, NAME, DOB, ALIAS = "ada@example.org", "Ada Lovelace", "1815-12-10", "ada-alias@example.org"


def signed(payload: Any) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "x-signature": f"sha256={digest}"}


def expected_hash(key: str, value: str) -> str:
    """HMAC-SHA256 hex of the value's UTF-8, computed here, not by webhookbus."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def hash_keys(tmp_path, monkeypatch):
    (tmp_path / "key-b").write_text(KEY_B + "\n")
    monkeypatch.setenv("TEST_PII_KEY_A", KEY_A)
    return {"a": "env:TEST_PII_KEY_A", "b": f"file:{tmp_path / 'key-b'}"}


def test_records_hold_no_original_value_and_hashes_join(webhookbus_listener, kafka_broker, topic_name, hash_keys):
    ruled, ruled_binary, other_key, raw = (topic_name("pii") for _ in range(4))
    rules = {"hash_key": hash_keys["a"], "hash": ["subject", "data.user.email", "data.user.aliases.*"],
             "mask": ["data.user.name"], "drop": ["data.user.dob", "data.missing.field"]}
    listener = webhookbus_listener({
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": {"prefix": "sha256=", "id_field": "id", "subject_field": "user.email"}}},
        "routes": [
            {"topic": ruled, "pii": rules, "key": "data.user.email"},
            {"topic": ruled_binary, "pii": rules, "mode": "binary"},
            {"topic": other_key, "pii": {**rules, "hash_key": hash_keys["b"]}},
            {"topic": raw},  # a restricted topic keeps everything: rules belong to the route
        ],
    })
    user = {"email": EMAIL, "name": NAME, "dob": DOB, "plan": "pro", "aliases": [ALIAS, EMAIL]}
    for event_id in ("e1", "e2"):  # the same person twice
        body, headers = signed({"id": event_id, "user": user})
        assert listener.post(PATH, body, headers).status == 200

    records = {topic: read_topic(kafka_broker.bootstrap, topic, 2) for topic in (ruled, ruled_binary, other_key, raw)}
    assert all(len(found) == 2 for found in records.values()), {t: len(r) for t, r in records.items()}
    for topic in (ruled, ruled_binary, other_key):
        for record in records[topic]:
            everything = record.value + (record.key or b"") + b"".join(v or b"" for _, v in record.headers or [])
            for original in (EMAIL, NAME, DOB, ALIAS):
                assert original.encode() not in everything, (topic, original)

    digest_a, digest_b = expected_hash(KEY_A, EMAIL), expected_hash(KEY_B, EMAIL)
    assert digest_a != digest_b
    for topic, digest in ((ruled, digest_a), (ruled_binary, digest_a), (other_key, digest_b)):
        events = [to_cloudevent(record) for record in records[topic]]  # the SDK reads them: JSON as declared
        for event in events:
            assert event.get_subject() == digest
            assert event.get_data() == {"id": event.get_id(), "user": {
                "email": digest, "name": "***", "plan": "pro", "aliases": [expected_hash(KEY_A if digest == digest_a
                                                                                          else KEY_B, ALIAS), digest]}}
    assert [record.key for record in records[ruled]] == [digest_a.encode()] * 2, "the key is read after the rules"
    kept = [to_cloudevent(record).get_data()["user"] for record in records[raw]]
    assert kept == [user, user]


def config_text(route: str, extra: str = "") -> str:
    return textwrap.dedent("""\
        providers:
          uip:
            verifier: uip
            path: /webhooks/uip
            secrets: [env:TEST_UIP_SECRET]
        routes:
        """) + textwrap.indent(textwrap.dedent(route), "  ") + extra


@pytest.fixture(autouse=True)
def uip_secret(monkeypatch):
    monkeypatch.setenv("TEST_UIP_SECRET", "uip-secret-never-printed")


@pytest.mark.parametrize("route, message", [
    ("- topic: t\n  include_raw_body: true\n  pii: {drop: [data.data.name]}\n",
     "cfg.yaml:7: routes.0: Value error, include_raw_body would publish the fields the pii rules remove"),
    ("- topic: t\n  pii: {hash: [data.data.name]}\n", "cfg.yaml:8: routes.0.pii: Value error, hash needs a hash_key"),
    ("- topic: t\n  pii: {hash: [data.x], hash_key: inline-key-value}\n",
     "cfg.yaml:8: routes.0.pii.hash_key: Value error, the hash key must be a reference"),
    ("- topic: t\n  pii: {hash: [data.x], hash_key: env:TEST_PII_UNSET}\n",
     "cfg.yaml:8: routes.0.pii.hash_key: environment variable TEST_PII_UNSET is not set"),
    ("- topic: t\n  pii: {mask: [user.email]}\n", "cfg.yaml:8: routes.0.pii.mask.0: Value error, 'user.email': a PII rule"),
    ("- topic: t\n  pii: {mask: [data.a], drop: [data.a]}\n", "routes.0.pii: Value error, data.a: one rule per field"),
])
def test_bad_rules_are_config_errors_with_their_line(route, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(route), "cfg.yaml")
    assert message in str(caught.value)
    assert "inline-key-value" not in str(caught.value)


def test_check_warns_of_pii_sent_to_a_topic_without_rules(tmp_path, capsys, monkeypatch):
    route = """\
        - {name: open, topic: identity.all}
        - name: partly
          topic: identity.partly
          pii: {drop: [data.data.name, data.data.date_of_birth]}
        - name: covered
          topic: identity.safe
          pii: {drop: [data.data], hash: [subject], hash_key: env:TEST_PII_KEY}
        - {name: restricted, topic: identity.restricted, pii: {keep: [subject, data.data]}, include_raw_body: true}
        - {name: others, provider: uip, type: "unloq.*", topic: identity.unloq}
        """
    monkeypatch.setenv("TEST_PII_KEY", "k")
    config = parse_config(config_text(route), "cfg.yaml")
    warnings = pii_warnings(config)
    assert warnings == [
        "routes[0] (open) sends PII to topic identity.all without a pii rule (drop, hash, mask or keep): uip: subject, "
        "data.data.name, data.data.date_of_birth, data.data.country_of_origin, data.data.uip_id, data.data.signing_uip_id",
        "routes[1] (partly) sends PII to topic identity.partly without a pii rule (drop, hash, mask or keep): uip: "
        "subject, data.data.country_of_origin, data.data.uip_id, data.data.signing_uip_id",
    ]
    path = tmp_path / "c.yaml"
    path.write_text(config_text(route))
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pii: drop data.data; hash subject" in out and "pii: keep subject, data.data" in out
    assert f"warning: {warnings[0]}" in out and f"warning: {warnings[1]}" in out


def test_every_builtin_verifier_lists_pii_paths_a_rule_can_name():
    """The list next to each verifier is what check compares rules with: each entry must be a
    path a rule accepts (a typo would make the warning impossible to silence)."""
    from webhookbus.pii import PiiRules
    from webhookbus.plugin import installed_verifiers

    listed = {name: getattr(entry.load(), "pii_fields", ()) for name, entry in installed_verifiers().items()}
    for name in ("unloq", "uip", "truvalidate", "zignsec", "authgear"):
        assert listed[name], name
        PiiRules(drop=list(listed[name]))


def test_rules_leave_the_event_other_routes_see_untouched(hash_keys, monkeypatch):
    from datetime import datetime, timezone

    from webhookbus.events import CloudEvent
    from webhookbus.routing import messages_for

    monkeypatch.setenv("TEST_PII_KEY_A", KEY_A)
    config = parse_config(yaml.safe_dump({"routes": [
        {"topic": "a", "pii": {"drop": ["data.u.*.mail"], "mask": ["data.u.*.name"]}}, {"topic": "b"}]}))
    data = {"u": [{"mail": EMAIL, "name": NAME}, {"name": None}, "text"]}
    event = CloudEvent(id="1", source="s", type="s.t", time=datetime.now(timezone.utc), data=data,
                       data_json=json.dumps(data).encode())
    ruled, plain = messages_for(config.settings, event)
    assert json.loads(ruled.value)["data"] == {"u": [{"name": "***"}, {"name": None}, "text"]}
    assert json.loads(plain.value)["data"] == data == {"u": [{"mail": EMAIL, "name": NAME}, {"name": None}, "text"]}
