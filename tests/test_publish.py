"""Publishing: the producer thread against a stand-in producer (bound, abandon, replacement),
then the listener's Publisher against its real producer process and a real broker."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest
from kafka.errors import KafkaConnectionError, UnknownProducerIdError
from kafka.future import Future

from webhookbus.delivery import producer
from webhookbus.config import KafkaSettings
from webhookbus.delivery.producer import EXIT_CLOSED, EXIT_LISTENER_GONE, EXIT_PRODUCER_FAILED, ProducerThread
from webhookbus.delivery.process_publisher import ProcessPublisher
from webhookbus.delivery.publish import PublishFailed
from webhookbus.delivery.records import SEND, SETTINGS, Batch, KafkaMessage, pipe_frame, send_body
from webhookbus.testing.broker import read_topic


class StandInProducer:
    """Records every send; the test decides when and how the broker answers."""

    instances: list[StandInProducer] = []

    def __init__(self, **_options: object) -> None:
        self.sent: list[tuple[bytes, Future]] = []
        self.closed = False
        StandInProducer.instances.append(self)

    def send(self, topic, value, key, headers) -> Future:
        if " " in topic:
            raise ValueError("Topic name is illegal")  # what kafka-python raises, before any I/O
        future = Future()
        self.sent.append((value, future))
        return future

    def close(self, timeout: float = 0) -> None:
        """Like kafka-python's: what the broker has not answered fails with the producer."""
        self.closed = True
        for _, future in self.sent:
            if not future.is_done:
                future.failure(KafkaConnectionError("producer closed"))


@pytest.fixture
def stand_in(monkeypatch):
    StandInProducer.instances = []
    monkeypatch.setattr(producer, "KafkaProducer", StandInProducer)


def message(n: int, topic: str = "t") -> list[KafkaMessage]:
    return [KafkaMessage(topic, None, b"m%d" % n, [("h", b"v")], "r")]


def all_sent() -> list[bytes]:
    return [value for instance in StandInProducer.instances for value, _ in instance.sent]


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_slow_broker_bounds_what_kafka_python_holds_and_abandoned_batches_are_never_sent(stand_in):
    engine = ProducerThread({}, max_in_flight_records=3, stall_after=60)
    engine.start()
    answered: list[tuple[bytes, list[int]]] = []
    batches = [Batch(message(n), callbacks=[lambda b: answered.append((b.messages[0].value, b.failed))]) for n in range(6)]
    for batch in batches:
        engine.submit(batch)
    wait_until(lambda: len(all_sent()) == 3)
    time.sleep(0.1)
    assert all_sent() == [b"m0", b"m1", b"m2"], "only max_in_flight_records were handed to kafka-python"
    assert [engine.abandon(batch) for batch in batches] == [False, False, False, True, True, True]
    assert answered == [(b"m3", [0]), (b"m4", [0]), (b"m5", [0])], "abandoned batches are answered as failed"

    for _, future in StandInProducer.instances[0].sent:  # the broker finally answers
        future.success(None)
    engine.submit(Batch(message(6)))
    wait_until(lambda: len(all_sent()) == 4)
    assert all_sent() == [b"m0", b"m1", b"m2", b"m6"], "abandoned batches were dropped, not sent late"
    assert [value for value, failed in answered if not failed] == [b"m0", b"m1", b"m2"]
    StandInProducer.instances[0].sent[3][1].success(None)
    engine.close(2)


def test_a_producer_that_failed_for_good_is_replaced_and_its_callers_told(stand_in):
    statuses: list[tuple[bool, int]] = []
    engine = ProducerThread({}, max_in_flight_records=100, stall_after=60, on_status=lambda *s: statuses.append(s))
    engine.start()
    done: list[list[int]] = []
    batch = Batch(message(0) + message(1), callbacks=[lambda b: done.append(sorted(b.failed))])
    engine.submit(batch)
    wait_until(lambda: len(all_sent()) == 2)
    first = StandInProducer.instances[0]
    first.sent[0][1].success(None)
    first.sent[1][1].failure(UnknownProducerIdError())  # what a restarted broker answers
    assert done == [[1]] and batch.error == "broker rejected a message: UnknownProducerIdError"

    engine.submit(Batch(message(2)))
    wait_until(lambda: len(StandInProducer.instances) == 2 and StandInProducer.instances[1].sent)
    assert first.closed and engine.producers_replaced == 1
    assert statuses == [(True, 0), (False, 1), (True, 1)], "the listener hears of the replacement"
    StandInProducer.instances[1].sent[0][1].success(None)
    engine.close(2)


def test_a_failed_record_replaces_the_producer_even_when_nothing_more_is_sent(stand_in):
    """Its other records may wait on a producer id forever: no new batch must be needed."""
    engine = ProducerThread({}, max_in_flight_records=100, stall_after=60)
    engine.start()
    done: list[list[int]] = []
    engine.submit(Batch(message(0) + message(1), callbacks=[lambda b: done.append(sorted(b.failed))]))
    wait_until(lambda: len(all_sent()) == 2)
    time.sleep(1.2)  # the stall clock ages
    StandInProducer.instances[0].sent[0][1].failure(UnknownProducerIdError())
    wait_until(lambda: engine.producers_replaced == 1)
    assert done == [[0, 1]], "closing the failed producer answered its other record"
    assert time.monotonic() - engine._progress_at < 1.0, "the stall clock restarts with the new producer"
    time.sleep(1.2)
    assert engine.producers_replaced == 1, "the old producer's failures did not condemn the new one"
    engine.close(2)


def test_a_record_kafka_python_refuses_fails_alone_and_the_producer_goes_on(stand_in):
    engine = ProducerThread({}, max_in_flight_records=100, stall_after=60)
    engine.start()
    done: list[tuple[list[int], str | None]] = []
    engine.submit(Batch(message(0, topic="not a topic"), callbacks=[lambda b: done.append((b.failed, b.error))]))
    engine.submit(Batch(message(1)))
    wait_until(lambda: len(all_sent()) == 1)
    assert done == [([0], "send failed: ValueError")]
    assert all_sent() == [b"m1"] and engine.producers_replaced == 0, "the same producer sends what comes next"
    StandInProducer.instances[0].sent[0][1].success(None)
    engine.close(2)


# -- the listener's side, with a real producer process ------------------------------------

def settings(bootstrap: str, publish_timeout: float = 2.5) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=[bootstrap], publish_timeout=publish_timeout)


async def started(publisher: ProcessPublisher, timeout: float = 20.0) -> None:
    publisher.start()
    deadline = time.monotonic() + timeout
    while not publisher.ready()[0]:
        assert time.monotonic() < deadline, "the producer process did not connect"
        await asyncio.sleep(0.05)


def test_a_dead_producer_process_fails_what_it_held_and_is_replaced(own_broker, topic_name):
    topic = topic_name("dead")

    async def main() -> None:
        publisher = ProcessPublisher(settings(own_broker.bootstrap, publish_timeout=30))
        await started(publisher)
        await publisher.publish(message(0, topic), 10)
        own_broker.stop()  # what is published now stays in kafka-python's hands
        pending = asyncio.ensure_future(publisher.publish(message(1, topic), 30))
        await asyncio.sleep(0.5)
        os.kill(publisher._process.pid, signal.SIGKILL)  # noqa: SLF001
        with pytest.raises(PublishFailed) as failed:
            await asyncio.wait_for(pending, 10)
        assert failed.value.reason == "producer process exited"
        own_broker.start()
        while publisher.processes_started < 2 or not publisher.ready()[0]:
            await asyncio.sleep(0.05)
        await publisher.publish(message(2, topic), 20)
        await publisher.close(5)

    asyncio.run(main())
    assert b"m2" in [record.value for record in read_topic(own_broker.bootstrap, topic, 1, timeout=10)]


def test_the_producer_process_exits_at_once_when_the_listener_vanishes(own_broker, topic_name):
    async def main() -> None:
        publisher = ProcessPublisher(settings(own_broker.bootstrap, publish_timeout=30))
        await started(publisher)
        own_broker.stop()
        publisher.submit(message(1, topic_name("gone")))
        await asyncio.sleep(0.3)
        process = publisher._process  # noqa: SLF001
        publisher._closing = True  # noqa: SLF001 - no replacement: this is the listener dying
        publisher._pipe.transport.abort()  # noqa: SLF001 - the socket ends without a CLOSE
        started_at = time.monotonic()
        code = await asyncio.to_thread(process.wait, 10)
        assert code == EXIT_LISTENER_GONE, "the 'listener gone' path, not an exception or a flush"
        assert time.monotonic() - started_at < 5

    asyncio.run(main())


def producer_process(bootstrap: str, options: dict | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A producer process on a raw socket pair: the test plays the listener, byte by byte."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", "webhookbus.delivery.producer", str(theirs.fileno())],
                               pass_fds=[theirs.fileno()], stderr=subprocess.PIPE)
    theirs.close()
    config = {"options": {"bootstrap_servers": [bootstrap], **(options or {})}, "max_in_flight_records": 100,
              "stall_after": 5.0, "log_level": "INFO"}
    ours.sendall(pipe_frame(SETTINGS, 0, json.dumps(config).encode()))
    return process, ours


def test_a_listener_killed_with_answers_unread_or_mid_frame_gets_the_same_quick_exit(kafka_broker, topic_name):
    topic = topic_name("reset")
    process, ours = producer_process(kafka_broker.bootstrap)
    ours.sendall(pipe_frame(SEND, 1, send_body(message(1, topic))))
    time.sleep(2)  # its answer now waits, unread, in our socket: closing makes the producer's read fail (reset)
    ours.close()
    assert process.wait(10) == EXIT_LISTENER_GONE
    assert b"Traceback" not in process.stderr.read()

    process, ours = producer_process(kafka_broker.bootstrap)
    frame = pipe_frame(SEND, 2, send_body(message(2, topic)))
    ours.sendall(frame[: len(frame) - 5])  # the listener died half-way through a frame
    ours.close()
    assert process.wait(10) == EXIT_LISTENER_GONE
    assert b"listener gone" in process.stderr.read()
    assert [r.value for r in read_topic(kafka_broker.bootstrap, topic, 2, timeout=3)] == [b"m1"], \
        "the cut record was never sent"


def test_a_producer_thread_that_dies_takes_its_process_down_so_the_listener_replaces_it(kafka_broker):
    process, ours = producer_process(kafka_broker.bootstrap, {"no_such_option": 1})  # config.py refuses this earlier
    assert process.wait(10) == EXIT_PRODUCER_FAILED
    stderr = process.stderr.read()
    assert b"producer thread failed" in stderr and b"Traceback" not in stderr
    ours.close()


def test_close_right_after_start_and_a_failed_restart_are_both_handled(kafka_broker, monkeypatch):
    async def main() -> None:
        publisher = ProcessPublisher(settings(kafka_broker.bootstrap))
        publisher.start()
        process = publisher._process  # noqa: SLF001
        await publisher.close(5)  # before the pipe is even connected: CLOSE still reaches it
        assert process.returncode == EXIT_CLOSED

        publisher = ProcessPublisher(settings(kafka_broker.bootstrap))
        await started(publisher)
        real_popen, failures = subprocess.Popen, []

        def popen_failing_once(*args, **kwargs):
            if not failures:
                failures.append(1)
                raise OSError(24, "Too many open files")
            return real_popen(*args, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", popen_failing_once)
        os.kill(publisher._process.pid, signal.SIGKILL)  # noqa: SLF001
        deadline = time.monotonic() + 20
        while not (publisher.processes_started == 2 and publisher.ready()[0]):
            assert time.monotonic() < deadline, "no producer process after a failed restart"
            await asyncio.sleep(0.05)
        assert failures == [1]
        await publisher.publish(message(3, "t"), 10)
        await publisher.close(5)

    asyncio.run(main())


@pytest.mark.parametrize("value_size", [0, 1, 127, 128, 16_383, 16_384, 1 << 21])
@pytest.mark.parametrize("key", [None, b"", b"k" * 300])
def test_size_bound_is_never_below_what_kafka_python_counts_against_max_request_size(value_size, key):
    from kafka.record.default_records import DefaultRecordBatchBuilder

    from webhookbus.delivery.records import size_bound

    for headers in ([], [("content-type", b"application/json")], [(f"ce_x{n}", b"y" * (n * 997)) for n in range(12)]):
        message = KafkaMessage("topic", key, b"v" * value_size, headers, "r")
        counted = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, message.value, headers)
        assert counted <= size_bound(message) <= counted + 100


def test_batches_abandoned_while_the_broker_stalls_are_let_go_at_once(own_broker, topic_name):
    """Each request past its deadline abandons its batch: the producer must not keep them queued
    while its thread is blocked (here in send(), waiting for a new topic's metadata)."""
    topic = topic_name("stall")
    engine = ProducerThread({"bootstrap_servers": [own_broker.bootstrap], "max_block_ms": 20_000},
                            max_in_flight_records=100, stall_after=60)
    engine.start()
    acked: list[Batch] = []
    engine.submit(Batch(message(0, topic), callbacks=[acked.append]))
    wait_until(lambda: acked, timeout=30)
    os.kill(own_broker.process.pid, signal.SIGSTOP)
    try:
        engine.submit(Batch(message(1, topic_name("new"))))  # the thread blocks in send()
        time.sleep(0.5)
        tracemalloc.start()
        try:
            for n in range(300):
                batch = Batch([KafkaMessage(topic, None, b"%06d" % n * 4000, [], "r")])
                engine.submit(batch)
                assert engine.abandon(batch), "still waiting"
            del batch
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 1_000_000, f"{held} bytes still held for 7 MB of abandoned batches"
    finally:
        os.kill(own_broker.process.pid, signal.SIGCONT)
        engine.close(5)
