"""In-flight slots go to requests whose body is in: headers and then nothing starve nobody."""

from __future__ import annotations

import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from webhookbus.testing.samples import sign_hmac
from webhookbus.verifiers.hmac import HmacOptions

SECRET = "overload-test-secret"
PATH = "/webhooks/demo"
OPTIONS = HmacOptions(prefix="sha256=", event_field="type", id_field="id")
MAX_IN_FLIGHT = 4


def config(topic: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"max_in_flight": MAX_IN_FLIGHT, **server},
        "kafka": {"publish_timeout": 2.0},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": OPTIONS.model_dump(exclude_defaults=True)}},
        "routes": [{"topic": topic}],
    }


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    request = sign_hmac(OPTIONS, SECRET.encode(), PATH, {"type": "user.updated", "id": event_id})
    return request.body, request.headers


def headers_then_nothing(port: int) -> socket.socket:
    """The attack: a complete header block announcing a body that never comes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 f"content-length: 500\r\nx-signature: sha256=00\r\n\r\n".encode())
    return sock


def test_connections_sending_headers_and_no_body_do_not_starve_genuine_requests(webhookbus_listener, topic_name,
                                                                                read_events):
    topic = topic_name("starve")
    listener = webhookbus_listener(config(topic, request_timeout=30))
    with ExitStack() as attack:
        for _ in range(4 * MAX_IN_FLIGHT):
            attack.enter_context(headers_then_nothing(listener.port))
        statuses = [listener.post(PATH, *signed(f"genuine-{n}")).status for n in range(10)]
        assert statuses == [200] * 10, "every genuine request got a slot while the attack held its connections"
    assert sorted(e.get_id() for e in read_events(topic, 10)) == sorted(f"genuine-{n}" for n in range(10))


def test_requests_with_their_body_in_still_take_the_bounded_slots(webhookbus_listener, own_broker, topic_name):
    """A stalled broker holds each request up to publish_timeout: beyond max_in_flight, 503."""
    listener = webhookbus_listener(config(topic_name("slots")), bootstrap=own_broker.bootstrap)
    assert listener.post(PATH, *signed("warm-up")).status == 200
    os.kill(own_broker.process.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3 * MAX_IN_FLIGHT) as pool:
            replies = list(pool.map(lambda n: listener.post(PATH, *signed(f"held-{n}")), range(3 * MAX_IN_FLIGHT)))
    finally:
        os.kill(own_broker.process.pid, signal.SIGCONT)
    refused = [r for r in replies if r.status == 503]
    assert len(refused) >= MAX_IN_FLIGHT and {r.json()["error"] for r in refused} == {"overloaded"}
    assert sum(r.status == 200 for r in replies) >= 1, "the ones holding a slot were spooled at the deadline"
