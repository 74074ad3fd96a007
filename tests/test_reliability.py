"""Nothing answered 2xx is lost, and a provider's retry is published once: on a real broker.

A full disk is made on demand (deterministically) by giving the spool and dedup modules an
``os`` whose writes, syncs, new files and renames fail with ENOSPC while deleting still works;
``make chaos`` runs the same on a real, small tmpfs.

The broker stores in memory: stopping it loses what it held, so each test reads only
what was accepted after the last broker restart (or counts on the spool to hold it).
Every test runs on each Kafka client ``kafka.client: auto`` can choose (``kafka_client``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from webhookbus.delivery import dedup, spool
from webhookbus.delivery.spool import list_segments, spool_status
from webhookbus.testing import post, read_topic, to_cloudevent
from webhookbus.testing.process import ServerProcess
from webhookbus.testing.pytest_plugin import with_client
from webhookbus.testing.samples import sign_hmac
from webhookbus.verifiers.hmac import HmacOptions

pytestmark = pytest.mark.usefixtures("kafka_client")

SECRET = "reliability-test-secret"
PATH = "/webhooks/demo"
OPTIONS = HmacOptions(prefix="sha256=", event_field="type", id_field="id")


def config(topic: str, **provider: Any) -> dict[str, Any]:
    return {
        "kafka": {"publish_timeout": 1.0},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": OPTIONS.model_dump(exclude_defaults=True), **provider}},
        "routes": [{"topic": topic}],
    }


def event(event_id: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    signed = sign_hmac(OPTIONS, secret.encode(), PATH, {"type": "user.updated", "id": event_id})
    return signed.body, signed.headers


def ids(bootstrap: str, topic: str, at_least: int, timeout: float = 20.0) -> list[str]:
    """Event ids on ``topic``; waits for ``at_least``, then a moment more to catch extras."""
    records = read_topic(bootstrap, topic, at_least, timeout)
    records += read_topic(bootstrap, topic, len(records) + 1, 1.0)[len(records):]
    return [to_cloudevent(record).get_id() for record in records]


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_spool_mode_keeps_accepting_through_a_broker_outage_and_forwards_after(webhookbus_listener, own_broker, topic_name):
    topic = topic_name("spool")
    listener = webhookbus_listener(config(topic, ack="spool"), bootstrap=own_broker.bootstrap)
    assert listener.post(PATH, *event("before")).status == 200
    own_broker.stop()
    during = [f"during-{n}" for n in range(20)]
    for event_id in during:
        reply = listener.post(PATH, *event(event_id))
        assert reply.status == 200, reply.body
    assert spool_status(listener.config.settings.spool.directory)[0].records >= 20
    own_broker.start()
    after = [f"after-{n}" for n in range(5)]
    for event_id in after:
        assert listener.post(PATH, *event(event_id)).status == 200

    delivered = ids(own_broker.bootstrap, topic, 25, timeout=60)
    assert sorted(set(delivered) - {"before"}) == sorted(during + after), "every event accepted during the outage arrives"
    assert len(delivered) == len(set(delivered)), "and once"
    wait_until(lambda: spool_status(listener.config.settings.spool.directory)[0].records == 0)


def test_broker_mode_spools_past_the_deadline_and_delivers_later(webhookbus_listener, own_broker, topic_name):
    topic = topic_name("deadline")
    listener = webhookbus_listener(config(topic), bootstrap=own_broker.bootstrap)
    assert listener.post(PATH, *event("warm-up")).status == 200
    own_broker.stop()
    reply = listener.post(PATH, *event("past-deadline"))
    assert reply.status == 200, "on_broker_timeout: spool (the default) answers 2xx once synced"
    own_broker.start()
    assert "past-deadline" in ids(own_broker.bootstrap, topic, 1, timeout=60)


def test_a_retry_is_answered_2xx_and_published_once_even_after_a_restart(webhookbus_listener, kafka_broker, topic_name, tmp_path):
    topic = topic_name("dedup")
    settings = {**config(topic), "spool": {"directory": str(tmp_path)}}
    first = webhookbus_listener(settings)
    assert first.post(PATH, *event("evt-1")).status == 200
    assert first.post(PATH, *event("evt-1")).status == 200
    first.stop()
    second = webhookbus_listener(settings)
    assert second.post(PATH, *event("evt-1")).status == 200
    assert second.post(PATH, *event("evt-2")).status == 200
    assert sorted(ids(kafka_broker.bootstrap, topic, 2)) == ["evt-1", "evt-2"]


def test_concurrent_copies_of_one_event_are_published_once(webhookbus_listener, kafka_broker, topic_name):
    topic = topic_name("race")
    listener = webhookbus_listener(config(topic))
    # The topic's first record waits for its creation and metadata: on a loaded machine that can
    # pass publish_timeout, and the nine waiting copies would rightly get 503. Warm it up first.
    assert listener.post(PATH, *event("warm-up")).status == 200
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: listener.post(PATH, *event("same")).status, range(10)))
    assert statuses == [200] * 10
    assert sorted(ids(kafka_broker.bootstrap, topic, 2)) == ["same", "warm-up"]


def test_a_503_is_not_remembered_so_the_providers_retry_is_published_once(webhookbus_listener, own_broker, topic_name):
    """The retry's copy is published, or the copy given up at the deadline landed: never both."""
    topic = topic_name("reject")
    listener = webhookbus_listener(config(topic, on_broker_timeout="reject"), bootstrap=own_broker.bootstrap)
    own_broker.stop()
    reply = listener.post(PATH, *event("evt-503"))
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    own_broker.start()  # memory storage: the topic starts empty
    wait_until(lambda: listener.post(PATH, *event("evt-503")).status == 200)
    assert ids(own_broker.bootstrap, topic, 1) == ["evt-503"]


def test_a_copy_given_up_at_the_deadline_that_lands_later_is_remembered(webhookbus_listener, own_broker, topic_name):
    """A frozen broker holds the first copy past its deadline; the retry must not send a second."""
    topic = topic_name("late")
    listener = webhookbus_listener(config(topic, on_broker_timeout="reject"), bootstrap=own_broker.bootstrap)
    # The first record waits for the topic and (kafka-python) the producer process: on a loaded
    # machine that can pass publish_timeout (1 s), which this test is not about.
    wait_until(lambda: listener.post(PATH, *event("warm-up")).status == 200)
    broker = own_broker.process.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        first = listener.post(PATH, *event("evt-late"))
        assert first.status == 503, "the broker did not ack within publish_timeout"
        retry = listener.post(PATH, *event("evt-late"))
        assert retry.status == 503
        assert retry.json()["detail"] == "an earlier copy of this event is not acknowledged yet"
    finally:
        os.kill(broker, signal.SIGCONT)
    wait_until(lambda: listener.post(PATH, *event("evt-late")).status == 200)
    assert sorted(ids(own_broker.bootstrap, topic, 2)) == ["evt-late", "warm-up"], "the first copy landed, and only it"


def test_a_copy_given_up_at_the_deadline_and_refused_by_a_full_spool_is_still_awaited(webhookbus_listener, own_broker,
                                                                                      topic_name):
    """ack: broker with the spool fallback: a 503 for spool_full may leave a copy with the producer too."""
    topic = topic_name("full-late")
    listener = webhookbus_listener({**config(topic), "spool": {"max_bytes": 4000}}, bootstrap=own_broker.bootstrap)
    assert listener.post(PATH, *event("warm-up")).status == 200
    broker = own_broker.process.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(30) as pool:  # all reach their deadline together, then race for the spool
            replies = dict(zip(range(30), pool.map(lambda n: listener.post(PATH, *event(f"fill-{n}")), range(30))))
        refused = [n for n, reply in replies.items() if reply.status == 503]
        assert refused and {replies[n].json()["error"] for n in refused} == {"spool_full"}
        retry = listener.post(PATH, *event(f"fill-{refused[0]}"))
        assert retry.status == 503
        assert retry.json()["detail"] == "an earlier copy of this event is not acknowledged yet"
    finally:
        os.kill(broker, signal.SIGCONT)
    for n in refused:
        wait_until(lambda: listener.post(PATH, *event(f"fill-{n}")).status == 200)
    delivered = ids(own_broker.bootstrap, topic, 31, timeout=60)
    assert sorted(delivered) == sorted(["warm-up"] + [f"fill-{n}" for n in range(30)]), "each event once"


def test_a_full_spool_answers_503_until_the_forwarder_made_room(webhookbus_listener, own_broker, topic_name):
    topic = topic_name("full")
    settings = {**config(topic, ack="spool"), "spool": {"max_bytes": 4000}}
    listener = webhookbus_listener(settings, bootstrap=own_broker.bootstrap)
    own_broker.stop()
    replies = [listener.post(PATH, *event(f"fill-{n}")) for n in range(40)]
    statuses = [reply.status for reply in replies]
    assert 200 in statuses and statuses[-1] == 503
    assert replies[-1].json()["error"] == "spool_full" and replies[-1].headers["retry-after"]
    own_broker.start()
    wait_until(lambda: listener.post(PATH, *event("fill-39")).status == 200, timeout=60)
    accepted = {f"fill-{n}" for n, status in enumerate(statuses) if status == 200} | {"fill-39"}
    assert accepted <= set(ids(own_broker.bootstrap, topic, len(accepted), timeout=60))


def test_rejected_requests_reach_the_audit_topic_rate_limited_and_without_secrets(webhookbus_listener, kafka_broker, topic_name):
    audit = topic_name("audit")
    settings = {**config(topic_name()), "audit": {"topic": audit, "max_per_second": 2, "burst": 1}}
    listener = webhookbus_listener(settings)
    body, headers = event("forged", secret="not-the-secret")
    for _ in range(3):
        assert listener.post(PATH, body, headers).status == 401
    time.sleep(1.0)  # one token again
    assert listener.post(PATH, body, headers).status == 401

    records = read_topic(kafka_broker.bootstrap, audit, 2, timeout=10)
    assert len(read_topic(kafka_broker.bootstrap, audit, 3, timeout=1.5)) == 2, "a burst of 1, then 2 per second"
    events = [to_cloudevent(record) for record in records]
    assert {e.get_type() for e in events} == {"webhookbus.request.rejected"}
    data = [e.get_data() for e in events]
    assert data[0]["provider"] == "demo" and data[0]["error"] == "verification_failed"
    assert data[0]["body_sha256"] == hashlib.sha256(body).hexdigest() and data[0]["body_length"] == len(body)
    assert "x-signature" in data[0]["header_names"] and data[0]["client"].startswith("127.0.0.1:")
    assert [d["suppressed_before"] for d in data] == [0, 2]
    for record in records:
        assert headers[OPTIONS.header].split("=", 1)[1].encode() not in record.value
        assert body not in record.value and SECRET.encode() not in record.value


def test_kill_9_then_restart_forwards_everything_the_spool_held(own_broker, topic_name, tmp_path, webhookbus_engine,
                                                                kafka_client):
    topic = topic_name("kill9")
    server = ServerProcess(with_client(config(topic, ack="spool"), kafka_client), own_broker.bootstrap, tmp_path,
                           engine=webhookbus_engine).start()
    try:
        own_broker.stop()
        accepted = [f"k-{n}" for n in range(30)]
        for event_id in accepted:
            assert post(server.port, PATH, *event(event_id)).status == 200
        status = subprocess.run([sys.executable, "-m", "webhookbus.cli", "spool", "status", "--config", str(server.config_path)],
                                capture_output=True, text=True, check=True).stdout
        assert "30 record(s) to forward" in status and "in use by pid" in status
        server.kill()
        own_broker.start()
        server.start()
        assert sorted(ids(own_broker.bootstrap, topic, 30, timeout=60)) == sorted(accepted)
    finally:
        server.stop()


def test_no_accepted_request_is_lost_across_a_sigterm_during_load(own_broker, topic_name, tmp_path, webhookbus_engine,
                                                                  kafka_client):
    """Clients keep sending while SIGTERM arrives; every 2xx must end up on Kafka."""
    broker_topic, spool_topic = topic_name("term-broker"), topic_name("term-spool")
    settings = config(broker_topic)
    settings["providers"]["spooled"] = {**settings["providers"]["demo"], "path": "/webhooks/spooled", "ack": "spool"}
    settings["routes"] = [{"provider": "demo", "topic": broker_topic}, {"provider": "spooled", "topic": spool_topic}]
    server = ServerProcess(with_client(settings, kafka_client), own_broker.bootstrap, tmp_path,
                           engine=webhookbus_engine).start()
    accepted: list[tuple[str, str]] = []
    stop = threading.Event()

    def client(number: int) -> None:
        path, topic = (PATH, broker_topic) if number % 2 else ("/webhooks/spooled", spool_topic)
        sent = 0
        while not stop.is_set():
            event_id = f"c{number}-{sent}"
            sent += 1
            signed = sign_hmac(OPTIONS, SECRET.encode(), path, {"type": "t", "id": event_id})
            try:
                reply = post(server.port, path, signed.body, signed.headers, timeout=10)
            except OSError:
                time.sleep(0.02)  # refused while shutting down: not accepted
                continue
            if reply.status == 200:
                accepted.append((topic, event_id))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(accepted) > 200)
        assert server.terminate() == 0
        stop.set()
        for thread in threads:
            thread.join()
        server.start()  # forwards whatever the spool still held
        for topic in (broker_topic, spool_topic):
            want = {event_id for t, event_id in accepted if t == topic}
            assert want and not want - set(ids(own_broker.bootstrap, topic, len(want), timeout=60)), f"lost on {topic}"
    finally:
        stop.set()
        server.stop()


def test_a_slot_another_process_left_is_forwarded_and_released(webhookbus_listener, kafka_broker, topic_name, tmp_path):
    """server.workers lowered from 4 to 1: slot 3's records must not wait for a fourth worker."""
    import asyncio

    from webhookbus.routing import KafkaMessage
    from webhookbus.delivery.spool import Spool, list_segments, slot_owner

    topic = topic_name("orphan")
    left = Spool(tmp_path, 1 << 30, 1 << 30, slot=tmp_path / "3")

    async def write() -> None:
        left.start()
        for n in range(5):
            await left.append([KafkaMessage(topic, None, b"left-%d" % n, [], "r")])
        await left.stop_writing()

    asyncio.run(write())
    left.close()
    webhookbus_listener({**config(topic_name()), "spool": {"directory": str(tmp_path)}})
    values = [r.value for r in read_topic(kafka_broker.bootstrap, topic, 5)]
    assert sorted(values) == [b"left-%d" % n for n in range(5)]
    wait_until(lambda: not list_segments(tmp_path / "3") and slot_owner(tmp_path / "3") is None, timeout=10)


def test_serve_will_not_start_without_a_writable_spool(tmp_path, webhookbus_engine):
    """The engine would otherwise serve on without lifespan: 2xx with nowhere to fall back."""
    import yaml

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = {**config("unused"), "spool": {"directory": str(blocker / "spool")}, "server": {"port": 0, "engine": webhookbus_engine}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(settings))
    run = subprocess.run([sys.executable, "-m", "webhookbus.cli", "serve", "--config", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "cannot start delivery" in run.stderr and "Traceback" not in run.stderr


class FullDisk:
    """``os``, except that while ``full`` is set the disk has no space left."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _no_space(self) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, fd: int, data: bytes) -> int:
        self._no_space()
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self._no_space()
        os.fdatasync(fd)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            self._no_space()
        return os.open(path, flags, mode, **kwargs)

    def replace(self, src: Any, dst: Any) -> None:  # rename(2) may need a directory block
        self._no_space()
        os.replace(src, dst)


def test_a_full_disk_refuses_new_requests_and_still_drains_what_was_accepted(webhookbus_listener, own_broker, topic_name,
                                                                          monkeypatch, caplog):
    disk = FullDisk()
    monkeypatch.setattr(spool, "os", disk)
    monkeypatch.setattr(dedup, "os", disk)
    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(f"{args.thread.name}: {args.exc_type.__name__}"))
    caplog.set_level(logging.INFO)
    topic = topic_name("disk-full")
    settings = {**config(topic, ack="spool"), "spool": {"max_bytes": 1 << 20, "segment_bytes": 4096}}
    settings["kafka"]["max_in_flight_records"] = 20  # a forwarder window of 10: several rounds of release
    listener = webhookbus_listener(settings, bootstrap=own_broker.bootstrap)
    slot = Path(listener.config.settings.spool.directory) / "0"

    own_broker.stop()
    accepted = [f"held-{n}" for n in range(40)]
    for event_id in accepted:
        assert listener.post(PATH, *event(event_id)).status == 200
    assert len(list_segments(slot)) > 3, "the records span several segments"

    disk.full = True
    for n in range(5):
        reply = listener.post(PATH, *event(f"refused-{n}"))
        assert reply.status == 503 and reply.json()["error"] == "spool_unavailable", reply.body
        assert reply.headers["retry-after"]
    own_broker.start()
    assert sorted(ids(own_broker.bootstrap, topic, 40, timeout=60)) == sorted(accepted), "all drained, on a full disk"
    wait_until(lambda: list_segments(slot) == [], timeout=20)  # spent segments deleted without a cursor write
    assert disk.refused > 5, "the cursor writes were refused too"

    disk.full = False
    assert listener.post(PATH, *event("after")).status == 200
    assert "after" in ids(own_broker.bootstrap, topic, 41, timeout=30)
    assert died == [], "no thread of webhookbus died"
    lines = [r for r in caplog.records if r.name.startswith("webhookbus") and r.levelno >= logging.ERROR]
    assert [(r.getMessage(), r.reason) for r in lines] == [
        ("spool: the disk refuses writes; new requests get 503, accepted ones still drain", "No space left on device")]
    assert any(r.getMessage().endswith(": over") for r in caplog.records), "and one line when it is over"


def test_shutdown_with_the_broker_down_takes_one_graceful_timeout_not_one_per_step(webhookbus_listener, own_broker,
                                                                                   topic_name, monkeypatch):
    """The forwarder waits for its records, then the producer flushes: both from one budget."""
    from webhookbus.delivery.forward import Forwarder
    from webhookbus.delivery.process_publisher import ProcessPublisher

    publishers = [ProcessPublisher]
    try:
        from webhookbus.delivery.confluent import ConfluentPublisher
    except ImportError:  # the fast extra is not installed
        pass
    else:
        publishers.append(ConfluentPublisher)
    budgets: dict[str, tuple[float, float]] = {}
    for cls, method in ((Forwarder, "stop"), *((publisher, "close") for publisher in publishers)):
        real = getattr(cls, method)

        def spy(self, timeout, _real=real, _name=method):
            budgets.setdefault(_name, (time.monotonic(), timeout))
            return _real(self, timeout)

        monkeypatch.setattr(cls, method, spy)
    graceful = 2.0
    settings = {**config(topic_name("term"), ack="spool"), "server": {"graceful_timeout": graceful}}
    listener = webhookbus_listener(settings, bootstrap=own_broker.bootstrap)
    own_broker.stop()
    for n in range(5):
        assert listener.post(PATH, *event(f"held-{n}")).status == 200  # the forwarder's records wait for acks
    listener.stop()
    (forwarder_at, forwarder_budget), (producer_at, producer_budget) = budgets["stop"], budgets["close"]
    assert forwarder_budget == pytest.approx(graceful, abs=0.2)
    assert producer_at - forwarder_at >= graceful - 0.2, "the forwarder waited its budget: the broker is down"
    assert producer_at + producer_budget <= forwarder_at + graceful + 0.2, "the producer got only what was left"
