"""The Kafka producer, and the one thread boundary between it and the event loop.

kafka-python's ``KafkaProducer.send`` blocks (waiting for topic metadata, or for buffer
space while the broker is away), so the event loop never calls it.  Instead messages go
through a queue to one publisher thread that owns the producer; the broker's acks come
back on kafka-python's own I/O thread, and completed batches are handed to the loop with
a single ``call_soon_threadsafe`` per wake-up (each call writes to the loop's self-pipe,
which showed up in profiles when done once per message).

kafka-python buffers without a bound on records, so the publisher thread hands it at most
``kafka.max_in_flight_records`` unacknowledged records; beyond that a batch waits in the
queue, and a request whose deadline passes while its batch waits is never sent at all:
the caller spools it or answers 503, and nothing arrives twice or piles up in memory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from webhookbus.config import KafkaSettings
from webhookbus.log import where
from webhookbus.routing import KafkaMessage

log = logging.getLogger("webhookbus.publish")

QUEUED, SENDING, DONE, ABANDONED = range(4)


class Batch:
    """Messages published together, and who hears once the broker answered for each.

    ``failed`` holds the indexes of the messages the broker did not take (``error`` says
    why), so a sender keeping copies re-sends only those.  ``callbacks`` run on
    kafka-python's I/O thread or the publisher thread: they must be quick and never block.
    """

    __slots__ = ("messages", "future", "callbacks", "pending", "failed", "error", "state")

    def __init__(self, messages: Sequence[KafkaMessage], future: asyncio.Future[None] | None = None,
                 callbacks: list[Callable[[Batch], None]] | None = None) -> None:
        self.messages = messages
        self.future = future
        self.callbacks = callbacks or []
        self.pending = len(messages)
        self.failed: list[int] = []
        self.error: str | None = None
        self.state = QUEUED


class PublishFailed(Exception):
    """The broker did not acknowledge every message; ``reason`` is safe to log.

    ``in_flight`` is the batch when the deadline passed after its messages were handed to
    kafka-python: they may still reach Kafka, so whoever keeps a copy can wait for that
    outcome (:meth:`Publisher.when_done`) instead of sending them a second time.
    """

    def __init__(self, reason: str, in_flight: Batch | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.in_flight = in_flight


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """KafkaProducer keyword arguments: our defaults, then the operator's pass-through options."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": settings.acks,
        "enable_idempotence": settings.acks == "all",
        # A send() must not sit on the publisher thread much longer than a request may wait.
        "max_block_ms": int(max(1.0, settings.publish_timeout) * 1000),
        "linger_ms": 0,
        "request_timeout_ms": 10_000,
    }
    options.update(settings.producer)
    # kafka-python retries a record for delivery_timeout_ms (default 2 minutes), and after a
    # broker restart an idempotent producer can spend all of it in an UnknownProducerId
    # "resetting sequence" loop: give up sooner, and the failure replaces the producer.
    options.setdefault("delivery_timeout_ms", max(15_000, options["request_timeout_ms"] + options["linger_ms"]))
    return options


def _close(producer: KafkaProducer, timeout: float) -> None:
    """Close, failing whatever is still pending after ``timeout`` (so its callbacks run).

    kafka-python's ``close()`` flushes first and raises when records are still pending,
    before reaching the force-close it would otherwise do; do that step ourselves.
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError as exc:
        log.warning("producer closed with records pending", extra={"reason": type(exc).__name__})
        producer._sender.force_close()  # noqa: SLF001 - the step close() skipped


class Publisher:
    """Publishes batches of messages and reports when the broker acked them.

    ``start`` and ``close`` are called from the event loop's thread at startup and shutdown;
    ``publish`` is the coroutine request handlers await; ``submit`` and ``when_done`` serve
    threads (the spool forwarder, the audit trail) that must not touch the loop.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._records_in_flight = 0
        self._done: deque[Batch] = deque()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self._broken = False  # set from kafka-python's thread when the producer failed for good
        # No ack for this long while records are pending: the producer is stuck (after a broker
        # restart kafka-python can retry UnknownProducerId forever) or the broker is away.
        self._stall_after = max(5.0, 2 * settings.publish_timeout)
        self._progress_at = time.monotonic()
        self.producers_replaced = 0  # also the generation of the current producer

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="webhookbus-publisher", daemon=True)
        self._thread.start()

    async def publish(self, messages: Sequence[KafkaMessage], timeout: float) -> None:
        """Return once the broker acked every message; raise :class:`PublishFailed` otherwise."""
        if not messages:
            return
        assert self._loop is not None, "Publisher.start() was not called"
        future: asyncio.Future[None] = self._loop.create_future()
        batch = Batch(messages, future)
        self._queue.put(batch)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            reason = f"broker did not acknowledge within {timeout:g} s"
            with self._lock:
                if batch.state == QUEUED:  # never handed to kafka-python: it never will be
                    batch.state = ABANDONED
                    self._slot_freed.notify_all()
                    raise PublishFailed(reason) from None
            raise PublishFailed(reason, batch) from None

    def submit(self, messages: Sequence[KafkaMessage], callback: Callable[[Batch], None] | None = None) -> Batch:
        """Publish from any thread without waiting; ``callback(batch)`` runs once all are answered."""
        batch = Batch(messages, None, [callback] if callback else None)
        if messages:
            self._queue.put(batch)
        else:
            batch.state = DONE
            if callback:
                callback(batch)
        return batch

    def when_done(self, batch: Batch, callback: Callable[[Batch], None]) -> None:
        """Run ``callback(batch)`` once ``batch`` is answered for (now, if it already is)."""
        with self._lock:
            if batch.state != DONE:
                batch.callbacks.append(callback)
                return
        callback(batch)

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what was sent and stop the thread, without blocking the loop."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, timeout)

    def ready(self) -> tuple[bool, str]:
        """Whether a producer exists; ``/readyz`` adds a live connection probe to the broker."""
        if self._producer is None:
            return False, "producer not connected yet"
        return True, "ok"

    # -- the publisher thread ---------------------------------------------------------

    def _run(self) -> None:
        self._ensure_producer()
        while True:
            try:
                batch = self._queue.get(timeout=1.0)
            except queue.Empty:
                batch = False
            self._check_stall()
            if batch is None:
                break
            if batch is False or not self._reserve(batch):
                continue
            producer = self._ensure_producer()
            if producer is None:
                self._fail_from(batch, 0, "broker unreachable")
                continue
            for index, message in enumerate(batch.messages):
                try:
                    sent = producer.send(message.topic, message.value, message.key, message.headers)
                except KafkaError as exc:
                    # Typically no metadata within max_block_ms: the rest would wait as long again.
                    self._broken = self._broken or not getattr(exc, "retriable", False)
                    self._fail_from(batch, index, f"send failed: {type(exc).__name__}")
                    break
                sent.add_callback(self._acked, batch)
                sent.add_errback(self._failed, batch, index, self.producers_replaced)
        if self._producer is not None:
            _close(self._producer, self._settings.publish_timeout * 4)

    def _reserve(self, batch: Batch) -> bool:
        """Wait for room under ``max_in_flight_records``; False if the caller gave up meanwhile."""
        limit = self._settings.max_in_flight_records
        with self._lock:
            while batch.state == QUEUED and self._records_in_flight and self._records_in_flight + len(batch.messages) > limit:
                self._slot_freed.wait()
            if batch.state != QUEUED:
                return False
            batch.state = SENDING
            if not self._records_in_flight:
                self._progress_at = time.monotonic()
            self._records_in_flight += len(batch.messages)
            return True

    def _check_stall(self) -> None:
        stalled_for = time.monotonic() - self._progress_at
        if self._records_in_flight and stalled_for > self._stall_after and not self._broken:
            log.warning("Kafka producer made no progress", extra={"seconds": round(stalled_for, 1),
                                                                  "records_in_flight": self._records_in_flight})
            self._broken = True
            self._ensure_producer()

    def _ensure_producer(self) -> KafkaProducer | None:
        if self._broken and self._producer is not None:
            # An idempotent producer whose state the broker forgot (restart, UnknownProducerId,
            # OutOfOrderSequenceNumber) fails or stalls every later send: replace it.  Its
            # unacked records fail with it; their senders (the spool forwarder) send them again.
            log.warning("replacing a failed Kafka producer")
            _close(self._producer, 0)
            self._producer = None
            self.producers_replaced += 1
        self._broken = False
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**producer_options(self._settings))
            except KafkaError as exc:
                log.warning("cannot connect to Kafka", extra={"reason": type(exc).__name__})
                return None
        return self._producer

    def _acked(self, batch: Batch, _metadata: object) -> None:
        self._progress_at = time.monotonic()
        self._settle(batch, 1)

    def _failed(self, batch: Batch, index: int, generation: int, exc: BaseException) -> None:
        # kafka-python gave up on this record (retries and delivery timeout spent, or an
        # error it cannot retry): whatever the cause, start afresh with a new producer,
        # unless this is a record of a producer already replaced.
        if generation == self.producers_replaced:
            self._broken = True
        self._settle(batch, 1, [index], f"broker rejected a message: {type(exc).__name__}")

    def _fail_from(self, batch: Batch, start: int, error: str) -> None:
        self._settle(batch, len(batch.messages) - start, list(range(start, len(batch.messages))), error)

    def _settle(self, batch: Batch, count: int, failed: list[int] | None = None, error: str | None = None) -> None:
        # Called on kafka-python's I/O thread (or ours); only counts are touched under the lock.
        schedule = False
        with self._lock:
            if failed:
                batch.failed.extend(failed)
                batch.error = batch.error or error
            batch.pending -= count
            if batch.pending:
                return
            batch.state = DONE
            self._records_in_flight -= len(batch.messages)
            self._slot_freed.notify()
            callbacks, batch.callbacks = batch.callbacks, []
            if batch.future is not None:
                self._done.append(batch)
                schedule, self._drain_scheduled = not self._drain_scheduled, True
        for callback in callbacks:
            try:
                callback(batch)
            except Exception as exc:  # a bug in a callback must not kill kafka-python's thread
                log.error("publish callback failed", extra={"reason": where(exc)})
        if schedule:
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed at shutdown: nobody is waiting any more
                pass

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, deque()
            self._drain_scheduled = False
        for batch in done:
            assert batch.future is not None
            if batch.future.done():
                continue
            if batch.error is None:
                batch.future.set_result(None)
            else:
                batch.future.set_exception(PublishFailed(batch.error))
