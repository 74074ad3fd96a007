"""No configured secret value ever appears in a log line, a response, or a Kafka record.

The whole example configuration runs on a real broker with the audit topic on, and gets
correctly signed requests of every provider and variant, wrongly signed, tampered,
malformed, oversized and misrouted ones; every line any logger wrote is captured.
"""

from __future__ import annotations

import base64
import logging
import socket

from webhookbus.log import JsonFormatter
from webhookbus.testing import read_topic
from webhookbus.testing.samples import sample_request, signers_for


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def forms(secret: bytes) -> list[bytes]:
    """The secret as written, and a key file's base64 body lines (what a leaked key would show)."""
    if secret.startswith(b"-----BEGIN"):
        return [line for line in secret.splitlines() if line and not line.startswith(b"-----")]
    return [secret, base64.b64encode(secret), secret.hex().encode()]


def test_no_secret_value_reaches_logs_responses_or_kafka(webhookbus_listener, kafka_broker, topic_name, example_settings):
    settings, secrets = example_settings
    audit = topic_name("audit")
    settings = {**settings, "audit": {"topic": audit, "max_per_second": 1000, "burst": 1000},
                "server": {**settings.get("server", {}), "max_body_bytes": 4096}}
    capture = Capture()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        listener = webhookbus_listener(settings)
        config = listener.config
        assert config is not None
        replies = []
        for name, provider in config.providers.items():
            for variant in signers_for(provider.settings.verifier):
                signed = sample_request(provider, variant=variant)
                path = signed.path
                replies.append(listener.post(path, signed.body, signed.headers))
                replies.append(listener.post(path, signed.body, signed.headers))  # a retry (dedup)
                replies.append(listener.post(path, signed.body + b" ", signed.headers))  # tampered
                replies.append(listener.post(path, signed.body, {k: v[:-4] + "AAAA" for k, v in signed.headers.items()}))
                replies.append(listener.post(path, signed.body, {"content-type": "application/json"}))
                replies.append(listener.post(path, b"x" * 5000, signed.headers))
                replies.append(listener.post(path, b"\xff\xfe{not json", signed.headers))
                replies.append(listener.post(path, signed.body, signed.headers, method="GET"))
        replies.append(listener.post("/nowhere", b"{}", {}))
        routed = [route["topic"] for route in settings["routes"]] + [settings["unrouted"]["topic"]]
        records = [r for topic in routed for r in read_topic(kafka_broker.bootstrap, topic, 10_000, timeout=1.0)]
        records += read_topic(kafka_broker.bootstrap, audit, 10_000, timeout=3.0)
    finally:
        root.removeHandler(capture)
        root.setLevel(previous_level)

    assert {reply.status for reply in replies} >= {200, 400, 401, 405, 413, 404}, "every kind of answer was produced"
    assert any('"verification_failed"' in line for line in capture.lines), "the request log was captured"
    assert any(r.topic == audit for r in records) and any(r.topic != audit for r in records)
    outputs = [line.encode() for line in capture.lines]
    outputs += [reply.body + repr(reply.headers).encode() for reply in replies]
    outputs += [(record.value or b"") + repr(record.headers).encode() + (record.key or b"") for record in records]
    for secret in secrets:
        for form in forms(secret):
            leaks = [output[:200] for output in outputs if form in output]
            assert not leaks, f"a secret appeared in: {leaks[0]!r}"


def test_the_example_listener_starts_while_the_examples_admin_port_is_taken(webhookbus_listener, example_settings):
    """A ``make run`` (or another checkout's tests) holding 9090 must not stop the example from
    starting in tests: that was the 'listener took 12-15 s to listen' of full-suite runs."""
    settings, _ = example_settings
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 9090))
            taken.listen()
        except OSError:  # someone holds it already: the situation this test sets up
            pass
        listener = webhookbus_listener(settings)
    assert listener.post("/webhooks/demo", b"{}", {}).status == 401
