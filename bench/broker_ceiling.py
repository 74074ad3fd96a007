"""The broker's ceiling: the messages webhookbus would produce, sent straight to Kafka with
kafka-python and webhookbus's own producer options, no HTTP in the way.

    python bench/broker_ceiling.py BOOTSTRAP TOPIC SECONDS IN_FLIGHT

``IN_FLIGHT`` caps unacknowledged messages, as N HTTP clients each waiting for their ack
do (0: no cap, the producer batches freely).  Prints one JSON line: acked, failed, seconds.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import KafkaProducer  # noqa: E402

from signed import SECRET, signed_requests  # noqa: E402
from webhookbus.config import KafkaSettings, RouteSettings  # noqa: E402
from webhookbus.events import normalize  # noqa: E402
from webhookbus.plugin import InboundRequest  # noqa: E402
from webhookbus.delivery.options import kafka_python_options  # noqa: E402
from webhookbus.routing import KafkaMessage, message_for  # noqa: E402
from webhookbus.verifiers.uip import UipOptions, UipVerifier  # noqa: E402


def messages(topic: str, count: int = 1000) -> list[KafkaMessage]:
    """What webhookbus produces for the bench's requests: verified, normalised, encoded."""
    verifier = UipVerifier(UipOptions(), (SECRET.encode(),))
    route = RouteSettings(topic=topic)
    built = []
    for request in signed_requests(["/webhooks/uip"], 600, count):
        inbound = InboundRequest("uip", "POST", request.path, "", request.headers(), request.body,
                                 datetime.now(timezone.utc))
        event = normalize(inbound, "uip", verifier.verify(inbound).events[0])
        built.append(message_for(route, event, "bench"))
    return built


def main(bootstrap: str, topic: str, seconds: float, in_flight: int) -> None:
    batch = messages(topic)
    producer = KafkaProducer(**kafka_python_options(KafkaSettings(bootstrap_servers=[bootstrap])))
    slots = threading.BoundedSemaphore(in_flight) if in_flight else None
    counts = {"acked": 0, "failed": 0}

    def settled(outcome: str) -> None:
        counts[outcome] += 1  # on kafka-python's I/O thread only
        if slots is not None:
            slots.release()

    started = time.perf_counter()
    deadline = started + seconds
    index = 0
    while time.perf_counter() < deadline:
        if slots is not None:
            slots.acquire()
        message = batch[index % len(batch)]
        index += 1
        future = producer.send(message.topic, message.value, message.key, message.headers)
        future.add_callback(lambda _: settled("acked"))
        future.add_errback(lambda _: settled("failed"))
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    print(json.dumps({**counts, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
