"""The publisher against a stand-in producer: the bound on records in flight, abandoned batches, replacement."""

from __future__ import annotations

import asyncio

import pytest
from kafka.errors import UnknownProducerIdError
from kafka.future import Future

from webhookbus import publish
from webhookbus.config import KafkaSettings
from webhookbus.publish import PublishFailed, Publisher
from webhookbus.routing import KafkaMessage


class StandInProducer:
    """Records every send; the test decides when and how the broker answers."""

    instances: list[StandInProducer] = []

    def __init__(self, **_options: object) -> None:
        self.sent: list[tuple[bytes, Future]] = []
        self.closed = False
        StandInProducer.instances.append(self)

    def send(self, topic, value, key, headers) -> Future:
        future = Future()
        self.sent.append((value, future))
        return future

    def close(self, timeout: float = 0) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    StandInProducer.instances = []
    monkeypatch.setattr(publish, "KafkaProducer", StandInProducer)


def message(n: int) -> list[KafkaMessage]:
    return [KafkaMessage("t", None, b"m%d" % n, [], "r")]


def all_sent() -> list[bytes]:
    return [value for producer in StandInProducer.instances for value, _ in producer.sent]


def test_a_slow_broker_bounds_what_kafka_python_holds_and_abandoned_requests_are_never_sent():
    async def main() -> None:
        publisher = Publisher(KafkaSettings(max_in_flight_records=3))
        publisher.start()
        outcomes = await asyncio.gather(*(publisher.publish(message(n), 0.3) for n in range(6)), return_exceptions=True)
        assert all(isinstance(o, PublishFailed) for o in outcomes)
        assert all_sent() == [b"m0", b"m1", b"m2"], "only max_in_flight_records were handed to kafka-python"
        in_flight = [o.in_flight is not None for o in outcomes]
        assert in_flight == [True, True, True, False, False, False], "the caller learns which may still land"

        for _, future in StandInProducer.instances[0].sent:  # the broker finally answers
            future.success(None)
        task = asyncio.ensure_future(publisher.publish(message(6), 2))
        while len(all_sent()) < 4:
            await asyncio.sleep(0.01)
        assert all_sent() == [b"m0", b"m1", b"m2", b"m6"], "requests that gave up waiting were dropped, not sent late"
        StandInProducer.instances[0].sent[3][1].success(None)
        await task
        await publisher.close(2)

    asyncio.run(main())


def test_a_producer_that_failed_for_good_is_replaced_and_its_callers_told():
    async def main() -> None:
        publisher = Publisher(KafkaSettings())
        publisher.start()
        done: list[list[int]] = []
        batch = publisher.submit(message(0) + message(1), lambda b: done.append(sorted(b.failed)))
        while len(all_sent()) < 2:
            await asyncio.sleep(0.01)
        first = StandInProducer.instances[0]
        first.sent[0][1].success(None)
        first.sent[1][1].failure(UnknownProducerIdError())  # what a restarted broker answers
        assert done == [[1]] and batch.error == "broker rejected a message: UnknownProducerIdError"

        task = asyncio.ensure_future(publisher.publish(message(2), 2))
        while len(StandInProducer.instances) < 2 or not StandInProducer.instances[1].sent:
            await asyncio.sleep(0.01)
        assert first.closed and publisher.producers_replaced == 1
        StandInProducer.instances[1].sent[0][1].success(None)
        await task
        await publisher.close(2)

    asyncio.run(main())
