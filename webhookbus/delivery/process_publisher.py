"""kafka-python's publisher: batches go to the producer process, answers come back.

The listener never runs kafka-python itself (:mod:`webhookbus.delivery.producer` says why).
:class:`ProcessPublisher` starts the producer process, writes each batch to it over a socket
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
from collections.abc import Callable

from webhookbus.config import KafkaSettings
from webhookbus.metrics import Metrics
from webhookbus.delivery.options import kafka_python_options
from webhookbus.delivery.publish import BatchPublisher
from webhookbus.delivery.records import (ABANDON, ANSWER, CLOSE, CLOSE_BUDGET, PIPE, SEND, SETTINGS, STATUS, Batch,
                                         parse_answer, pipe_frame, send_body)
from webhookbus.log import where

log = logging.getLogger("webhookbus.publish")

RESTART_AFTER = 1.0  # seconds between a producer process's death and its replacement


class ProcessPublisher(BatchPublisher):
    """A :class:`~webhookbus.delivery.publish.Publisher` whose producer is another process."""

    def __init__(self, settings: KafkaSettings, metrics: Metrics | None = None) -> None:
        super().__init__(settings, metrics)
        self._batches: dict[int, Batch] = {}
        self._ids = itertools.count(1)
        self._outbox: list[bytes] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: _Pipe | None = None
        self._connected = False
        self._closing = False
        self._gone: asyncio.Future[None] | None = None  # resolved when the current producer process is gone
        self._connecting: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference
        self.processes_started = 0

    def start(self) -> None:
        super().start()
        self._spawn()

    def ready(self) -> tuple[bool, str]:
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
            "options": kafka_python_options(self._settings),
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

    def _abandon(self, batch: Batch) -> None:
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

