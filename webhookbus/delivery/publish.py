"""The one publishing interface, and what its two implementations share.

:class:`Publisher` is what delivery, the forwarder and the audit see.  Two clients stand
behind it, chosen by ``kafka.client`` (:func:`open_publisher`):

- confluent-kafka in the listener's process (:mod:`webhookbus.delivery.confluent`):
  librdkafka's threads do not hold the GIL, so the loop pays one ``produce()`` per record;
- kafka-python in a producer process (:mod:`webhookbus.delivery.process_publisher`): pure
  Python, kept off the event loop's GIL (:mod:`webhookbus.delivery.producer` says why).

Both get the same guarantees from :class:`BatchPublisher`: one deadline per request, the
hop onto the loop for ``submit`` from other threads, and settling a batch exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from webhookbus.config import KafkaSettings
from webhookbus.delivery.options import CONFLUENT
from webhookbus.delivery.records import DONE, Batch, KafkaMessage
from webhookbus.log import where
from webhookbus.metrics import Metrics

__all__ = ["DONE", "Batch", "BatchPublisher", "PublishFailed", "Publisher", "broker_reachable", "open_publisher"]

log = logging.getLogger("webhookbus.publish")


class PublishFailed(Exception):
    """The broker did not acknowledge every message; ``reason`` is safe to log.

    ``in_flight`` is the batch when the deadline passed: its messages may still reach
    Kafka, so whoever keeps a copy waits for that outcome (:meth:`Publisher.when_done`)
    instead of sending them a second time.
    """

    def __init__(self, reason: str, in_flight: Batch | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.in_flight = in_flight


def broker_reachable(bootstrap_servers: Sequence[str], timeout: float = 1.0) -> tuple[bool, str]:
    """Whether a bootstrap server accepts TCP connections (for readiness probes); blocks up to
    ``timeout`` per server."""
    for server in bootstrap_servers:
        host, colon, port = server.rpartition(":")
        if not colon:  # kafka-python's default port, as the producer would use
            host, port = server, "9092"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return True, "ok"
        except (OSError, ValueError):
            continue
    return False, "no bootstrap server accepts connections"


class Publisher(Protocol):
    """Publishes batches of messages and reports when the broker acked them.

    ``start`` and ``close`` are called on the event loop's thread at startup and shutdown;
    ``publish`` is the coroutine request handlers await; ``submit`` and ``when_done`` also
    serve threads (the spool forwarder) that must not touch the loop.  Callbacks run on the
    event loop's thread.  ``metrics`` counts what it published (disabled without ``admin``).
    """

    metrics: Metrics

    def start(self) -> None: ...

    async def publish(self, messages: Sequence[KafkaMessage], timeout: float) -> None:
        """Return once the broker acked every message; raise :class:`PublishFailed` otherwise."""

    def submit(self, messages: Sequence[KafkaMessage], callback: Callable[[Batch], None] | None = None) -> Batch:
        """Publish from any thread without waiting; ``callback(batch)`` runs once all are answered."""

    def when_done(self, batch: Batch, callback: Callable[[Batch], object]) -> None:
        """Run ``callback(batch)`` once ``batch`` is answered for (now, if it already is); what it returns is ignored."""

    def ready(self) -> tuple[bool, str]:
        """Whether a producer is connected; ``/readyz`` adds a live connection probe to the broker."""

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what was sent (``timeout`` seconds), then fail what is left."""


def open_publisher(settings: KafkaSettings, metrics: Metrics | None = None) -> Publisher:
    """The publisher for ``kafka.client``; only the chosen client is imported."""
    if settings.client_in_use == CONFLUENT:
        from webhookbus.delivery.confluent import ConfluentPublisher

        return ConfluentPublisher(settings, metrics)
    from webhookbus.delivery.process_publisher import ProcessPublisher

    return ProcessPublisher(settings, metrics)


class BatchPublisher:
    """The half of a :class:`Publisher` that does not depend on the client.

    A subclass implements ``_send(batch)`` (on the loop's thread: hand the batch to the
    client, or fail it) and ``_abandon(batch)`` (its request gave up: drop it if not sent).
    """

    def __init__(self, settings: KafkaSettings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self.metrics = metrics or Metrics(enabled=False)
        self._lock = threading.Lock()  # a batch's state and callbacks: when_done comes from threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    async def publish(self, messages: Sequence[KafkaMessage], timeout: float) -> None:
        if not messages:
            return
        assert self._loop is not None, "Publisher.start() was not called"
        future: asyncio.Future[None] = self._loop.create_future()
        batch = Batch(messages, future)
        # One timer per request, cancelled by the answer (cheaper than asyncio.wait_for).
        batch.timer = self._loop.call_later(timeout, self._expire, batch, timeout)
        self._send(batch)
        started = time.perf_counter()
        try:
            await future
        finally:
            self.metrics.publish_took(time.perf_counter() - started)

    def submit(self, messages: Sequence[KafkaMessage], callback: Callable[[Batch], None] | None = None) -> Batch:
        batch = Batch(messages, None, [callback] if callback else None)
        if not messages:
            self._settle(batch, [], None)
        elif threading.get_ident() == self._loop_thread:
            self._send(batch)
        else:
            assert self._loop is not None, "Publisher.start() was not called"
            try:
                self._loop.call_soon_threadsafe(self._send, batch)
            except RuntimeError:  # the loop is closed: the process is stopping
                self._fail(batch, "publisher closed")
        return batch

    def when_done(self, batch: Batch, callback: Callable[[Batch], object]) -> None:
        with self._lock:
            if batch.state != DONE:
                batch.callbacks.append(callback)
                return
        callback(batch)

    def _send(self, batch: Batch) -> None:
        raise NotImplementedError

    def _abandon(self, batch: Batch) -> None:
        raise NotImplementedError

    def _expire(self, batch: Batch, timeout: float) -> None:
        batch.timer = None
        if batch.future is not None and not batch.future.done():
            batch.future.set_exception(PublishFailed(f"broker did not acknowledge within {timeout:g} s", batch))
            self._abandon(batch)

    def _settle(self, batch: Batch, failed: list[int], error: str | None) -> None:
        with self._lock:
            batch.failed, batch.error = failed, error if failed else None
            batch.state = DONE
            callbacks, batch.callbacks = batch.callbacks, []
        if batch.timer is not None:
            batch.timer.cancel()
        self.metrics.published(batch.messages, failed)
        for callback in callbacks:
            try:
                callback(batch)
            except Exception as exc:  # a bug in a callback must not stop the answers behind it
                log.error("publish callback failed", extra={"reason": where(exc)})
        future = batch.future
        if future is not None and not future.done():
            if failed:
                future.set_exception(PublishFailed(error or "broker rejected a message"))
            else:
                future.set_result(None)

    def _fail(self, batch: Batch, reason: str) -> None:
        self._settle(batch, list(range(len(batch.messages))), reason)
