"""confluent-kafka's publisher: librdkafka inside the listener's process.

librdkafka does its I/O on threads of its own that do not hold the GIL, so unlike
kafka-python (:mod:`webhookbus.delivery.producer`) it needs no process of its own: the
event loop calls ``produce()`` per record.

While records are in flight the loop polls librdkafka for their delivery reports itself:
once in the loop iteration after a ``produce()``, and every millisecond until the last is
answered.  Each report is a call into Python, which needs the GIL: served from another
thread, every one was a GIL hand-over between that thread and the busy loop, a sixth of a
request's CPU at saturation (bench/README.md).  A poll thread polls whenever the loop has not
for :data:`POLL_WAIT` (nothing in flight: librdkafka's error callbacks; or the loop stopped
polling), hands the loop what it served in one ``call_soon_threadsafe``, and keeps watch:
it probes an unreachable broker, notices a producer that stalled, and purges replaced ones.

The guarantees are the producer process's:

- ``acks=all`` with idempotence (:func:`webhookbus.delivery.options.librdkafka_config`);
- at most ``max_in_flight_records`` records unacked: a batch beyond it waits on the loop,
  and one whose request gave up meanwhile is never produced;
- a producer that failed for good is replaced, and what it held fails, so its senders
  spool it or send it again: after a fatal error (the idempotent producer cannot go on
  without risking duplicates or reordering), or when a reachable broker acked nothing for
  ``stall_after`` seconds (a broker restarted with its producer ids forgotten answers
  UnknownProducerId to every epoch librdkafka bumps locally, for ever: seen on tansu);
- ``close`` flushes within its budget, then fails what is left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from webhookbus.config import KafkaSettings
from webhookbus.log import where
from webhookbus.metrics import Metrics
from webhookbus.delivery.options import librdkafka_config
from webhookbus.delivery.publish import BatchPublisher
from webhookbus.delivery.records import QUEUED, SENDING, Batch

log = logging.getLogger("webhookbus.publish")


class _LoopClosed(Exception):
    """The event loop is gone: the poll thread has nobody left to report to."""

POLL_WAIT = 0.05  # seconds the poll thread blocks in librdkafka when nothing happens
LOOP_POLL_EVERY = 0.001  # seconds between the loop's polls while records are in flight (libuv's timers count ms)
PROBE_EVERY = 1.0  # seconds between metadata requests while no broker answered


class ConfluentPublisher(BatchPublisher):
    """A :class:`~webhookbus.delivery.publish.Publisher` on one in-process librdkafka producer."""

    def __init__(self, settings: KafkaSettings, metrics: Metrics | None = None) -> None:
        super().__init__(settings, metrics)
        self._config = librdkafka_config(settings)
        self._limit = settings.max_in_flight_records
        self._producer: Any = None
        self._generation = 0  # of the current producer; a report carries its producer's
        self._failed_generation = -1  # set from librdkafka's thread when that producer failed for good
        self._in_flight = 0  # records produced and not yet reported (the loop's thread only)
        self._waiting: deque[Batch] = deque()  # over the bound: produced as reports free room
        self._reports: deque[tuple[Batch, int, int, Any]] = deque()  # (batch, index, generation, error)
        self._drain_due = False
        self._poll_soon: asyncio.Handle | None = None  # the loop's poll in the iteration after a produce()
        self._poll_timer: asyncio.TimerHandle | None = None  # and its poll every LOOP_POLL_EVERY
        self._loop_polled_at = 0.0  # monotonic; the poll thread polls when this is POLL_WAIT old
        self._retiring: list[Any] = []  # replaced producers, purged by the poll thread
        self._connected = False
        self._stall_after = max(5.0, 2 * settings.publish_timeout)  # as the producer process's
        self._progress_at = time.monotonic()  # the last ack, or when records started waiting for one
        self._last_error = None  # librdkafka repeats a transport error per reconnect: log changes
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._poll, name="webhookbus-kafka-poll", daemon=True)
        self._thread.start()

    def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self._connected else (False, "producer not connected yet")

    async def close(self, timeout: float = 10.0) -> None:
        """Produce what waits, give the acks ``timeout`` seconds, then fail what is left."""
        assert self._loop is not None
        while self._waiting:  # the budget decides now, not the bound
            batch = self._waiting.popleft()
            if batch.state == QUEUED:
                self._produce(batch)
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._in_flight:
            log.warning("producer closed with records pending", extra={"records_in_flight": self._in_flight})
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        if self._producer is not None:
            self._retiring.append(self._producer)
            self._producer = None  # destroyed with the last reference: no librdkafka thread outlives close
        await asyncio.to_thread(self._retire_all)
        self._drain()

    # -- on the event loop's thread ---------------------------------------------------

    def _new_producer(self) -> Any:
        return Producer({**self._config, "error_cb": partial(self._client_error, self._generation),
                         "logger": logging.getLogger("webhookbus.librdkafka")})

    def _send(self, batch: Batch) -> None:
        if self._stopping.is_set():
            self._fail(batch, "publisher closed")
        elif self._waiting or (self._in_flight and self._in_flight + len(batch.messages) > self._limit):
            self._waiting.append(batch)
        else:
            self._produce(batch)

    def _produce(self, batch: Batch) -> None:
        if self._poll_soon is None:  # the loop serves this batch's reports
            self._poll_soon = self._loop.call_soon(self._loop_poll, True)  # type: ignore[union-attr]
        batch.state = SENDING
        if not self._in_flight:
            self._progress_at = time.monotonic()
        self._in_flight += len(batch.messages)
        producer, generation = self._producer, self._generation
        for index, message in enumerate(batch.messages):
            try:
                producer.produce(message.topic, message.value, message.key, headers=message.headers,
                                 on_delivery=partial(self._reported, batch, index, generation))
            except (BufferError, KafkaException, ValueError, TypeError) as exc:
                # librdkafka's queue is full, or it refuses this record before any I/O: the
                # rest of the batch fails now (its sender spools or resends it).
                for rest in range(index, len(batch.messages)):
                    self._record_done(batch, rest, f"send failed: {type(exc).__name__}")
                break

    def _abandon(self, batch: Batch) -> None:
        if batch.state == QUEUED:  # still waiting for room: never produced
            self._fail(batch, "abandoned before it was sent")

    def _loop_poll(self, soon: bool) -> None:
        """Serve the reports that arrived; poll again in :data:`LOOP_POLL_EVERY` while records are
        in flight (:data:`POLL_WAIT` after a failed poll, as the poll thread waits)."""
        if soon:
            self._poll_soon = None
        else:
            self._poll_timer = None
        if self._stopping.is_set():  # close() waited for what it could; the rest is failed there
            return
        delay = LOOP_POLL_EVERY
        try:
            self._loop_polled_at = time.monotonic()
            self._producer.poll(0)
        except Exception as exc:  # as on the poll thread: the drain below replaces the producer
            self._poll_failed(exc)
            delay = POLL_WAIT
        try:
            if self._reports or self._failed_generation == self._generation:
                self._drain()
        finally:  # whatever the drain raised, the records left in flight are polled for
            if self._in_flight and self._poll_timer is None:
                self._poll_timer = self._loop.call_later(delay, self._loop_poll, False)  # type: ignore[union-attr]

    def _drain(self) -> None:
        """Settle the reports served so far, then produce what now has room."""
        self._drain_due = False
        reports = self._reports
        while reports:
            batch, index, generation, error = reports.popleft()
            if error is None:
                if not self._connected:
                    self._set_connected(True)
                self._record_done(batch, index, None)
            else:
                if error.fatal() and generation == self._generation:
                    self._failed_generation = generation
                self._record_done(batch, index, f"broker rejected a message: {error.name()}")
        if self._failed_generation == self._generation:
            self._replace()
        while self._waiting:
            batch = self._waiting[0]
            if batch.state == QUEUED and self._in_flight and self._in_flight + len(batch.messages) > self._limit:
                break
            self._waiting.popleft()
            if batch.state != QUEUED:
                continue
            if self._stopping.is_set():  # nobody polls the producer any more
                self._fail(batch, "publisher closed")
            else:
                self._produce(batch)

    def _record_done(self, batch: Batch, index: int, error: str | None) -> None:
        if error is not None:
            batch.failed.append(index)
            batch.error = batch.error or error
        batch.pending -= 1
        self._in_flight -= 1
        if not batch.pending:
            self._settle(batch, sorted(batch.failed), batch.error)

    def _replace(self) -> None:
        """A new producer for what comes next; the poll thread purges the old one (its records fail)."""
        if self._stopping.is_set():
            return
        log.warning("replacing a failed Kafka producer")
        self._retiring.append(self._producer)
        self._generation += 1
        self._set_connected(False, "producer")
        self._progress_at = time.monotonic()
        self._producer = self._new_producer()

    # -- on the poll thread (and librdkafka's callbacks, which poll() runs) --------------

    def _poll(self) -> None:
        """The poll thread.  It must outlive whatever librdkafka or a callback raises: without it
        no batch is ever answered again, and their requests keep their dedup claims for good."""
        probe_at = 0.0
        while not self._stopping.is_set():
            try:
                probe_at = self._poll_once(probe_at)
            except _LoopClosed:  # the process is stopping
                return
            except Exception as exc:
                self._poll_failed(exc)
                try:
                    self._wake_loop()  # the loop replaces the producer, as after a fatal error
                except _LoopClosed:
                    return
                time.sleep(POLL_WAIT)

    def _poll_once(self, probe_at: float) -> float:
        if self._in_flight and time.monotonic() - self._loop_polled_at < POLL_WAIT:  # the loop polls
            self._stopping.wait(POLL_WAIT)
        else:
            self._producer.poll(POLL_WAIT)
        if self._retiring:
            self._retire_all()
        now = time.monotonic()
        if not self._connected and now >= probe_at:
            probe_at = now + PROBE_EVERY
            self._probe()
        elif self._in_flight and now - self._progress_at > self._stall_after \
                and self._failed_generation != self._generation:
            log.warning("Kafka producer made no progress", extra={"seconds": round(now - self._progress_at, 1),
                                                                  "records_in_flight": self._in_flight})
            self._failed_generation = self._generation
        if self._reports or self._failed_generation == self._generation:
            self._wake_loop()
        return probe_at

    def _poll_failed(self, exc: Exception) -> None:
        log.error("Kafka poll failed; replacing the producer", extra={"reason": where(exc)})
        self._failed_generation = self._generation

    def _wake_loop(self) -> None:
        """Have the loop run :meth:`_drain` once for everything reported so far."""
        if self._drain_due:
            return
        self._drain_due = True
        try:
            self._loop.call_soon_threadsafe(self._drain)  # type: ignore[union-attr]
        except RuntimeError:
            raise _LoopClosed from None

    def _probe(self) -> None:
        try:
            self._producer.list_topics(timeout=PROBE_EVERY)
        except KafkaException:
            return
        self._set_connected(True)

    def _retire_all(self) -> None:
        """Purge replaced producers: every record they held is reported failed, then they go."""
        while self._retiring:
            producer = self._retiring.pop(0)  # gone even if purging it fails (a fatal producer may refuse)
            producer.purge()
            producer.flush(1.0)  # serves the purged records' reports
            if len(producer):
                log.warning("a replaced Kafka producer still holds records", extra={"records": len(producer)})
        if self._reports and self._loop is not None and not self._loop.is_closed():
            self._wake_loop()

    def _set_connected(self, connected: bool, replaced: str | None = None) -> None:
        self._connected = connected
        self.metrics.producer_status(connected, replaced)

    def _reported(self, batch: Batch, index: int, generation: int, error: Any, _message: Any) -> None:
        if error is None:
            self._progress_at = time.monotonic()
        self._reports.append((batch, index, generation, error))

    def _client_error(self, generation: int, error: Any) -> None:
        if error.fatal():
            log.error("Kafka producer failed for good", extra={"reason": error.name()})
            self._failed_generation = generation
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_connected(False)
            log.warning("no Kafka broker reachable", extra={"reason": error.name()})
        elif error.code() != self._last_error:
            log.warning("Kafka client error", extra={"reason": error.name()})
        self._last_error = error.code()
