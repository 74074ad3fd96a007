"""The deciding service's side of a route's ``reply``: a policy is a function.

webhookbus holds a provider's request that waits for a decision (Authgear's blocking events)
and publishes its event with the extensions ``replytopic``, ``replypartition`` and
``correlationid``.  :func:`serve` reads such events, asks ``handler`` for the decision and
sends it back as a CloudEvent to that topic and partition, carrying the same
``correlationid``; the listener checks it with the provider's rules and answers with it::

    from webhookbus.reply import serve

    def policy(event):                          # a webhookbus.events.CloudEvent
        email = (event.data["payload"]["user"].get("standard_attributes") or {}).get("email", "")
        if email.endswith("@blocked.example"):
            return {"is_allowed": False, "title": "Sign-up closed", "reason": "Ask for an invitation."}
        return {"is_allowed": True}

    serve("identity.authgear.users", policy, bootstrap_servers="127.0.0.1:9092")

The handler returns the decision (the reply's data) or ``None`` to let the route's fallback
apply; an exception is logged and does the same.  Events without a ``correlationid`` (the
non-blocking ones on the same topic) never reach it.  Or from a shell::

    python -m webhookbus.reply config/authgear_policy.py:decide --topic identity.authgear.users

kafka-python, like the listener: the consumer is ``assign()``-ed to every partition of the
topic from its end (a group join takes seconds on some brokers; pass ``group_id`` to share
the work between several deciding processes), with the listener's 5 ms fetch wait.
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from webhookbus.delivery.replies import FETCH_MAX_WAIT_MS
from webhookbus.events import CORRELATION_ID, REPLY_PARTITION, REPLY_TOPIC, CloudEvent, decode_kafka, encode_structured

log = logging.getLogger("webhookbus.reply")

Handler = Callable[[CloudEvent], Any]
_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"})


def serve(topic: str, handler: Handler, bootstrap_servers: str | list[str] = "127.0.0.1:9092", *,
          stop: threading.Event | None = None, ready: threading.Event | None = None, group_id: str | None = None,
          source: str = "webhookbus.reply", **kafka_options: Any) -> None:
    """Consume ``topic``, decide, reply; until ``stop`` is set (or forever).  ``ready`` is set once
    the consumer reads the topic: events published from then on are answered.  ``kafka_options``
    go to both KafkaConsumer and KafkaProducer (security_protocol, sasl_*, ssl_*...)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    stop = stop or threading.Event()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id,
                             enable_auto_commit=group_id is not None,
                             fetch_max_wait_ms=FETCH_MAX_WAIT_MS, **kafka_options)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=0, **kafka_options)
    try:
        if group_id is not None:
            consumer.subscribe([topic])
        else:
            partitions = consumer.partitions_for_topic(topic)
            created = not partitions  # then everything it will hold is new: read it from its start
            if created and ready is not None:
                ready.set()
            while not partitions and not stop.wait(0.2):
                partitions = consumer.partitions_for_topic(topic)
            if stop.is_set():
                return
            assigned = [TopicPartition(topic, partition) for partition in sorted(partitions or ())]
            consumer.assign(assigned)
            if created:
                consumer.seek_to_beginning()
            else:
                consumer.seek_to_end()
            for partition in assigned:  # resolve the end now, so what follows `ready` is read
                consumer.position(partition)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=100).values():
                for record in batch:
                    _answer(record.value, record.headers or [], handler, producer, source)
    finally:
        consumer.close()
        producer.close(timeout=5)


def _answer(value: bytes | None, headers: list[tuple[str, bytes]], handler: Handler, producer: Any,
            source: str) -> None:
    document = decode_kafka(value, headers)
    correlation_id, reply_topic = document.get(CORRELATION_ID), document.get(REPLY_TOPIC)
    if not isinstance(correlation_id, str) or not isinstance(reply_topic, str):
        return  # nobody waits for an answer to this one
    try:
        event = _cloudevent(document)
        decision = handler(event)
        if decision is None:
            return
        reply = CloudEvent(id=uuid.uuid4().hex, source=source, type=f"{event.type}.decision",
                           time=datetime.now(timezone.utc), data=decision, subject=event.subject,
                           extensions={CORRELATION_ID: correlation_id})
        encoded, reply_headers = encode_structured(reply)  # a decision that is not JSON fails here
    except Exception:  # a policy's bug costs this request its reply (the fallback answers), not the loop
        log.exception("no reply: the handler failed or its decision is not JSON",
                      extra={CORRELATION_ID: correlation_id})
        return
    partition = document.get(REPLY_PARTITION)
    future = producer.send(reply_topic, encoded, headers=reply_headers,
                           partition=int(partition) if isinstance(partition, str) and partition.isdigit() else None)
    future.add_errback(lambda exc: log.error("reply not sent", extra={CORRELATION_ID: correlation_id,
                                                                      "reason": type(exc).__name__}))


def _cloudevent(document: dict[str, Any]) -> CloudEvent:
    time_text = document.get("time")
    return CloudEvent(
        id=str(document.get("id")), source=str(document.get("source")), type=str(document.get("type")),
        time=datetime.fromisoformat(time_text) if isinstance(time_text, str) else datetime.now(timezone.utc),
        data=document.get("data"), subject=document.get("subject"),
        datacontenttype=document.get("datacontenttype") or "application/json",
        extensions={name: str(value) for name, value in document.items() if name not in _ATTRIBUTES},
    )


def load_policy(spec: str) -> Handler:
    """``path/to/file.py:function`` as a handler; ``ValueError`` naming what is missing."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"{spec!r} is not path/to/file.py:function")
    try:
        handler = runpy.run_path(path).get(name)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not callable(handler):
        raise ValueError(f"no function {name!r} in {path}")
    return handler  # type: ignore[no-any-return]


def answer_in_threads(topics: list[str], handler: Handler, bootstrap_servers: str | list[str],
                      stop: threading.Event) -> list[threading.Thread]:
    """:func:`serve` on each topic in a daemon thread, until ``stop``: for ``webhookbus dev``."""
    threads = [threading.Thread(target=serve, args=(topic, handler, bootstrap_servers), kwargs={"stop": stop},
                                name=f"reply-{topic}", daemon=True) for topic in topics]
    for thread in threads:
        thread.start()
    return threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhookbus.reply",
                                     description="answer a webhookbus reply route with a policy function")
    parser.add_argument("policy", help="path/to/file.py:function (a CloudEvent -> decision or None)")
    parser.add_argument("--topic", required=True, help="the topic the reply route publishes the events to")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="host:port[,host:port]")
    args = parser.parse_args(argv)
    try:
        handler = load_policy(args.policy)
    except ValueError as exc:
        print(f"webhookbus.reply: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("answering %s with %s", args.topic, args.policy)
    try:
        serve(args.topic, handler, args.bootstrap.split(","))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
