"""Native TLS and mutual TLS (``server.tls``) on every engine ``auto`` can choose, against a
real listener and broker, with certificates made here by ``cryptography`` (webhookbus.testing.pki)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl

import pytest

from webhookbus.config import ConfigError, parse_config
from webhookbus.testing import read_topic
from webhookbus.testing.pki import TestPki

SECRET = "tls-test-secret"
PATH = "/webhooks/demo"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


def settings(topic: str, tls: dict[str, str]) -> dict[str, object]:
    return {
        "server": {"tls": tls},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": {"id_field": "id"}}},
        "routes": [{"topic": topic}],
    }


def post(port: int, context: ssl.SSLContext, event_id: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"id": event_id}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("POST", PATH, body, {"content-type": "application/json", "x-signature": signature})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_https_is_served_on_every_engine_and_plain_http_is_not(webhookbus_listener, kafka_broker, topic_name, pki):
    topic = topic_name()
    listener = webhookbus_listener(settings(topic, pki.server_tls()))
    status, headers, _ = post(listener.port, pki.client_context(), "over-tls")
    assert status == 200 and headers["x-request-id"] and headers["content-length"] == "0"
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
        connection.request("POST", PATH, b"{}")
        connection.getresponse()
    [record] = read_topic(kafka_broker.bootstrap, topic, 1)
    assert json.loads(record.value)["data"] == {"id": "over-tls"}


def test_client_auth_required_takes_only_certificates_that_chain_to_ca_certs(webhookbus_listener, kafka_broker,
                                                                              topic_name, pki):
    topic = topic_name()
    listener = webhookbus_listener(settings(topic, pki.server_tls("required")))
    refused = {
        "no certificate": pki.client_context(),
        "certificate from a root nobody configured": pki.client_context(pki.client("CN=acme", trusted=False)),
    }
    for name, context in refused.items():
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the handshake fails: the app never sees it
            post(listener.port, context, name)
    status, _, _ = post(listener.port, pki.client_context(pki.client("CN=acme")), "with-certificate")
    assert status == 200
    records = read_topic(kafka_broker.bootstrap, topic, 3, timeout=3)
    assert [json.loads(r.value)["data"]["id"] for r in records] == ["with-certificate"]


def test_client_auth_optional_serves_clients_without_a_certificate(webhookbus_listener, topic_name, pki):
    listener = webhookbus_listener(settings(topic_name(), pki.server_tls("optional")))
    assert post(listener.port, pki.client_context(), "anonymous")[0] == 200
    assert post(listener.port, pki.client_context(pki.client("CN=acme")), "known")[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):  # a certificate that is presented must verify
        post(listener.port, pki.client_context(pki.client("CN=acme", trusted=False)), "stranger")


TRUVALIDATE = """
providers:
  tv:
    verifier: truvalidate
    path: /tv
    secrets: ["file:{service}"]
    options: {{audience: "svc:00000000-0000-0000-0000-000000000000", platform_keys: [{platform}],
               client_subject: "CN=platform"}}
"""


@pytest.fixture
def pinned(tmp_path):
    from webhookbus.testing.samples import DEV_FILES, dev_platform_public_pem

    (tmp_path / "service.pem").write_bytes(DEV_FILES[".dev/truvalidate/service.pem"]())
    (tmp_path / "platform.pem").write_bytes(dev_platform_public_pem())
    text = TRUVALIDATE.format(service=tmp_path / "service.pem", platform=tmp_path / "platform.pem")
    return lambda extra: text + extra


def test_a_pinned_client_subject_needs_a_certificate_source_and_an_engine_that_passes_it_on(pinned, pki):
    tls = f"  tls: {{certfile: {pki.certfile}, keyfile: {pki.keyfile}, ca_certs: {pki.ca_certs}, client_auth: optional}}\n"
    with pytest.raises(ConfigError, match=r"client_subject: needs the client certificate"):
        parse_config(pinned("server: {engine: uvicorn}\n"))
    with pytest.raises(ConfigError, match=r"client_subject: server.engine hypercorn cannot hand"):
        parse_config(pinned("server:\n  engine: hypercorn\n" + tls))
    assert parse_config(pinned("server:\n  engine: uvicorn\n" + tls)).settings.server.engine_name == "uvicorn"
    proxied = "server:\n  engine: hypercorn\n  client_cert_header: {trusted_proxies: [127.0.0.1]}\n"
    assert parse_config(pinned(proxied)).settings.server.engine == "hypercorn"


def test_tls_settings_are_checked_when_the_config_loads(pki, tmp_path):
    files = f"certfile: {pki.certfile}, keyfile: {pki.keyfile}"
    server = parse_config(f"server:\n  tls: {{{files}, ca_certs: {pki.ca_certs}, require_client_cert: true}}\n")
    assert server.settings.server.tls.client_auth == "required", "the setting before client_auth still works"
    cases = {
        f"{{{files}, ca_certs: {pki.ca_certs}, require_client_cert: true, client_auth: optional}}": "contradicts",
        f"{{{files}, client_auth: required}}": "needs ca_certs",
        f"{{certfile: {tmp_path / 'missing.pem'}, keyfile: {pki.keyfile}}}": "cannot load",
        f"{{certfile: {pki.certfile}, keyfile: {pki.ca_certs}}}": "cannot load",  # not a key
    }
    for tls, message in cases.items():
        with pytest.raises(ConfigError, match=rf"config>:2: server\.tls: .*{message}"):
            parse_config(f"server:\n  tls: {tls}\n")


def test_http2_is_offered_over_tls_where_the_engine_has_it(webhookbus_listener, kafka_broker, topic_name, pki,
                                                          webhookbus_engine):
    import socket

    import h2.config
    import h2.connection
    import h2.events

    from webhookbus.http.engines import ENGINES, resolve

    topic = topic_name()
    listener = webhookbus_listener(settings(topic, pki.server_tls()))
    context = pki.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", listener.port), timeout=10),
                             server_hostname="127.0.0.1") as sock:
        if not ENGINES[resolve(webhookbus_engine)].http2:
            assert sock.selected_alpn_protocol() in (None, "http/1.1")
            return
        assert sock.selected_alpn_protocol() == "h2"
        body = json.dumps({"id": "over-h2"}).encode()
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        connection.send_headers(1, [(":method", "POST"), (":path", PATH), (":scheme", "https"),
                                    (":authority", "127.0.0.1"), ("content-type", "application/json"),
                                    ("x-signature", signature), ("content-length", str(len(body)))])
        connection.send_data(1, body, end_stream=True)
        sock.sendall(connection.data_to_send())
        headers: dict[bytes, bytes] = {}
        ended = False
        while not ended:
            for event in connection.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(connection.data_to_send())
    assert headers[b":status"] == b"200" and headers[b"x-request-id"]
    assert [json.loads(r.value)["data"]["id"] for r in read_topic(kafka_broker.bootstrap, topic, 1)] == ["over-h2"]
