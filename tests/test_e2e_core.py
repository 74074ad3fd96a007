"""End to end on a real broker: signed POST -> listener -> Kafka -> CloudEvents SDK."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from webhookbus.testing import read_topic, to_cloudevent

SECRET = "core-test-secret"
PATH = "/webhooks/demo"


def signed(payload: Any, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """Sign the way a typical vendor does (GitHub-style sha256= hex), independent of webhookbus."""
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "x-signature": f"sha256={digest}"}


def demo_config(routes: list[dict[str, Any]], unrouted: dict[str, Any] | None = None, **kafka: Any) -> dict[str, Any]:
    return {
        "kafka": kafka,
        "providers": {
            "demo": {
                "verifier": "hmac",
                "path": PATH,
                "secrets": [f"literal:{SECRET}"],
                "options": {"prefix": "sha256=", "event_field": "type", "id_field": "id", "subject_field": "user.id"},
            }
        },
        "routes": routes,
        "unrouted": unrouted or {"action": "drop"},
    }


EVENT = {"type": "user.created", "id": "evt_1", "user": {"id": "u_42", "plan": "pro"}}


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_signed_webhook_reaches_kafka_as_a_cloudevent(webhookbus_listener, kafka_broker, topic_name, mode, kafka_client):
    topic = topic_name("demo")
    listener = webhookbus_listener(demo_config([{"provider": "demo", "type": "demo.*", "topic": topic, "mode": mode}]))
    body, headers = signed(EVENT)

    reply = listener.post(PATH, body, headers)

    assert reply.status == 200, reply.body
    [record] = read_topic(kafka_broker.bootstrap, topic, 1)
    assert record.key == b"u_42"
    content_type = dict(record.headers)["content-type"]
    if mode == "structured":
        assert content_type == b"application/cloudevents+json"
    else:
        assert content_type == b"application/json"
        assert dict(record.headers)["ce_type"] == b"demo.user.created"
    event = to_cloudevent(record)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == "evt_1"
    assert event.get_source() == "demo"
    assert event.get_type() == "demo.user.created"
    assert event.get_subject() == "u_42"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    assert event.get_extension("verifier") == "hmac"
    assert event.get_extension("receivedtime")
    assert event.get_data() == EVENT


def test_event_without_id_gets_a_body_hash(webhookbus_listener, kafka_broker, topic_name):
    topic = topic_name()
    listener = webhookbus_listener(demo_config([{"topic": topic}]))
    body, headers = signed({"type": "ping"})
    assert listener.post(PATH, body, headers).status == 200
    [record] = read_topic(kafka_broker.bootstrap, topic, 1)
    assert to_cloudevent(record).get_id() == hashlib.sha256(body).hexdigest()
    assert record.key is None  # no subject: no key, Kafka spreads the records


def test_fan_out_where_and_key_field(webhookbus_listener, kafka_broker, topic_name):
    everything, pro, free = topic_name("all"), topic_name("pro"), topic_name("free")
    listener = webhookbus_listener(demo_config([
        {"topic": everything},
        {"topic": pro, "where": {"data.user.plan": "pro"}, "key": "data.user.plan"},
        {"topic": free, "where": {"data.user.plan": "free"}},
    ]))
    body, headers = signed(EVENT)
    assert listener.post(PATH, body, headers).status == 200
    assert len(read_topic(kafka_broker.bootstrap, everything, 1)) == 1
    [record] = read_topic(kafka_broker.bootstrap, pro, 1)
    assert record.key == b"pro"
    assert read_topic(kafka_broker.bootstrap, free, 1, timeout=1.5) == []


def test_include_raw_body_keeps_the_exact_bytes(webhookbus_listener, kafka_broker, topic_name):
    import base64

    topic = topic_name()
    listener = webhookbus_listener(demo_config([{"topic": topic, "include_raw_body": True}]))
    body, headers = signed(EVENT)
    assert listener.post(PATH, body, headers).status == 200
    [record] = read_topic(kafka_broker.bootstrap, topic, 1)
    assert base64.b64decode(to_cloudevent(record).get_extension("rawbody")) == body


def test_unrouted_policy_topic_and_drop(webhookbus_listener, kafka_broker, topic_name):
    fallback, never = topic_name("unrouted"), topic_name("never")
    routes = [{"topic": never, "type": "demo.nothing.*"}]
    to_fallback = webhookbus_listener(demo_config(routes, {"action": "topic", "topic": fallback}))
    body, headers = signed(EVENT)
    assert to_fallback.post(PATH, body, headers).status == 200
    [record] = read_topic(kafka_broker.bootstrap, fallback, 1)
    assert to_cloudevent(record).get_type() == "demo.user.created"

    dropping = webhookbus_listener(demo_config(routes))
    assert dropping.post(PATH, body, headers).status == 200
    assert read_topic(kafka_broker.bootstrap, never, 1, timeout=1.5) == []
    assert len(read_topic(kafka_broker.bootstrap, fallback, 2, timeout=1.5)) == 1


def test_error_statuses_have_json_reasons_and_nothing_reaches_kafka(webhookbus_listener, kafka_broker, topic_name):
    topic = topic_name()
    listener = webhookbus_listener({**demo_config([{"topic": topic}]), "server": {"max_body_bytes": 1000}})
    body, headers = signed(EVENT)

    cases = {
        "unknown path": (listener.post("/nowhere", body, headers), 404, "not_found"),
        "wrong method": (listener.post(PATH, b"", headers, method="GET"), 405, "method_not_allowed"),
        "too large": (listener.post(PATH, b"x" * 1001, headers), 413, "body_too_large"),
        "wrong secret": (listener.post(PATH, *signed(EVENT, "not-the-secret")), 401, "verification_failed"),
        "tampered": (listener.post(PATH, body.replace(b"u_42", b"u_43"), headers), 401, "verification_failed"),
        "no header": (listener.post(PATH, body, {"content-type": "application/json"}), 401, "verification_failed"),
        "not json": (listener.post(PATH, *signed_raw(b"{not json")), 400, "malformed_payload"),
    }
    for name, (reply, status, error) in cases.items():
        assert (name, reply.status) == (name, status), reply.body
        assert reply.headers["content-type"] == "application/json"
        payload = reply.json()
        assert payload["error"] == error, name
        assert payload["detail"], name
        assert SECRET not in reply.body.decode()
    assert cases["wrong method"][0].headers["allow"] == "POST"
    assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1.5) == []


def signed_raw(body: bytes) -> tuple[bytes, dict[str, str]]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"x-signature": f"sha256={digest}"}


def test_oversized_chunked_body_is_refused_while_reading(webhookbus_listener):
    import http.client

    listener = webhookbus_listener({**demo_config([{"topic": "unused"}]), "server": {"max_body_bytes": 1000}})
    conn = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
    conn.request("POST", PATH, body=iter([b"a" * 800, b"b" * 800]), encode_chunked=True,
                 headers={"transfer-encoding": "chunked"})
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "body_too_large"


def test_body_trickling_past_request_timeout_gets_408(webhookbus_listener, kafka_broker, topic_name):
    import socket

    topic = topic_name()
    listener = webhookbus_listener({**demo_config([{"topic": topic}]), "server": {"request_timeout": 1}})
    body, headers = signed(EVENT)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        head = f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\nx-signature: {headers['x-signature']}\r\n\r\n"
        sock.sendall(head.encode() + body[:10])  # the rest never comes
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # head and body may come in separate segments
            reply += chunk
            if b"}" in reply:
                break
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b'"request_timeout"' in reply
    assert time.monotonic() - started < 5
    assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1) == []


def test_health_and_readiness(webhookbus_listener, kafka_client):
    listener = webhookbus_listener(demo_config([{"topic": "unused"}]))
    assert listener.post("/healthz", method="GET").json() == {"status": "ok"}
    deadline = time.monotonic() + 10
    while (reply := listener.post("/readyz", method="GET")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reply.json() == {"status": "ready"}


def test_broker_outage_gives_503_then_recovers(webhookbus_listener, own_broker, topic_name, kafka_client):
    """With ``on_broker_timeout: reject`` (the default spools instead: tests/test_reliability.py)."""
    topic = topic_name()
    config = demo_config([{"topic": topic}], publish_timeout=1.0)
    config["providers"]["demo"]["on_broker_timeout"] = "reject"
    listener = webhookbus_listener(config, bootstrap=own_broker.bootstrap)
    assert listener.post(PATH, *signed({**EVENT, "id": "evt_before"})).status == 200

    own_broker.stop()
    body, headers = signed({**EVENT, "id": "evt_during"})  # a new event: evt_before is remembered (dedup)
    started = time.monotonic()
    reply = listener.post(PATH, body, headers)
    elapsed = time.monotonic() - started
    assert reply.status == 503
    assert reply.json()["error"] == "broker_unavailable"
    assert reply.headers["retry-after"] == "1"
    assert elapsed < 8, "the answer must come at the deadline, not hang until the client gives up"
    assert listener.post("/readyz", method="GET").status == 503
    assert listener.post("/healthz", method="GET").status == 200

    own_broker.start()
    deadline = time.monotonic() + 30
    while (reply := listener.post(PATH, body, headers)).status != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reply.status == 200
    assert read_topic(own_broker.bootstrap, topic, 1)


def test_client_certificate_subject_is_believed_only_from_trusted_proxies(webhookbus_listener):
    """A spoofed subject header from any other address must not reach a verifier."""
    from webhookbus.http.app import WebhookBus

    listener = webhookbus_listener({
        **demo_config([{"topic": "unused"}]),
        "server": {"client_cert_header": {"header": "X-SSL-Client-S-DN", "trusted_proxies": ["127.0.0.1"]}},
    })
    app = WebhookBus(listener.config)
    subject = "CN=webhooks.launchkey.com,O=iovation\\, Inc.,L=Portland,ST=Oregon,C=US"
    headers = {"x-ssl-client-s-dn": subject}
    assert app._tls_peer({}, headers, ("127.0.0.1", 5000)) == {"subject": subject}
    assert app._tls_peer({}, headers, ("10.9.9.9", 5000)) is None
    assert app._tls_peer({}, {}, ("127.0.0.1", 5000)) is None


def test_deeply_nested_json_is_a_400_not_a_crash(webhookbus_listener):
    listener = webhookbus_listener(demo_config([{"topic": "unused"}]))
    reply = listener.post(PATH, *signed_raw(b"[" * 100_000))
    assert reply.status == 400 and reply.json()["error"] == "malformed_payload"


def test_rotation_any_secret_verifies_and_the_log_names_its_index_not_its_value(webhookbus_listener, caplog):
    import logging

    config = demo_config([{"topic": "unused-rotation"}])
    config["providers"]["demo"]["secrets"] = ["literal:the-new-secret", f"literal:{SECRET}"]
    listener = webhookbus_listener(config)
    with caplog.at_level(logging.INFO, logger="webhookbus.http"):
        assert listener.post(PATH, *signed(EVENT, "the-new-secret")).status == 200
        assert listener.post(PATH, *signed(EVENT, SECRET)).status == 200
        assert listener.post(PATH, *signed(EVENT, "retired-secret")).status == 401
    lines = [r for r in caplog.records if r.name == "webhookbus.http" and getattr(r, "provider", None) == "demo"]
    assert [(r.status, r.secret_index) for r in lines] == [(200, 0), (200, 1), (401, None)]
    assert not any("secret" in r.getMessage() and SECRET in r.getMessage() for r in lines)


def test_an_event_kafka_would_refuse_for_its_size_is_a_413_not_a_2xx_spooled_for_ever(webhookbus_listener, kafka_broker,
                                                                                       topic_name, kafka_client):
    """Either client refuses a record above max_request_size on every attempt."""
    topic = topic_name()
    listener = webhookbus_listener(demo_config([{"topic": topic}], producer={"max_request_size": 20_000}))
    small = {**EVENT, "id": "evt_small", "pad": "x" * 5_000}
    big = {**EVENT, "id": "evt_big", "pad": "x" * 25_000}  # under max_body_bytes, over max_request_size
    reply = listener.post(PATH, *signed(big))
    assert reply.status == 413 and reply.json()["error"] == "event_too_large"
    assert listener.post(PATH, *signed(small)).status == 200
    assert [to_cloudevent(r).get_id() for r in read_topic(kafka_broker.bootstrap, topic, 1)] == ["evt_small"]
    assert len(read_topic(kafka_broker.bootstrap, topic, 2, timeout=1.0)) == 1
