"""The Kafka producer, and the one thread boundary between it and the event loop.

kafka-python's ``KafkaProducer.send`` blocks (waiting for topic metadata, or for buffer
space while the broker is away), so the event loop never calls it.  Instead a request's
messages go through a queue to one publisher thread that owns the producer; the broker's
acks come back on kafka-python's own I/O thread, and completed batches are handed to the
loop with a single ``call_soon_threadsafe`` per wake-up (each call writes to the loop's
self-pipe, which showed up in profiles when done once per message).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from webhookbus.config import KafkaSettings
from webhookbus.routing import KafkaMessage

log = logging.getLogger("webhookbus.publish")


class PublishFailed(Exception):
    """The broker did not acknowledge every message; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    }
    options.update(settings.producer)
    return options


class _Batch:
    """The messages of one request and the future that resolves when all are acked."""

    __slots__ = ("messages", "future", "pending", "error")

    def __init__(self, messages: Sequence[KafkaMessage], future: asyncio.Future[None]) -> None:
        self.messages = messages
        self.future = future
        self.pending = len(messages)
        self.error: str | None = None


class Publisher:
    """Publishes each request's messages and tells the caller when the broker acked them all.

    ``start`` and ``close`` are called from the event loop's thread at startup and shutdown;
    ``publish`` is the coroutine request handlers await.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._done: deque[_Batch] = deque()
        self._done_lock = threading.Lock()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self._broken = False  # set from kafka-python's thread when the producer failed for good

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="webhookbus-publisher", daemon=True)
        self._thread.start()

    async def publish(self, messages: Sequence[KafkaMessage], timeout: float) -> None:
        """Return once the broker acked every message; raise :class:`PublishFailed` otherwise.

        On timeout the messages may still reach Kafka later (the producer keeps them until
        its own delivery timeout); callers answer 503 so the provider retries, which is why
        consumers dedup on the CloudEvents ``id``.
        """
        if not messages:
            return
        assert self._loop is not None, "Publisher.start() was not called"
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Batch(messages, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise PublishFailed(f"broker did not acknowledge within {timeout:g} s") from None

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
            batch = self._queue.get()
            if batch is None:
                break
            producer = self._ensure_producer()
            if producer is None:
                self._finish(batch, "broker unreachable")
                continue
            for message in batch.messages:
                try:
                    sent = producer.send(message.topic, message.value, message.key, message.headers)
                except KafkaError as exc:
                    self._note_fatal(exc)
                    self._settle(batch, f"send failed: {type(exc).__name__}")
                    continue
                sent.add_callback(self._acked, batch)
                sent.add_errback(self._failed, batch)
        if self._producer is not None:
            try:
                self._producer.close(timeout=self._settings.publish_timeout * 4)
            except KafkaError as exc:  # pragma: no cover - best effort at shutdown
                log.warning("producer close failed", extra={"reason": type(exc).__name__})

    def _ensure_producer(self) -> KafkaProducer | None:
        if self._broken and self._producer is not None:
            # An idempotent producer whose state the broker forgot (restart, UnknownProducerId,
            # OutOfOrderSequenceNumber) fails every later send: replace it.
            log.warning("replacing a failed Kafka producer")
            self._producer.close(timeout=0)
            self._producer = None
        self._broken = False
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**producer_options(self._settings))
            except KafkaError as exc:
                log.warning("cannot connect to Kafka", extra={"reason": type(exc).__name__})
                return None
        return self._producer

    def _acked(self, batch: _Batch, _metadata: object) -> None:
        self._settle(batch, None)

    def _failed(self, batch: _Batch, exc: BaseException) -> None:
        self._note_fatal(exc)
        self._settle(batch, f"broker rejected a message: {type(exc).__name__}")

    def _note_fatal(self, exc: BaseException) -> None:
        if not getattr(exc, "retriable", False):
            self._broken = True

    def _settle(self, batch: _Batch, error: str | None) -> None:
        # Called on kafka-python's I/O thread (or ours); only the count is touched here.
        with self._done_lock:
            if error is not None and batch.error is None:
                batch.error = error
            batch.pending -= 1
            if batch.pending:
                return
            self._done.append(batch)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed at shutdown: nobody is waiting any more
            pass

    def _finish(self, batch: _Batch, error: str) -> None:
        batch.pending = 1
        self._settle(batch, error)

    def _drain(self) -> None:
        with self._done_lock:
            done, self._done = self._done, deque()
            self._drain_scheduled = False
        for batch in done:
            if batch.future.done():
                continue
            if batch.error is None:
                batch.future.set_result(None)
            else:
                batch.future.set_exception(PublishFailed(batch.error))
