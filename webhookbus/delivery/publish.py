"""Publishing from the listener: batches go to the producer process, answers come back.

The listener never runs kafka-python itself (:mod:`webhookbus.delivery.producer` says why).
:class:`Publisher` starts the producer process, writes each batch to it over a socket
pair and resolves the batch when the broker's answer comes back, all on the event loop:
a request costs the loop one frame written (coalesced per loop iteration) and one read.

If the producer process dies, the batches it held fail (their requests spool or answer
503 as configured; the forwarder re-sends spooled ones) and a new one is started.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from webhookbus.config import KafkaSettings
from webhookbus.log import where
from webhookbus.metrics import Metrics
from webhookbus.delivery.records import (ABANDON, ANSWER, CLOSE, CLOSE_BUDGET, DONE, PIPE, SEND, SETTINGS, STATUS, Batch,
                                KafkaMessage, parse_answer, pipe_frame, send_body)

log = logging.getLogger("webhookbus.publish")

RESTART_AFTER = 1.0  # seconds between a producer process's death and its replacement


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


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """KafkaProducer keyword arguments: our defaults, then the operator's pass-through options."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": settings.acks,
        "enable_idempotence": settings.acks == "all",
        # A send() must not sit on the producer's thread much longer than a request may wait.
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


class Publisher:
    """Publishes batches of messages and reports when the broker acked them.

    ``start`` and ``close`` are called on the event loop's thread at startup and shutdown;
    ``publish`` is the coroutine request handlers await; ``submit`` and ``when_done`` also
    serve threads (the spool forwarder) that must not touch the loop.
    """

    def __init__(self, settings: KafkaSettings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self.metrics = metrics or Metrics(enabled=False)
        self._batches: dict[int, Batch] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # a batch's state and callbacks: when_done comes from threads
        self._outbox: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: _Pipe | None = None
        self._connected = False
        self._closing = False
        self._gone: asyncio.Future[None] | None = None  # resolved when the current producer process is gone
        self._connecting: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference
        self.processes_started = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._spawn()

    async def publish(self, messages: Sequence[KafkaMessage], timeout: float) -> None:
        """Return once the broker acked every message; raise :class:`PublishFailed` otherwise."""
        if not messages:
            return
        assert self._loop is not None, "Publisher.start() was not called"
        batch = Batch(messages, self._loop.create_future())
        # One timer per request, cancelled by the answer (cheaper than asyncio.wait_for).
        batch.timer = self._loop.call_later(timeout, self._expire, batch, timeout)
        self._send(batch)
        started = time.perf_counter()
        try:
            await batch.future
        finally:
            self.metrics.publish_took(time.perf_counter() - started)

    def submit(self, messages: Sequence[KafkaMessage], callback: Callable[[Batch], None] | None = None) -> Batch:
        """Publish from any thread without waiting; ``callback(batch)`` runs once all are answered."""
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

    def when_done(self, batch: Batch, callback: Callable[[Batch], None]) -> None:
        """Run ``callback(batch)`` once ``batch`` is answered for (now, if it already is)."""
        with self._lock:
            if batch.state != DONE:
                batch.callbacks.append(callback)
                return
        callback(batch)

    def ready(self) -> tuple[bool, str]:
        """Whether a producer is connected; ``/readyz`` adds a live connection probe to the broker."""
        if not self._connected:
            return False, "producer not connected yet"
        return True, "ok"

    async def close(self, timeout: float = 10.0) -> None:
        """Let the producer process flush what it was sent (``timeout`` seconds), then see it exit."""
        self._closing = True
        if self._gone is not None and not self._gone.done():
            # Queued even before the pipe is connected: _connect writes the outbox.
            self._outbox.append(pipe_frame(CLOSE, 0, CLOSE_BUDGET.pack(timeout)))
            self._flush()
            try:
                await asyncio.wait_for(asyncio.shield(self._gone), timeout + 3)
            except TimeoutError:
                log.warning("producer process did not finish in time", extra={"seconds": timeout})
                if self._pipe is not None:
                    self._pipe.transport.abort()
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        self._fail_all("publisher closed")

    # -- on the event loop's thread ---------------------------------------------------

    def _spawn(self) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "webhookbus.delivery.producer", str(theirs.fileno())],
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.processes_started += 1
        settings = {
            "options": producer_options(self._settings),
            "max_in_flight_records": self._settings.max_in_flight_records,
            "stall_after": max(5.0, 2 * self._settings.publish_timeout),
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        }
        ours.sendall(pipe_frame(SETTINGS, 0, json.dumps(settings).encode()))
        ours.setblocking(False)
        self._gone = self._loop.create_future()
        self._connecting = self._loop.create_task(self._connect(ours))

    async def _connect(self, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            _, pipe = await self._loop.create_unix_connection(lambda: _Pipe(self._answered, self._lost), sock=sock)
        except OSError as exc:
            log.error("cannot talk to the producer process", extra={"reason": where(exc)})
            sock.close()
            self._lost()
            return
        self._pipe = pipe
        self._flush()

    def _send(self, batch: Batch) -> None:
        if self._gone is None or self._gone.done():
            self._fail(batch, "producer process not running")
            return
        batch.id = next(self._ids)
        self._batches[batch.id] = batch
        self._outbox.append(pipe_frame(SEND, batch.id, send_body(batch.messages)))
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def _flush(self) -> None:
        if self._outbox and self._pipe is not None and not self._pipe.transport.is_closing():
            self._pipe.transport.write(b"".join(self._outbox))
            self._outbox.clear()

    def _expire(self, batch: Batch, timeout: float) -> None:
        batch.timer = None
        if batch.future is not None and not batch.future.done():
            batch.future.set_exception(PublishFailed(f"broker did not acknowledge within {timeout:g} s", batch))
            if self._pipe is not None and batch.id in self._batches:
                self._outbox.append(pipe_frame(ABANDON, batch.id))
                self._flush()

    def _answered(self, kind: bytes, batch_id: int, body: bytes) -> None:
        if kind == ANSWER:
            batch = self._batches.pop(batch_id, None)
            if batch is not None:
                self._settle(batch, *parse_answer(body))
        elif kind == STATUS:
            # The producer process says "not connected" only when it replaces a failed producer.
            self._connected = bool(batch_id)
            self.metrics.producer_status(self._connected, None if self._connected else "producer")

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

    def _lost(self) -> None:
        """The producer process is gone: fail what it held, and start another unless closing."""
        self._connected = False
        self._pipe = None
        self.metrics.producer_status(False, None if self._closing else "process")
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self._fail_all("producer process exited")
        if not self._closing:
            assert self._loop is not None
            self._loop.call_later(RESTART_AFTER, self._restart)

    def _restart(self) -> None:
        if self._closing:
            return
        if self._process is not None:  # reap it (no zombie), and say how it ended
            if self._process.poll() is None:
                self._process.kill()
            log.error("producer process exited; starting another", extra={"exitcode": self._process.wait()})
        try:
            self._spawn()
        except OSError as exc:  # EMFILE, EAGAIN, ENOMEM: try again later rather than never
            log.error("cannot start a producer process", extra={"reason": where(exc)})
            assert self._loop is not None
            self._loop.call_later(RESTART_AFTER, self._restart)

    def _fail(self, batch: Batch, reason: str) -> None:
        self._settle(batch, list(range(len(batch.messages))), reason)

    def _fail_all(self, reason: str) -> None:
        self._outbox.clear()
        batches, self._batches = self._batches, {}
        for batch in batches.values():
            self._fail(batch, reason)


class _Pipe(asyncio.Protocol):
    """The listener's end of the socket pair: splits the byte stream into frames."""

    def __init__(self, on_frame: Callable[[bytes, int, bytes], None], on_lost: Callable[[], None]) -> None:
        self.on_frame, self.on_lost = on_frame, on_lost
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= PIPE.size:
            length, kind, batch_id = PIPE.unpack_from(buffer, at)
            end = at + PIPE.size + length
            if end > len(buffer):
                break
            self.on_frame(kind, batch_id, bytes(buffer[at + PIPE.size:end]))
            at = end
        del buffer[:at]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()

