"""webhookbus.http.server: ``server.workers`` (forked workers on their own SO_REUSEPORT sockets, a
graceful stop, a worker that dies taking the service down rather than leaving it
short-handed) and ``server.loop``."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from webhookbus.config import KafkaSettings
from webhookbus.testing import free_port, post, read_topic
from webhookbus.testing.broker import wait_for_port

SECRET = "workers-test-secret"
PATH = "/webhooks/demo"


@pytest.fixture
def server(tmp_path: Path, kafka_broker, topic_name, webhookbus_engine) -> Iterator[tuple[subprocess.Popen[bytes], int, str, Path]]:
    port, topic = free_port(), topic_name("workers")
    config = {
        "server": {"host": "127.0.0.1", "port": port, "workers": 2, "graceful_timeout": 2, "engine": webhookbus_engine},
        "kafka": {"bootstrap_servers": [kafka_broker.bootstrap]},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": {"id_field": "id"}}},
        "routes": [{"topic": topic}],
        "spool": {"directory": str(tmp_path / "spool")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "webhookbus.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "serve", "--config",
                                    str(tmp_path / "config.yaml")], stderr=stderr)
    try:
        wait_for_port(port, timeout=20)
        yield process, port, topic, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def listening_sockets(pid: int, port: int) -> set[str]:
    """Inodes of the sockets ``pid`` holds that listen on ``port`` (from /proc/net/tcp)."""
    listening = {fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if (fields := line.split())[3] == "0A" and int(fields[1].split(":")[1], 16) == port}
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    return held & listening


def wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": event_id}).encode()
    return body, {"x-signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


def test_each_worker_listens_on_its_own_socket_and_a_stop_is_graceful(server, kafka_broker):
    process, port, topic, log = server
    wait_until(lambda: len(children(process.pid)) == 2)
    workers = children(process.pid)
    producers: list[int] = []
    if KafkaSettings().client_in_use == "kafka-python":  # confluent-kafka publishes in the worker's own process
        wait_until(lambda: all(len(children(worker)) == 1 for worker in workers))
        producers = [children(worker)[0] for worker in workers]
        assert all(b"webhookbus.delivery.producer" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in producers), \
            "each worker publishes through a producer process of its own"
    wait_until(lambda: all(listening_sockets(worker, port) for worker in workers))
    sockets = [listening_sockets(worker, port) for worker in workers]
    assert sockets[0].isdisjoint(sockets[1]), "each worker has a socket of its own, so the kernel spreads connections"
    assert not listening_sockets(process.pid, port), "the parent holds the address but takes no connections"

    for index in range(20):  # a fresh connection each: spread over both workers
        assert post(port, PATH, *signed(f"evt_{index}")).status == 200

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not any(Path(f"/proc/{worker}").exists() and "zombie" not in Path(f"/proc/{worker}/status").read_text()
                   for worker in workers)
    assert len(read_topic(kafka_broker.bootstrap, topic, 20)) == 20
    assert not any(Path(f"/proc/{pid}").exists() for pid in producers), "the producer processes ended with them"
    closed = [line for line in log.read_text().splitlines() if '"spool closed"' in line]
    assert len(closed) == 2, "each worker's last (batched) log lines are written before it exits"


def test_a_worker_that_dies_stops_the_service(server):
    process, port, _, _ = server
    wait_until(lambda: len(children(process.pid)) == 2)
    first, second = children(process.pid)
    os.kill(first, signal.SIGKILL)
    assert process.wait(30) == 1
    assert not Path(f"/proc/{second}").exists() or "zombie" in Path(f"/proc/{second}/status").read_text()


def test_event_loop_setting():
    import uvloop

    from webhookbus.config import ServerSettings
    from webhookbus.http.server import loop_factory

    assert loop_factory(ServerSettings(loop="asyncio")) is None
    assert loop_factory(ServerSettings(loop="uvloop")) is uvloop.new_event_loop
    assert loop_factory(ServerSettings()) is uvloop.new_event_loop, "auto takes uvloop when it is installed"


def test_uvloop_asked_for_but_missing_is_a_config_error(monkeypatch):
    import importlib.util

    from webhookbus.config import ConfigError, parse_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    with pytest.raises(ConfigError, match=r"server\.loop: .*uvloop is not installed"):
        parse_config("server:\n  loop: uvloop\n")
    parse_config("server:\n  loop: auto\n")


def test_run_freezes_what_is_loaded_before_serving(monkeypatch):
    """Full collections must not rescan modules, plugins and config on every pass."""
    import gc

    from webhookbus.http import server
    from webhookbus.config import parse_config

    frozen_when_serving = []

    async def serve(config):  # type: ignore[no-untyped-def]
        frozen_when_serving.append(gc.get_freeze_count())

    monkeypatch.setattr(server, "serve", serve)
    try:
        assert server.run(parse_config("server:\n  loop: asyncio\n")) == 0
    finally:
        gc.unfreeze()
    assert frozen_when_serving and frozen_when_serving[0] > 1000


def test_engine_auto_takes_uvicorn_when_installed_and_hypercorn_otherwise(monkeypatch):
    import importlib.util

    from webhookbus.config import ConfigError, ServerSettings, parse_config

    assert ServerSettings().engine_name == "uvicorn", "make installs the fast extra"
    assert ServerSettings(engine="hypercorn").engine_name == "hypercorn"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else real(name, *a))
    assert ServerSettings().engine_name == "hypercorn"
    with pytest.raises(ConfigError, match=r"server\.engine: .*uvicorn needs httptools: pip install 'webhookbus\[fast\]'"):
        parse_config("server:\n  engine: uvicorn\n")
