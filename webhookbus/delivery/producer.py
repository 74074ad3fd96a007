"""The producer process: kafka-python, away from the event loop's GIL.

kafka-python is pure Python: in the listener's process its two threads took a third of
the CPU a request costs and, worse, the GIL from the event loop (bench/README.md).  So
each listener process starts one of these and talks to it over a socket pair
(:mod:`webhookbus.delivery.publish` is the other end; :mod:`webhookbus.delivery.records` has the frames)::

    listener -> producer   SETTINGS  the producer options, once, first
                           SEND      batch id, the batch's records as frames (records.py)
                           ABANDON   batch id: its request gave up; drop it if not sent yet
                           CLOSE     a graceful stop: flush within the budget given, answer, exit
    producer -> listener   ANSWER    batch id, indexes of records the broker refused, why
                           STATUS    whether a producer is connected (for /readyz)

Here :class:`ProducerThread` owns the KafkaProducer and bounds what kafka-python holds;
the main thread reads the socket.  After CLOSE it flushes what is on its way, answers and
exits.  If the socket ends without a CLOSE, the listener died (``kill -9``): the process
exits at once, dropping what it holds, because no client was answered 2xx for those
records and what the spool held is forwarded again by the next run; flushing them would
only publish them twice.  It ignores SIGINT and SIGTERM, which reach it with the
listener's, so that the listener's own shutdown decides when it goes.

    python -m webhookbus.delivery.producer FD
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO

from kafka import KafkaProducer
from kafka.errors import KafkaError

from webhookbus import log as logs
from webhookbus.log import where
from webhookbus.delivery.records import (ABANDON, ABANDONED, ANSWER, CLOSE, CLOSE_BUDGET, DONE, PIPE, QUEUED, SEND, SENDING,
                                SETTINGS, STATUS, Batch, answer_body, pipe_frame, read_messages)

log = logging.getLogger("webhookbus.producer")

# How the process ended, for the listener's log (and tests): after CLOSE; its producer thread
# died; the listener went away (the socket ended or was cut mid-frame) or never spoke.
EXIT_CLOSED, EXIT_PRODUCER_FAILED, EXIT_LISTENER_GONE = 0, 2, 3


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


class ProducerThread:
    """Hands batches to kafka-python on one thread, at most ``max_in_flight_records`` unacked.

    kafka-python buffers without a bound on records, so a batch beyond the bound waits
    in the queue; one abandoned while it waits is never sent.  ``send`` blocks (topic
    metadata, buffer space while the broker is away), which is why it has a thread of its
    own.  ``on_status(connected, replaced)`` hears when a producer comes or goes.
    """

    def __init__(self, options: dict[str, Any], max_in_flight_records: int, stall_after: float,
                 on_status: Callable[[bool, int], None] = lambda connected, replaced: None) -> None:
        self._options = options
        self._limit = max_in_flight_records
        self._on_status = on_status
        # Batches not handed to kafka-python yet, oldest first.  A dict (by id) rather than a
        # queue: one abandoned while it waits leaves at once, so a broker stall cannot pile up
        # the batches every request gave up on (the memory of the requests behind the deadline).
        self._waiting: dict[int, Batch] = {}
        self._closing = False
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._arrived = threading.Condition(self._lock)
        self._records_in_flight = 0
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self._broken = False  # set from kafka-python's thread when the producer failed for good
        # No ack for this long while records are pending: the producer is stuck (after a broker
        # restart kafka-python can retry UnknownProducerId forever) or the broker is away.
        self._stall_after = stall_after
        self._progress_at = time.monotonic()
        self._close_within = stall_after
        self.producers_replaced = 0  # also the generation of the current producer

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhookbus-producer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Send ``batch``; its callbacks run once every record is answered for."""
        with self._lock:
            self._waiting[id(batch)] = batch
            self._arrived.notify()

    def abandon(self, batch: Batch) -> bool:
        """Never send ``batch`` if it is still waiting; True when it was (its callbacks then run)."""
        with self._lock:
            if batch.state != QUEUED:
                return False
            batch.state = ABANDONED
            self._waiting.pop(id(batch), None)
            self._slot_freed.notify_all()
        batch.failed, batch.error = list(range(len(batch.messages))), "abandoned before it was sent"
        self._run_callbacks(batch)
        return True

    def close(self, timeout: float) -> None:
        """Send what is queued, wait up to ``timeout`` for its acks, then stop."""
        self._close_within = timeout
        with self._lock:
            self._closing = True
            self._arrived.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1)

    def _run(self) -> None:
        try:
            self._serve_queue()
        except Exception as exc:  # a dead thread would leave a process that never answers
            log.error("producer thread failed; the listener starts another process", extra={"reason": where(exc)})
            logging.shutdown()
            os._exit(EXIT_PRODUCER_FAILED)

    def _serve_queue(self) -> None:
        self._ensure_producer()
        while True:
            batch = self._next()
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
                except Exception as exc:
                    # A KafkaError is typically no metadata within max_block_ms: the rest would wait
                    # as long again.  Anything else (ValueError: a topic name kafka-python refuses) is
                    # about the record, not the producer, and must not end this thread.
                    if isinstance(exc, KafkaError) and not exc.retriable:
                        self._broken = True
                    self._fail_from(batch, index, f"send failed: {type(exc).__name__}")
                    break
                sent.add_callback(self._acked, batch)
                sent.add_errback(self._failed, batch, index, self.producers_replaced)
        if self._producer is not None:
            _close(self._producer, self._close_within)

    def _next(self) -> Batch | None | bool:
        """The oldest waiting batch; None once closing and none waits; False after a second idle."""
        with self._lock:
            if not self._waiting and not self._closing:
                self._arrived.wait(1.0)
            if self._waiting:
                return self._waiting.pop(next(iter(self._waiting)))
            return None if self._closing else False

    def _reserve(self, batch: Batch) -> bool:
        """Wait for room under the bound; False if the batch was abandoned meanwhile."""
        while True:
            with self._lock:
                if batch.state != QUEUED:
                    return False
                if not self._records_in_flight or self._records_in_flight + len(batch.messages) <= self._limit:
                    batch.state = SENDING
                    if not self._records_in_flight:
                        self._progress_at = time.monotonic()
                    self._records_in_flight += len(batch.messages)
                    return True
                self._slot_freed.wait(1.0)
            self._check_stall()  # outside the lock: replacing the producer fails its records (_settle)

    def _check_stall(self) -> None:
        if self._broken and self._producer is not None:
            # A record failed: replace the producer now, not when the next batch comes (there may
            # be none, and its other records can wait on a producer id forever).
            self._ensure_producer()
            return
        stalled_for = time.monotonic() - self._progress_at
        if self._records_in_flight and stalled_for > self._stall_after:
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
            with self._lock:  # against _failed: a record of the old producer must not condemn the new one
                self.producers_replaced += 1
                self._broken = False
            self._on_status(False, self.producers_replaced)
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**self._options)
            except KafkaError as exc:
                log.warning("cannot connect to Kafka", extra={"reason": type(exc).__name__})
                return None
            self._broken = False
            self._progress_at = time.monotonic()  # the stall clock starts with the producer
            self._on_status(True, self.producers_replaced)
        return self._producer

    def _acked(self, batch: Batch, _metadata: object) -> None:
        self._progress_at = time.monotonic()
        self._settle(batch, 1)

    def _failed(self, batch: Batch, index: int, generation: int, exc: BaseException) -> None:
        # kafka-python gave up on this record (retries and delivery timeout spent, or an
        # error it cannot retry): whatever the cause, start afresh with a new producer,
        # unless this is a record of a producer already replaced.
        with self._lock:
            if generation == self.producers_replaced:
                self._broken = True
        self._settle(batch, 1, [index], f"broker rejected a message: {type(exc).__name__}")

    def _fail_from(self, batch: Batch, start: int, error: str) -> None:
        self._settle(batch, len(batch.messages) - start, list(range(start, len(batch.messages))), error)

    def _settle(self, batch: Batch, count: int, failed: list[int] | None = None, error: str | None = None) -> None:
        # Called on kafka-python's I/O thread (or ours); only counts are touched under the lock.
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
        self._run_callbacks(batch)

    @staticmethod
    def _run_callbacks(batch: Batch) -> None:
        callbacks, batch.callbacks = batch.callbacks, []
        for callback in callbacks:
            try:
                callback(batch)
            except Exception as exc:  # a bug in a callback must not kill kafka-python's thread
                log.error("publish callback failed", extra={"reason": where(exc)})


def serve(sock: socket.socket) -> None:
    """Read batches from the listener until CLOSE, then flush; exit at once if the listener is gone.

    Every way out ends in ``os._exit``: a normal interpreter exit would run kafka-python's
    exit hook, which sends what it still holds.
    """
    reader: BinaryIO = sock.makefile("rb", buffering=1 << 16)
    write_lock = threading.Lock()

    def answer(frame: bytes) -> None:
        with write_lock:
            try:
                sock.sendall(frame)
            except OSError:
                pass  # the listener is gone: nobody is waiting for this answer

    frame = _read(reader)
    if frame is None or frame[0] != SETTINGS:
        os._exit(EXIT_LISTENER_GONE)
    settings = json.loads(frame[2])
    logs.configure(settings["log_level"])
    batches: dict[int, Batch] = {}

    def done(batch_id: int, batch: Batch) -> None:
        batches.pop(batch_id, None)
        answer(pipe_frame(ANSWER, batch_id, answer_body(batch.failed, batch.error)))

    engine = ProducerThread(settings["options"], settings["max_in_flight_records"], settings["stall_after"],
                            lambda connected, _replaced: answer(pipe_frame(STATUS, int(connected))))
    engine.start()
    try:
        while (frame := _read(reader)) is not None:
            kind, batch_id, body = frame
            if kind == CLOSE:
                engine.close(CLOSE_BUDGET.unpack(body)[0] if len(body) == CLOSE_BUDGET.size else settings["stall_after"])
                logging.shutdown()
                os._exit(EXIT_CLOSED)
            if kind == SEND:
                batch = Batch(read_messages(body), callbacks=[partial(done, batch_id)])
                batches[batch_id] = batch
                engine.submit(batch)
            elif kind == ABANDON and (waiting := batches.get(batch_id)) is not None:
                engine.abandon(waiting)
        log.warning("listener gone: producer process exits without flushing", extra={"batches_dropped": len(batches)})
    except Exception as exc:  # a damaged frame: the listener died mid-write
        log.warning("listener gone mid-frame: producer process exits without flushing", extra={"reason": where(exc)})
    logging.shutdown()
    os._exit(EXIT_LISTENER_GONE)


def _read(reader: BinaryIO) -> tuple[bytes, int, bytes] | None:
    """The next frame; None at the end of the stream, on a reset, or for a frame cut short."""
    try:
        head = reader.read(PIPE.size)
        if len(head) < PIPE.size:
            return None
        length, kind, batch_id = PIPE.unpack(head)
        body = reader.read(length)
    except OSError:  # ECONNRESET: the listener died with answers unread
        return None
    if len(body) != length:
        return None
    return kind, batch_id, body


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
