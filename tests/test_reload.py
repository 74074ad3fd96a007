"""Hot reload on a real listener process and a real broker: SIGHUP / `webhookbus reload`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from prometheus_client.parser import text_string_to_metric_families

from webhookbus.testing import free_port, post, read_topic
from webhookbus.testing.process import ServerProcess

from test_replies import responder  # noqa: F401 - a fixture

PATH = "/webhooks/demo"
OLD, NEW = "old-secret-rotated-away", "new-secret-rotated-in"


def signed(secret: str, event_id: str) -> tuple[bytes, dict[str, str]]:
    """GitHub-style hex HMAC-SHA256 of the body, computed here, not by webhookbus."""
    body = json.dumps({"id": event_id, "type": "user.updated"}).encode()
    return body, {"content-type": "application/json",
                  "x-signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, str]:
    references = {}
    for name, value in (("old", OLD), ("new", NEW)):
        (tmp_path / f"{name}.secret").write_text(value + "\n")
        references[name] = f"file:{tmp_path / f'{name}.secret'}"
    return references


def start(tmp_path: Path, kafka_broker, secrets: list[str], topic: str, workers: int = 1) -> ServerProcess:
    return ServerProcess({
        "server": {"workers": workers},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": secrets, "options": {"id_field": "id"}}},
        "routes": [{"topic": topic}],
    }, kafka_broker.bootstrap, tmp_path / "server").start()


def reloads(server: ServerProcess) -> dict[str, float]:
    """webhookbus_config_reloads_total by result, scraped from the admin listener (every worker)."""
    admin = yaml.safe_load(server.config_path.read_text())["admin"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin['port']}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "webhookbus_config_reloads_total":
                found[sample.labels["result"]] += sample.value
    return dict(found)


def rewrite(server: ServerProcess, change: Any) -> None:
    """Edit the config file the process serves (as an operator would)."""
    settings = yaml.safe_load(server.config_path.read_text())
    change(settings)
    server.config_path.write_text(yaml.safe_dump(settings))


def reload(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webhookbus.cli", "reload", "--config", str(server.config_path)],
                          capture_output=True, text=True, timeout=60)


class Load(threading.Thread):
    """A steady stream of signed requests, one connection each, with the secret of the moment."""

    def __init__(self, port: int, secret: str) -> None:
        super().__init__(daemon=True)
        self.port, self.secret = port, secret
        self.statuses: Counter[int] = Counter()
        self.accepted: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            index += 1
            event_id = f"load-{index}"
            status = post(self.port, PATH, *signed(self.secret, event_id)).status
            self.statuses[status] += 1
            if status == 200:
                self.accepted.append(event_id)

    def sent(self) -> int:
        return sum(self.statuses.values())

    def wait_for_more(self, count: int = 20) -> None:
        target = self.sent() + count
        deadline = time.monotonic() + 30
        while self.sent() < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.sent() >= target, "the load stalled"


@pytest.mark.parametrize("workers", [1, 2])
def test_secret_rotation_under_load_loses_no_request(tmp_path, kafka_broker, topic_name, secret_files, workers):
    topic = topic_name("reload")
    server = start(tmp_path, kafka_broker, [secret_files["old"]], topic, workers)
    load = Load(server.port, OLD)
    try:
        load.start()
        load.wait_for_more()
        # Step 1: the new secret is added; senders still sign with the old one.
        rewrite(server, lambda s: s["providers"]["demo"].update(secrets=[secret_files["new"], secret_files["old"]]))
        result = reload(server)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(": applied") == workers, result.stdout
        load.wait_for_more()
        assert post(server.port, PATH, *signed(NEW, "new-after-1")).status == 200
        load.secret = NEW  # the provider switched to the new secret
        load.wait_for_more()
        # Step 2: the old secret is removed.
        rewrite(server, lambda s: s["providers"]["demo"].update(secrets=[secret_files["new"]]))
        result = reload(server)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(": applied") == workers, result.stdout
        load.wait_for_more()
    finally:
        load.stopping.set()
        load.join(30)
    try:
        assert set(load.statuses) == {200}, load.statuses
        # Fresh connections, so that with two workers both are asked.
        assert {post(server.port, PATH, *signed(OLD, f"old-after-{i}")).status for i in range(12)} == {401}
        assert {post(server.port, PATH, *signed(NEW, f"new-after-{i}")).status for i in range(12)} == {200}
        expected = set(load.accepted) | {"new-after-1"} | {f"new-after-{i}" for i in range(12)}
        records = read_topic(kafka_broker.bootstrap, topic, len(expected), timeout=30)
        assert {json.loads(record.value)["id"] for record in records} == expected, "a request answered 200 is on Kafka"
        assert reloads(server) == {"ok": 2 * workers}
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert sum(line["msg"] == "config reloaded" for line in lines) == 2 * workers
    assert not any(OLD in line or NEW in line for line in server.log_path.read_text().splitlines())


def test_invalid_or_restart_only_config_is_refused_and_the_old_one_keeps_serving(
        tmp_path, kafka_broker, topic_name, secret_files):
    topic = topic_name("reload")
    server = start(tmp_path, kafka_broker, [secret_files["old"]], topic)
    try:
        good = server.config_path.read_text()
        # An error only loading the plugins and secrets finds: the server refuses it.
        rewrite(server, lambda s: s["providers"]["demo"].update(secrets=[f"file:{tmp_path / 'missing.secret'}"]))
        line = server.config_path.read_text().splitlines().index(f"    - file:{tmp_path / 'missing.secret'}") + 1
        result = reload(server)
        assert result.returncode == 1
        assert f"{server.config_path}:{line}: providers.demo.secrets.0: cannot read secret file" in result.stderr
        assert post(server.port, PATH, *signed(OLD, "after-bad-1")).status == 200
        # The same errors as check.
        check = subprocess.run([sys.executable, "-m", "webhookbus.cli", "check", "--config", str(server.config_path)],
                               capture_output=True, text=True)
        assert f"{server.config_path}:{line}: providers.demo.secrets.0: cannot read secret file" in check.stderr
        # A schema error is refused by the command itself, before any signal.
        server.config_path.write_text(good.replace("routes:", "routes:\n- {topic: t, colour: red}"))
        result = reload(server)
        assert result.returncode == 2 and "routes.0.colour: unknown key" in result.stderr
        assert "sent SIGHUP" not in result.stdout
        # A valid file that changes what only a restart can: refused as a whole.
        server.config_path.write_text(good)
        rewrite(server, lambda s: (s["providers"]["demo"].update(secrets=[secret_files["new"]]),
                                   s["spool"].update(max_bytes=12345)))
        result = reload(server)
        assert result.returncode == 1
        assert "only a restart can change spool; restore them or restart" in result.stderr
        assert post(server.port, PATH, *signed(OLD, "after-bad-2")).status == 200
        assert post(server.port, PATH, *signed(NEW, "after-bad-3")).status == 401
        # A plain SIGHUP (kill -HUP) does the same as the command.
        server.config_path.write_text(good)
        rewrite(server, lambda s: s["providers"]["demo"].update(secrets=[secret_files["new"]]))
        os.kill(server.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while post(server.port, PATH, *signed(NEW, f"after-hup-{time.monotonic()}")).status != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        assert reloads(server) == {"ok": 1, "refused": 2}
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line["msg"] == "config reload refused; the previous config keeps serving"]
    assert len(refused) == 2 and f":{line}: providers.demo.secrets.0" in refused[0]["reason"]
    assert not (server.directory / "spool" / "webhookbus.pid").exists(), "the pid file goes with the process"


def test_a_request_in_flight_finishes_under_the_config_it_started_with(tmp_path, kafka_broker, topic_name,
                                                                        secret_files):
    old_topic, new_topic = topic_name("before"), topic_name("after")
    server = start(tmp_path, kafka_broker, [secret_files["old"]], old_topic)
    try:
        body, headers = signed(OLD, "in-flight")
        head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body[:5])  # the request has started: its provider is looked up
            time.sleep(0.5)
            rewrite(server, lambda s: (s["providers"]["demo"].update(secrets=[secret_files["new"]]),
                                       s.update(routes=[{"topic": new_topic}])))
            result = reload(server)
            assert result.returncode == 0, result.stderr
            sock.sendall(body[5:])
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert [json.loads(r.value)["id"] for r in read_topic(kafka_broker.bootstrap, old_topic, 1)] == ["in-flight"]
        # A request that starts now is served by the new config.
        assert post(server.port, PATH, *signed(OLD, "late")).status == 401
        assert post(server.port, PATH, *signed(NEW, "late")).status == 200
        assert [json.loads(r.value)["id"] for r in read_topic(kafka_broker.bootstrap, new_topic, 1)] == ["late"]
    finally:
        server.stop()


def test_a_held_request_in_flight_is_decided_by_the_reply_route_it_started_with(tmp_path, kafka_broker, topic_name,
                                                                                   responder):
    """The request's events are published by the routes it started under; its reply route must come
    from the same config.  Before, a reload in between made it look for one in the new config:
    none matched, so it was answered the static decision while its event went to the old route."""
    from test_replies import ALLOW, PATH as HOOK, STATIC, authgear_request, config as reply_config, wait_ready

    topic, reply_topic = topic_name("held"), topic_name("held-replies")
    responder(topic, lambda event: ALLOW)
    server = ServerProcess(reply_config(topic, reply_topic, timeout=3.0), kafka_broker.bootstrap,
                           tmp_path / "server").start()
    try:
        wait_ready(server.port)
        body, headers = authgear_request()
        head = (f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body[:5])  # started: its provider and config are looked up
            time.sleep(0.5)
            rewrite(server, lambda s: s["routes"][0].update(where={"data.payload.user.id": "nobody"}))
            result = reload(server)
            assert result.returncode == 0, result.stderr
            sock.sendall(body[5:])
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
                    reply.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]):
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == ALLOW, "decided by the consumer, not the static answer"
        # A request that starts now matches no reply route: the verifier's static answer, at once.
        assert post(server.port, HOOK, *authgear_request()).json() == STATIC
    finally:
        server.stop()


def test_what_only_a_restart_can_change():
    from webhookbus.config import parse_config
    from webhookbus.http.reload import restart_only_changes

    def settings(**sections: Any):
        base: dict[str, Any] = {"providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{OLD}"]}},
                                "routes": [{"topic": "t"}]}
        return parse_config(yaml.safe_dump({**base, **sections})).settings

    old = settings()
    assert restart_only_changes(old, settings(
        providers={"other": {"verifier": "hmac", "path": "/other", "secrets": [f"literal:{NEW}"]}},
        routes=[{"topic": "u", "pii": {"drop": ["data.x"]}}], unrouted={"action": "topic", "topic": "rest"},
        audit={"topic": "audit"}, server={"max_body_bytes": 10, "max_in_flight": 5, "trusted_proxies": ["10.0.0.1"]},
    )) == []
    assert restart_only_changes(old, settings(server={"port": 9999, "workers": 3, "max_in_flight": 5},
                                              kafka={"client_id": "x"}, spool={"directory": "elsewhere"})) == [
        "server.port", "server.workers", "kafka", "spool"]
