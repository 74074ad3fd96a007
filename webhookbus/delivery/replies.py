"""Blocking hooks decided by Kafka consumers: the listener's side of request-reply.

A provider that waits for a decision (Authgear's blocking events: the verifier answered the
request with a static :class:`~webhookbus.plugin.Response`) and whose event matches a route
with ``reply`` is held: the event goes to Kafka carrying three extensions, ``replytopic``,
``replypartition`` and ``correlationid``, and the request is answered with the first reply
carrying that ``correlationid``, once the provider's verifier accepted it
(:meth:`~webhookbus.plugin.Decides.decide`), or with the route's fallback when the reply is
invalid or none came within ``reply.timeout`` of the request's arrival.

One :class:`ReplyConsumer` per listener process reads the replies for every waiting request:
a kafka-python consumer on a thread, ``assign()``-ed (a group join takes seconds, and would
move partitions between processes) to this process's own partition of each reply topic,
``server.instance * server.workers + worker``, from its end.  So each process reads only the
replies meant for it.  The fetch wait is 5 ms: kafka-python's default of 500 ms made a round
trip's median 254 ms on the embedded broker (issue 17).  Fetching that often costs a tenth of
a core, so the consumer fetches only while a request waits (idle, it costs nothing; the next
request's first fetch starts at once).  A reply nobody waits for (late, or for another
instance) is dropped and counted.  Until the consumer is assigned (the broker is
down at startup, say) a held request gets its fallback at once, without the extensions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from webhookbus.config import Config, KafkaSettings, Provider, RouteSettings, Settings, validation_reason
from webhookbus.events import CORRELATION_ID, REPLY_PARTITION, REPLY_TOPIC, CloudEvent, Headers, decode_kafka
from webhookbus.log import where
from webhookbus.metrics import Metrics
from webhookbus.plugin import Accepted, Decides, Response
from webhookbus.routing import reply_route

log = logging.getLogger("webhookbus.replies")

FETCH_MAX_WAIT_MS = 5
POLL_MS = 100  # how soon the consumer thread notices a stop


@dataclass(eq=False)
class Hold:
    """One request waiting for its decision; ``events`` are its events, the held one with the
    extensions that name where to reply."""

    events: list[CloudEvent]
    provider: Provider
    static: Response  # the verifier's own answer: the fallback "static"
    reply_to: RouteSettings
    correlation_id: str | None = None  # None: the consumer is not ready, the fallback applies at once
    deadline: float = 0.0  # loop time
    decider: Decides | None = None
    event_name: str = ""
    future: asyncio.Future[Response | None] | None = None


class HeldRequests:
    """The held requests of one process and the consumer that answers them; on the loop's thread."""

    def __init__(self, config: Config, worker: int = 0, metrics: Metrics | None = None) -> None:
        self.settings = config.settings
        server = config.settings.server
        self.partition = server.instance * server.workers + worker
        self.topics = sorted({route.reply.topic for route in config.settings.routes if route.reply is not None})
        self.metrics = metrics or Metrics(enabled=False)
        self.counts: Counter[str] = Counter()  # reply, invalid, timed_out, dropped, not_ready, duplicate: for log lines
        self._waiting: dict[str, Hold] = {}
        self.consumer: ReplyConsumer | None = None

    def start(self) -> None:
        if self.topics:
            self.consumer = ReplyConsumer(self.settings.kafka, self.topics, self.partition, asyncio.get_running_loop(),
                                          self._arrived, min_partitions=self.settings.server.workers * (
                                              self.settings.server.instance + 1))
            self.consumer.start()

    def ready(self) -> tuple[bool, str]:
        """For /readyz: until the consumer is assigned, held requests get their fallback."""
        if self.consumer is not None and not self.consumer.ready.is_set():
            return False, "the reply consumer is not assigned yet"
        return True, "ok"

    async def close(self) -> None:
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.stop)

    def hold(self, settings: Settings, provider: Provider, accepted: Accepted, events: list[CloudEvent],
             received_at: datetime) -> Hold | None:
        """A :class:`Hold` when a Kafka consumer decides this request's answer, else ``None``.
        ``settings``: those the request started under, whose routes publish its events (a reload
        may have swapped others in since; ``self.settings`` are the start's, for the consumer)."""
        if accepted.response is None or not self.topics or not isinstance(provider.verifier, Decides):
            return None
        for index, event in enumerate(events):
            route = reply_route(settings, event)
            if route is not None:
                break
        else:
            return None
        assert route.reply is not None
        hold = Hold(list(events), provider, accepted.response, route)
        if self.consumer is None or not self.consumer.ready.is_set():
            return hold
        loop = asyncio.get_running_loop()
        elapsed = max(0.0, time.time() - received_at.timestamp())  # the provider's clock runs since it sent
        # 128 random bits per request, never a prefix and a counter: the id travels on every topic
        # the event fans out to, and whoever can write to the reply topic and guess the next
        # request's id could answer it (allow a sign-up) before the real policy does.
        hold.correlation_id = secrets.token_hex(16)
        hold.deadline = loop.time() + route.reply.timeout - elapsed
        hold.decider, hold.event_name = provider.verifier, accepted.events[index].name
        hold.future = loop.create_future()
        hold.events[index] = replace(event, extensions={
            **event.extensions, REPLY_TOPIC: route.reply.topic, REPLY_PARTITION: str(self.partition),
            CORRELATION_ID: hold.correlation_id})
        self._waiting[hold.correlation_id] = hold
        self.consumer.wanted.set()
        return hold

    async def decision(self, hold: Hold, fields: dict[str, Any]) -> Response:
        """The reply's answer, or the fallback; ``fields`` (the request's log line) say which."""
        assert hold.reply_to.reply is not None
        if hold.future is None:
            return self._fall_back(hold, "not_ready", "the reply consumer is not assigned yet", fields)
        if hold.events and any(event.id in fields.get("duplicates", ()) for event in hold.events):
            return self._fall_back(hold, "duplicate", "a duplicate event: no consumer sees it again", fields)
        remaining = hold.deadline - asyncio.get_running_loop().time()
        done, _ = await asyncio.wait([hold.future], timeout=max(0.0, remaining))
        if not done:
            return self._fall_back(hold, "timed_out", f"no reply within {hold.reply_to.reply.timeout:g} s", fields)
        response = hold.future.result()
        if response is None:
            return self._fall_back(hold, "invalid", "the reply was refused", fields)
        self.counts["reply"] += 1
        self.metrics.held_request(hold.provider.name, "reply")
        fields["decision"] = "reply"
        return response

    def release(self, hold: Hold) -> None:
        """The request is answered: a reply arriving now is dropped and counted."""
        if hold.correlation_id is not None:
            self._waiting.pop(hold.correlation_id, None)
            if not self._waiting and self.consumer is not None:
                self.consumer.wanted.clear()

    def _fall_back(self, hold: Hold, outcome: str, reason: str, fields: dict[str, Any]) -> Response:
        self.counts[outcome] += 1
        self.metrics.held_request(hold.provider.name, outcome)
        fields.update(decision="fallback", fallback_reason=reason, fallbacks=self.counts[outcome])
        fallback = hold.reply_to.reply.fallback if hold.reply_to.reply is not None else "static"
        if fallback == "static":
            return hold.static
        return hold.provider.verifier.decide(None, fallback)  # type: ignore[attr-defined]  # checked at load

    def _arrived(self, records: list[tuple[bytes | None, Headers]]) -> None:
        for value, headers in records:
            try:
                document = decode_kafka(value, headers)
            except (ValueError, RecursionError):
                document = {}
            correlation_id = document.get(CORRELATION_ID)
            hold = self._waiting.pop(correlation_id, None) if isinstance(correlation_id, str) else None
            if hold is None or hold.future is None or hold.future.done():
                self.counts["dropped"] += 1
                self.metrics.reply_dropped()
                log.info("reply dropped: no request waits for it (late, or not for this process)",
                         extra={CORRELATION_ID: str(correlation_id)[:80], "dropped_replies": self.counts["dropped"]})
                continue
            assert hold.decider is not None
            try:
                hold.future.set_result(hold.decider.decide(hold.event_name, document.get("data")))
            except ValueError as exc:
                self.counts["invalid"] += 1
                log.warning("reply refused: not an answer the provider takes", extra={
                    CORRELATION_ID: correlation_id, "event": hold.event_name, "reason": validation_reason(exc)[:500],
                    "refused_replies": self.counts["invalid"]})
                hold.future.set_result(None)
            except Exception as exc:  # a verifier bug costs this request its reply, not the consumer
                log.error("reply refused: the verifier failed", extra={CORRELATION_ID: correlation_id,
                                                                       "error": where(exc)})
                hold.future.set_result(None)


class ReplyConsumer(threading.Thread):
    """kafka-python reading this process's reply partitions and handing each poll's records to the loop."""

    def __init__(self, kafka: KafkaSettings, topics: list[str], partition: int, loop: asyncio.AbstractEventLoop,
                 deliver: Any, min_partitions: int) -> None:
        super().__init__(name="webhookbus-replies", daemon=True)
        self.kafka, self.topics, self.partition, self.loop, self.deliver = kafka, topics, partition, loop, deliver
        self.min_partitions = max(min_partitions, partition + 1)
        self.ready = threading.Event()
        self.wanted = threading.Event()  # set while a request waits: only then is the partition fetched
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)

    def run(self) -> None:
        while not self._stopping.is_set():
            consumer = None
            try:
                consumer = self._assigned()
                if consumer is None:
                    continue
                self.ready.set()
                while not self._stopping.is_set():
                    if not self.wanted.wait(POLL_MS / 1000):
                        continue  # what arrives meanwhile is late: read (and dropped) with the next request
                    polled = consumer.poll(timeout_ms=POLL_MS)
                    records = [(record.value, record.headers or []) for batch in polled.values() for record in batch]
                    if records:
                        self.loop.call_soon_threadsafe(self.deliver, records)
            except Exception as exc:  # the broker went away for good, a bug: rebuild rather than stop answering
                log.error("reply consumer failed; restarting it", extra={"error": where(exc)})
                self.ready.clear()
                self._stopping.wait(1.0)
            except BaseException:
                self.ready.clear()
                raise
            finally:
                if consumer is not None:
                    consumer.close()
        self.ready.clear()

    def _assigned(self) -> Any:
        """A consumer at the end of this process's partition of every reply topic, or ``None`` (retry)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers,
                                 client_id=f"{self.kafka.client_id}-replies", enable_auto_commit=False,
                                 fetch_max_wait_ms=FETCH_MAX_WAIT_MS, **_connection_options(self.kafka))
        try:
            partitions = []
            for topic in self.topics:
                known = consumer.partitions_for_topic(topic)
                if not known:
                    self._create(topic)
                    known = consumer.partitions_for_topic(topic)
                if not known or self.partition not in known:
                    log.error("reply topic lacks this process's partition; waiting for it", extra={
                        "topic": topic, "partition": self.partition, "partitions": len(known or ())})
                    consumer.close()
                    self._stopping.wait(5.0)
                    return None
                partitions.append(TopicPartition(topic, self.partition))
            consumer.assign(partitions)
            consumer.seek_to_end()
            for partition in partitions:  # resolve the end now: a reply sent after ready is read
                consumer.position(partition)
            log.info("reply consumer assigned", extra={"topics": self.topics, "partition": self.partition})
            return consumer
        except BaseException:
            consumer.close()
            raise

    def _create(self, topic: str) -> None:
        """A missing reply topic, with a partition for each process of this instance and those before it."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers, **_connection_options(self.kafka))
        try:
            admin.create_topics([NewTopic(topic, num_partitions=self.min_partitions, replication_factor=-1)])
            log.info("reply topic created", extra={"topic": topic, "partitions": self.min_partitions})
        except TopicAlreadyExistsError:
            pass  # another process created it meanwhile
        finally:
            admin.close()


def _connection_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The producer's security options (TLS, SASL), which the consumer needs as much."""
    return {name: value for name, value in kafka.producer.items()
            if name.startswith(("security_", "ssl_", "sasl_")) or name == "api_version"}
