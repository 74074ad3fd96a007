"""Both Kafka clients behind one Publisher: the same contract on a real broker, and kafka.client.

The broker is frozen with SIGSTOP to make acks late without losing its state (its
connections stay open, requests wait), then thawed with SIGCONT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import threading
import time

import pytest
from pydantic import ValidationError

from webhookbus.config import ConfigError, KafkaSettings, parse_config
from webhookbus.delivery import options
from webhookbus.delivery.options import librdkafka_config
from webhookbus.delivery.publish import Publisher, PublishFailed, open_publisher
from webhookbus.delivery.records import KafkaMessage
from webhookbus.testing.broker import Broker, read_topic

CONFLUENT_INSTALLED = importlib.util.find_spec("confluent_kafka") is not None


def records(topic: str, *values: str, key: bytes | None = None) -> list[KafkaMessage]:
    return [KafkaMessage(topic, key, value.encode(), [("h", value.encode())], "r") for value in values]


async def started(settings: KafkaSettings, timeout: float = 20.0) -> Publisher:
    publisher = open_publisher(settings)
    publisher.start()
    deadline = time.monotonic() + timeout
    while not publisher.ready()[0]:
        assert time.monotonic() < deadline, "the publisher did not connect"
        await asyncio.sleep(0.05)
    return publisher


def freeze(broker: Broker, frozen: bool) -> None:
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def values(bootstrap: str, topic: str, at_least: int) -> list[bytes]:
    found = read_topic(bootstrap, topic, at_least, timeout=15)
    found += read_topic(bootstrap, topic, len(found) + 1, timeout=1.0)[len(found):]
    return sorted(record.value for record in found)


def test_records_reach_kafka_with_keys_and_headers_and_threads_may_submit(kafka_broker, topic_name, kafka_client):
    topic = topic_name("contract")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], client=kafka_client))
        assert type(publisher).__name__ == {"confluent": "ConfluentPublisher", "kafka-python": "ProcessPublisher"}[kafka_client]
        await publisher.publish(records(topic, "m1", "m2", key=b"k"), 10)
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        await asyncio.to_thread(publisher.submit, records(topic, "m3"),
                                lambda batch: loop.call_soon_threadsafe(answered.set_result, batch.failed))
        assert await asyncio.wait_for(answered, 10) == []
        await publisher.close(5)

    asyncio.run(main())
    found = read_topic(kafka_broker.bootstrap, topic, 3, timeout=10)
    assert sorted(r.value for r in found) == [b"m1", b"m2", b"m3"]
    assert all(r.headers == [("h", r.value)] for r in found)
    assert sorted(r.key or b"" for r in found) == [b"", b"k", b"k"]


def test_past_the_deadline_the_batch_is_in_flight_and_when_done_reports_its_landing(own_broker, topic_name, kafka_client):
    topic = topic_name("late")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[own_broker.bootstrap], client=kafka_client))
        await publisher.publish(records(topic, "warm"), 10)  # the topic and its leader are known
        freeze(own_broker, True)
        try:
            with pytest.raises(PublishFailed) as gave_up:
                await publisher.publish(records(topic, "late"), 1.0)
        finally:
            freeze(own_broker, False)
        assert gave_up.value.reason == "broker did not acknowledge within 1 s"
        assert gave_up.value.in_flight is not None, "the messages may still land: the caller must hear when"
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()
        publisher.when_done(gave_up.value.in_flight, lambda batch: outcome.set_result(batch.failed))
        assert await asyncio.wait_for(outcome, 15) == [], "it landed once the broker answered"
        await publisher.close(5)

    asyncio.run(main())
    assert values(own_broker.bootstrap, topic, 2) == [b"late", b"warm"]


def test_max_in_flight_records_holds_the_rest_back_and_a_batch_given_up_while_waiting_is_never_sent(
        own_broker, topic_name, kafka_client):
    topic = topic_name("bound")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[own_broker.bootstrap], client=kafka_client,
                                                max_in_flight_records=2))
        await publisher.publish(records(topic, "warm"), 10)
        freeze(own_broker, True)
        try:
            first = asyncio.ensure_future(publisher.publish(records(topic, "a0", "a1"), 30))  # fills the bound
            await asyncio.sleep(0.3)
            with pytest.raises(PublishFailed) as gave_up:
                await publisher.publish(records(topic, "waited"), 1.0)
            waited = asyncio.get_running_loop().create_future()
            publisher.when_done(gave_up.value.in_flight, lambda batch: waited.set_result((batch.failed, batch.error)))
            assert await asyncio.wait_for(waited, 5) == ([0], "abandoned before it was sent")
        finally:
            freeze(own_broker, False)
        await asyncio.wait_for(first, 20)
        await publisher.publish(records(topic, "after"), 10)
        await publisher.close(5)

    asyncio.run(main())
    assert values(own_broker.bootstrap, topic, 4) == [b"a0", b"a1", b"after", b"warm"], "'waited' was never sent"


def test_close_flushes_what_was_submitted(own_broker, topic_name, kafka_client):
    topic = topic_name("flush")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[own_broker.bootstrap], client=kafka_client))
        await publisher.publish(records(topic, "warm"), 10)
        freeze(own_broker, True)
        answers: list[list[int]] = []
        for n in range(5):
            publisher.submit(records(topic, f"s{n}"), lambda batch: answers.append(batch.failed))
        asyncio.get_running_loop().call_later(0.5, freeze, own_broker, False)
        await publisher.close(10)
        assert answers == [[]] * 5, "close waited for every ack"

    asyncio.run(main())
    assert values(own_broker.bootstrap, topic, 6) == [b"s0", b"s1", b"s2", b"s3", b"s4", b"warm"]


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka not installed")
def test_a_key_lands_on_the_same_partition_whichever_client_published_it(kafka_broker, topic_name):
    """Workers moving from one client to the other must keep each key's records in one partition."""
    keys = [f"user-{n}".encode() for n in range(12)]
    partitions: dict[str, dict[bytes, int]] = {}
    for client in ("kafka-python", "confluent"):
        topic = topic_name(f"keys-{client}")

        async def main() -> None:
            publisher = await started(KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], client=client))
            for key in keys:
                await publisher.publish(records(topic, key.decode(), key=key), 10)
            await publisher.close(5)

        asyncio.run(main())
        partitions[client] = {r.key: r.partition for r in read_topic(kafka_broker.bootstrap, topic, len(keys))}
    assert len(set(partitions["kafka-python"].values())) > 1, "the topic has several partitions"
    assert partitions["confluent"] == partitions["kafka-python"]


# -- kafka.client and kafka.producer -------------------------------------------------------

def test_auto_picks_confluent_when_installed_and_kafka_python_otherwise(monkeypatch):
    assert KafkaSettings().client_in_use == ("confluent" if CONFLUENT_INSTALLED else "kafka-python")
    assert KafkaSettings(client="kafka-python").client_in_use == "kafka-python"
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: None)
    assert KafkaSettings().client_in_use == "kafka-python"
    with pytest.raises(ValidationError, match="confluent-kafka is not installed"):
        KafkaSettings(client="confluent")


CONFIG = """
kafka:
  client: {client}
  producer: {{max_block_ms: 100, linger_ms: 3}}
providers:
  demo: {{verifier: hmac, path: /webhooks/demo, secrets: ["literal:abc"], options: {{prefix: "sha256="}}}}
routes: [{{topic: t}}]
"""


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka not installed")
def test_a_producer_option_confluent_cannot_honour_is_a_config_error_not_ignored():
    with pytest.raises(ConfigError) as refused:
        parse_config(CONFIG.format(client="confluent"), "cfg.yaml")
    message = str(refused.value)
    assert "max_block_ms" in message and "linger_ms" not in message and "kafka.client: kafka-python" in message
    assert parse_config(CONFIG.format(client="kafka-python"), "cfg.yaml").settings.kafka.producer["max_block_ms"] == 100


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka not installed")
def test_every_translated_option_is_a_librdkafka_property_it_accepts(tmp_path):
    from confluent_kafka import Producer

    given = {
        "compression_type": "gzip", "linger_ms": 3, "batch_size": 32768,
        "max_request_size": 2 << 20, "request_timeout_ms": 7000, "delivery_timeout_ms": 20000, "retries": 5,
        "retry_backoff_ms": 200, "max_in_flight_requests_per_connection": 5, "enable_idempotence": True,
        "metadata_max_age_ms": 60000, "reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 2000,
        "connections_max_idle_ms": 60000, "send_buffer_bytes": 65536, "receive_buffer_bytes": 65536,
        "receive_message_max_bytes": 4 << 20, "security_protocol": "PLAINTEXT", "ssl_check_hostname": False,
        "sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "p",
        "sasl_kerberos_service_name": "kafka", "client_dns_lookup": "use_all_dns_ips", "allow_auto_create_topics": True,
        "ssl_cafile": "ca.pem", "ssl_certfile": "cert.pem", "ssl_keyfile": "key.pem", "ssl_password": "pw",
        "ssl_crlfile": "crl.pem", "ssl_ciphers": "ECDHE-RSA-AES128-GCM-SHA256",
    }
    assert set(given) == set(options._LIBRDKAFKA), "every translation is tried"  # noqa: SLF001
    config = librdkafka_config(KafkaSettings(producer=given))
    assert config["linger.ms"] == 3 and config["compression.type"] == "gzip"
    assert config["message.timeout.ms"] == 20000 and config["message.max.bytes"] == 2 << 20
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    Producer(config).flush(0)  # librdkafka refuses an unknown property or a bad value here

    defaults = librdkafka_config(KafkaSettings())
    assert (defaults["acks"], defaults["enable.idempotence"]) == ("all", True)
    assert defaults["message.timeout.ms"] == 15000, "kafka-python's delivery_timeout_ms default, the same bound"


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka is not installed")
def test_while_records_are_in_flight_the_loop_serves_their_delivery_reports(own_broker, topic_name):
    """Served on the poll thread, each report was a GIL hand-over with the busy loop (confluent.py)."""
    topic = topic_name("loop-polls")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[own_broker.bootstrap], client="confluent"))
        await publisher.publish(records(topic, "warm"), 10)  # the topic and its leader are known
        served_on: list[int] = []
        reported = publisher._reported  # type: ignore[attr-defined]

        def spy(*report: object) -> None:
            served_on.append(threading.get_ident())
            reported(*report)

        publisher._reported = spy  # type: ignore[attr-defined]
        freeze(own_broker, True)
        try:
            publishing = asyncio.ensure_future(publisher.publish(records(topic, "a", "b"), 10))
            await asyncio.sleep(0.3)  # the poll thread, past its POLL_WAIT, leaves the polling to the loop
        finally:
            freeze(own_broker, False)
        await publishing
        assert served_on == [threading.get_ident()] * 2
        await publisher.close(5)

    asyncio.run(main())
    assert values(own_broker.bootstrap, topic, 3) == [b"a", b"b", b"warm"]


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka is not installed")
def test_when_the_loop_stops_polling_the_poll_thread_takes_over(kafka_broker, topic_name):
    """Whatever ends the loop's polling (a bug, an exception out of a drain), records in flight
    are still answered: the poll thread polls once the loop has not for POLL_WAIT."""
    topic = topic_name("takeover")

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], client="confluent"))
        await publisher.publish(records(topic, "warm"), 10)
        real_call_soon = publisher._loop.call_soon  # type: ignore[attr-defined]

        def call_soon(callback: object, *args: object, **context: object) -> object:  # the loop's polls never run
            handle = real_call_soon(callback, *args, **context)
            if getattr(callback, "__name__", "") == "_loop_poll":
                handle.cancel()
            return handle

        publisher._loop.call_soon = call_soon  # type: ignore[attr-defined]
        try:
            await publisher.publish(records(topic, "served by the thread"), 3)
        finally:
            publisher._loop.call_soon = real_call_soon  # type: ignore[attr-defined]
        await publisher.close(5)

    asyncio.run(main())
    assert values(kafka_broker.bootstrap, topic, 2) == [b"served by the thread", b"warm"]


@pytest.mark.skipif(not CONFLUENT_INSTALLED, reason="confluent-kafka is not installed")
@pytest.mark.parametrize("poller", ["thread", "loop"])
def test_a_poll_that_raises_replaces_the_producer_and_polling_goes_on(kafka_broker, topic_name, poller, caplog):
    """An exception out of poll() (a fatal producer, a callback's bug) used to end the poll thread:
    no batch was answered again, and their requests kept their dedup claims for good.  The loop
    polls while records are in flight (``poll(0)``), the poll thread when the loop has not for
    POLL_WAIT, as while nothing is in flight (``poll(POLL_WAIT)``): either may meet the failure."""
    from confluent_kafka import KafkaError, KafkaException

    topic = topic_name(f"poll-{poller}")

    class RaisesOnce:
        """The real producer, whose next poll() by ``poller`` raises once."""

        def __init__(self, real: object) -> None:
            self.real, self.raised_on = real, 0

        def poll(self, timeout: float) -> int:
            if not self.raised_on and (timeout == 0) == (poller == "loop"):
                self.raised_on = threading.get_ident()
                raise KafkaException(KafkaError(KafkaError._FATAL))
            return self.real.poll(timeout)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

        def __len__(self) -> int:
            return len(self.real)  # type: ignore[arg-type]

    async def main() -> None:
        publisher = await started(KafkaSettings(bootstrap_servers=[kafka_broker.bootstrap], client="confluent"))
        await publisher.publish(records(topic, "before"), 10)
        flaky = publisher._producer = RaisesOnce(publisher._producer)  # type: ignore[attr-defined]
        if poller == "loop":  # its record may land or fail with the producer it was given to
            with contextlib.suppress(PublishFailed):
                await publisher.publish(records(topic, "during"), 10)
        deadline = time.monotonic() + 10
        while not flaky.raised_on:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (flaky.raised_on == threading.get_ident()) == (poller == "loop")
        await publisher.publish(records(topic, "after"), 10)
        assert publisher._producer is not flaky, "the producer whose poll failed was replaced"  # type: ignore[attr-defined]
        await publisher.close(5)

    asyncio.run(main())
    assert "Kafka poll failed; replacing the producer" in caplog.messages
    landed = values(kafka_broker.bootstrap, topic, 2)
    assert [value for value in landed if value != b"during"] == [b"after", b"before"]
