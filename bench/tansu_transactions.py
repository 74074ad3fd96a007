"""Does the embedded broker (tansu) do Kafka transactions?  What exactly-once forwarding needs.

    .venv/bin/python bench/tansu_transactions.py

Runs a transactional kafka-python producer against a fresh tansu: InitProducerId with a
transactional id, a committed transaction writing a data record and a position record to a
compacted topic (AddPartitionsToTxn, EndTxn commit), an aborted one, another committed one,
then reads the data partition with ``isolation_level`` read_uncommitted and read_committed.
Prints one line per step and a verdict; exits 1 if read_committed shows an aborted record.

Found on tansu as pinned (issue 13): every call succeeds and the transaction markers are
written (offsets 1, 3 and 5 are control records), but the FetchResponse lists no aborted
transactions, so a read_committed consumer is handed the aborted record as well.  Exactly-once
forwarding (KIP-618 style) rests on that filter: a transaction cut by a crash is aborted and
its records sent again, and on this broker its consumers would see both copies, and the
forwarder could resume from an aborted position record.
"""

from __future__ import annotations

import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer import fetcher

from webhookbus.testing.broker import Broker


def read(bootstrap: str, isolation: str) -> list[tuple[int, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        consumer.assign([TopicPartition("data", 0)])
        consumer.seek_to_beginning()
        return [(record.offset, record.value) for record in consumer]
    finally:
        consumer.close()


def main() -> int:
    aborted_lists: list[object] = []
    original = fetcher.Fetcher.PartitionRecords.__init__

    def seen(self, *args, **kwargs):  # what the broker said about aborted transactions, per fetch
        if kwargs.get("isolation_level"):
            aborted_lists.append(kwargs.get("aborted_transactions"))
        original(self, *args, **kwargs)

    fetcher.Fetcher.PartitionRecords.__init__ = seen  # type: ignore[method-assign]
    broker = Broker().start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("data", 1, 1),
                             NewTopic("positions", 1, 1, topic_configs={"cleanup.policy": "compact"})])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="probe", acks="all")
        started = time.monotonic()
        producer.init_transactions()
        print(f"InitProducerId with a transactional id: ok ({time.monotonic() - started:.2f} s)")
        producer.begin_transaction()
        producer.send("data", b"committed-1")
        producer.send("positions", key=b"slot-0", value=b"1")
        producer.commit_transaction()
        print("AddPartitionsToTxn + EndTxn(commit) over two topics: ok")
        producer.begin_transaction()
        producer.send("data", b"aborted")
        producer.flush()
        producer.abort_transaction()
        print("EndTxn(abort): ok")
        producer.begin_transaction()
        producer.send("data", b"committed-2")
        producer.commit_transaction()
        producer.close()
        uncommitted, committed = read(broker.bootstrap, "read_uncommitted"), read(broker.bootstrap, "read_committed")
    finally:
        broker.stop()
    print(f"read_uncommitted: {uncommitted}")
    print(f"read_committed:   {committed}")
    print(f"aborted transactions the broker listed in read_committed fetches: {aborted_lists}")
    if any(value == b"aborted" for _, value in committed):
        print("verdict: tansu commits transactions but does not filter aborted ones for read_committed readers")
        return 1
    print("verdict: transactions are honoured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
