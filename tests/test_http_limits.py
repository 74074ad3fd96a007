"""The HTTP limits the config promises, over raw sockets, on every engine ``auto`` can choose
(``webhookbus_engine`` is parametrized in conftest.py): the request head's size and time, a
body that never starts, ``Expect: 100-continue``, and the headers on every answer."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from typing import Any

import pytest

from webhookbus.http.engines import KEEP_ALIVE_TIMEOUT
from webhookbus.testing import read_topic

SECRET = "limits-test-secret"
PATH = "/webhooks/demo"


def settings(topic: str, **server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": {"id_field": "id"}}},
        "routes": [{"topic": topic}],
    }


def head(body: bytes, extra: str = "") -> bytes:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return (f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-signature: {signature}\r\n{extra}\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body); a 1xx is returned as it is."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def event(event_id: str) -> bytes:
    return json.dumps({"id": event_id}).encode()


def test_a_head_over_16_kib_in_one_read_is_refused_and_one_under_it_is_served(webhookbus_listener, topic_name):
    listener = webhookbus_listener(settings(topic_name()))
    body = event("big-head")
    with connect(listener.port) as sock:
        sock.sendall(head(body, "x-padding: " + "a" * 17_000 + "\r\n") + body)  # one write, one read
        status, headers, reply = read_response(sock)
    assert status == 431
    assert json.loads(reply)["error"] == "headers_too_large" and headers["x-request-id"]
    assert headers["content-length"] == str(len(reply))
    with connect(listener.port) as sock:
        sock.sendall(head(body, "x-padding: " + "a" * 12_000 + "\r\n") + body)
        status, headers, _ = read_response(sock)
    assert status == 200 and headers["x-request-id"]


def test_a_head_growing_past_16_kib_without_ending_is_refused(webhookbus_listener, topic_name):
    listener = webhookbus_listener(settings(topic_name()))
    with connect(listener.port) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\n".encode())
        with pytest.raises((ConnectionError, OSError)):
            for index in range(40):  # 40 KB of headers that never end, 1 KB a write
                sock.sendall(f"x-h{index}: {'b' * 1000}\r\n".encode())
                time.sleep(0.005)
            status, _, _ = read_response(sock)
            assert status == 431
            raise ConnectionError("answered 431")


def test_a_head_that_never_completes_is_answered_or_closed_within_the_timeout(webhookbus_listener, topic_name,
                                                                             webhookbus_engine):
    listener = webhookbus_listener(settings(topic_name(), request_timeout=1))
    with connect(listener.port) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\n".encode())  # the blank line never comes
        started = time.monotonic()
        try:
            status, _, _ = read_response(sock)
        except ConnectionError:  # hypercorn closes without an answer
            status = None
        waited = time.monotonic() - started
    if webhookbus_engine == "hypercorn":  # its keep-alive timeout, which is longer here, closes the connection
        assert status is None and waited < KEEP_ALIVE_TIMEOUT + 1.5
    else:
        assert status == 408 and waited < 2.5, "request_timeout bounds the head (a sweep twice a second)"


def test_a_body_that_never_starts_gets_408_within_the_timeout_and_takes_no_slot(webhookbus_listener, kafka_broker,
                                                                                topic_name):
    topic = topic_name()
    listener = webhookbus_listener(settings(topic, request_timeout=1, max_in_flight=1))
    with connect(listener.port) as stalled:
        stalled.sendall(head(b'{"id": "never"}'))  # the head only: the body never starts
        started = time.monotonic()
        time.sleep(0.3)
        for index in range(2):  # the only slot is free for requests whose body is in
            with connect(listener.port) as other:
                body = event(f"beside-{index}")
                other.sendall(head(body) + body)
                status, _, _ = read_response(other)
            assert status == 200
        status, headers, reply = read_response(stalled)
        assert status == 408 and json.loads(reply)["error"] == "request_timeout"
        assert headers["x-request-id"] and headers["content-length"] == str(len(reply))
        assert time.monotonic() - started < 2.5, "request_timeout plus at most a quarter of it (the sweep)"
    assert len(read_topic(kafka_broker.bootstrap, topic, 2)) == 2


def test_a_declared_body_over_the_limit_with_expect_100_continue_gets_413_and_no_100(
        webhookbus_listener, topic_name, webhookbus_engine, request):
    if webhookbus_engine == "hypercorn":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="hypercorn writes 100 Continue itself before the application runs"))
    listener = webhookbus_listener(settings(topic_name(), max_body_bytes=1000))
    with connect(listener.port) as sock:
        sock.sendall(head(b"x" * 5000, "expect: 100-continue\r\n"))
        status, headers, reply = read_response(sock)
    assert status == 413, f"got {status} first"
    assert json.loads(reply)["error"] == "body_too_large" and headers["x-request-id"]


def test_expect_100_continue_within_the_limit_gets_100_then_the_answer(webhookbus_listener, kafka_broker, topic_name):
    topic = topic_name()
    listener = webhookbus_listener(settings(topic))
    body = event("continued")
    with connect(listener.port) as sock:
        sock.sendall(head(body, "expect: 100-continue\r\n"))
        status, _, _ = read_response(sock)
        assert status == 100
        sock.sendall(body)
        status, headers, _ = read_response(sock)
    assert status == 200 and headers["x-request-id"] and headers["content-length"] == "0"
    assert len(read_topic(kafka_broker.bootstrap, topic, 1)) == 1


def test_a_malformed_request_gets_400_and_the_connection_closes(webhookbus_listener, topic_name, webhookbus_engine):
    listener = webhookbus_listener(settings(topic_name()))
    with connect(listener.port) as sock:
        sock.sendall(b"POST /webhooks/demo HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n")
        status, headers, reply = read_response(sock)
        assert status == 400 and headers["content-length"] == str(len(reply))
        if webhookbus_engine == "uvicorn":  # hypercorn's h11 writes its own bare 400
            assert json.loads(reply)["error"] == "bad_request" and headers["x-request-id"]
        assert sock.recv(1) == b"", "closed after the answer"
