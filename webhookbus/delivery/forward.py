"""The forwarder: ships spooled records to Kafka in arrival order and releases what was acked.

It runs on its own thread, reading the spool and handing whole batches to the publisher
(one hop onto the event loop per batch, then the producer process), so spooled traffic
costs the event loop little after the sync.  Records go out in batches, at most
``window`` unacknowledged at a time (memory stays flat however long the broker is away);
a record is released from the spool only after the broker acked it, so a crash anywhere
means sending it again (at-least-once), never losing it.  A record the broker refused is
sent again after a growing pause, behind the records already on their way: order is kept
except across such a failure.  A record spooled because its request passed the deadline
while kafka-python already had it is not sent again unless that first attempt fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from functools import partial

from webhookbus.log import Outage
from webhookbus.delivery.publish import Publisher
from webhookbus.delivery.records import Batch
from webhookbus.delivery.spool import Spool, SpooledRecord

log = logging.getLogger("webhookbus.forward")

MAX_BACKOFF = 5.0


class Forwarder:
    """``until_drained``: for a slot another process left behind; stop (and unlock it) once empty."""

    def __init__(self, spool: Spool, publisher: Publisher, batch_records: int = 500, window: int = 2000,
                 until_drained: bool = False) -> None:
        self.spool = spool
        self.until_drained = until_drained
        self.publisher = publisher
        self.batch_records = batch_records
        self.window = max(window, batch_records)
        self._cond = threading.Condition()
        self._position = spool.start_position()
        self._acked_below = spool.acked_below
        self._acked: set[int] = set()
        self._outstanding = 0
        self._retry: deque[SpooledRecord] = deque()
        # seq -> None, or the record once read: a first attempt of it is still in flight
        self._first_attempts: dict[int, SpooledRecord | None] = {}
        self._retry_at = 0.0
        self._backoff = 0.0
        self._readable = True
        self._durable_syncs = 0  # counts _wake calls: a sync during a read must not be missed
        self._acks_changed = False
        self._draining = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._trouble = Outage(log, "spool: forwarding stopped by an error; retrying every second",
                               slot=str(spool.slot))
        spool.on_durable = self._wake
        spool.on_linked = self._link
        self._link(spool.linked)  # made before this forwarder existed
        spool.linked = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhookbus-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Send nothing new, give what is on its way ``timeout`` seconds, record the acks."""
        if self._thread is None or not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            self._draining = True
            while self._outstanding and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._thread = None
        self._release(final=True)

    def _wake(self) -> None:
        with self._cond:
            self._readable = True
            self._durable_syncs += 1
            self._cond.notify_all()

    # -- the forwarder thread --------------------------------------------------------------

    def _run(self) -> None:
        """Never ends but by ``stop``: whatever fails (a disk error reading a segment, a bug)
        is logged once and tried again, as the records accepted are waiting on this thread."""
        while True:
            try:
                if self._step():
                    return
                self._trouble.cleared()
            except Exception as exc:
                self._trouble.failed(exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=1.0)
                    if self._stopping:
                        return

    def _step(self) -> bool:
        """One round: send what is due, release what was acked; True when the thread is done."""
        with self._cond:
            while not self._stopping and (wait := self._idle_for()) is not None:
                self._cond.wait(wait)
            if self._stopping:
                return True
            retry: list[SpooledRecord] = []
            if self._retry and not self._draining and time.monotonic() >= self._retry_at:
                while self._retry and len(retry) < self.batch_records:
                    retry.append(self._retry.popleft())
            room = self.window - self._outstanding
            read = not retry and not self._draining and self._readable and room > 0
            syncs_before_read = self._durable_syncs
            self._acks_changed = False
        if retry:
            self._send(retry)
        elif read:
            want = min(self.batch_records, room)
            records, missing = self.spool.read(self._position, want)
            with self._cond:
                # A short read means the spool's end, unless records became durable meanwhile.
                self._readable = len(records) == want or self._durable_syncs != syncs_before_read
                for lost in missing:
                    self._acked.update(seq for seq in lost if seq >= self._acked_below)
            self._send([r for r in records if r.seq >= self._acked_below])
        self._release()
        if self.until_drained and self._acked_below >= self.spool.next_seq and not self._outstanding:
            self._release(final=True)
            self.spool.close()
            log.info("spool: forwarded what another process left", extra={"slot": str(self.spool.slot)})
            return True
        return False

    def _idle_for(self) -> float | None:
        """None when there is work; else how long to sleep (caller holds the condition)."""
        now = time.monotonic()
        retry_in = self._retry_at - now if self._retry and not self._draining else 1.0
        if self._acks_changed or retry_in <= 0:
            return None
        if not self._draining and self._readable and self._outstanding < self.window:
            return None
        if self.spool.cursor_lags:  # written once its 100 ms are up
            return min(retry_in, self.spool.cursor_due_in()) or None
        return min(retry_in, 1.0)

    def _send(self, records: list[SpooledRecord]) -> None:
        if not records:
            return
        with self._cond:
            if self._draining:  # stop() decided while these were read: they stay in the spool
                return
            plain: list[SpooledRecord] = []
            for record in records:
                if record.seq in self._acked:
                    continue  # its first attempt landed before it was read
                if record.seq in self._first_attempts:
                    self._first_attempts[record.seq] = record  # sent again only if that attempt fails
                    self._outstanding += 1
                else:
                    plain.append(record)
            self._outstanding += len(plain)
        if plain:
            self.publisher.submit([r.message for r in plain], partial(self._sent, plain))

    def _sent(self, records: list[SpooledRecord], batch: Batch) -> None:
        # On the event loop's thread, when the producer process answered: bookkeeping only.
        failed = set(batch.failed)
        new_round = False
        with self._cond:
            self._outstanding -= len(records)
            for index, record in enumerate(records):
                if index in failed:
                    self._retry.append(record)
                else:
                    self._acked.add(record.seq)
            if failed and (now := time.monotonic()) >= self._retry_at:
                # Once per round of retries: the batches of one outage all fail within a moment.
                new_round = True
                self._backoff = min(MAX_BACKOFF, max(0.1, self._backoff * 2))
                self._retry_at = now + self._backoff
            elif not failed:
                self._backoff = 0.0
            self._acks_changed = True
            self._cond.notify_all()
        if new_round:
            log.warning("spool: forwarding failed, will retry",
                        extra={"reason": batch.error, "records": len(failed), "retry_in_s": round(self._backoff, 2)})

    def _link(self, links: dict[int, tuple[Batch, int]]) -> None:
        """Records spooled past their deadline while their first attempt was in flight.

        Each is followed only while that attempt is (the producer answers every batch, within
        its delivery timeout): the batch is let go as soon as it is answered, so however long
        the broker stalls, what is remembered here is bounded by what the producer holds.
        """
        with self._cond:
            for seq in links:
                self._first_attempts[seq] = None
        for seq, (batch, index) in links.items():
            self.publisher.when_done(batch, partial(self._first_attempt_done, seq, index))

    def _first_attempt_done(self, seq: int, index: int, batch: Batch) -> None:
        with self._cond:
            record = self._first_attempts.pop(seq, None)  # set once the forwarder read it
            if index not in batch.failed:
                if seq >= self._acked_below:
                    self._acked.add(seq)
                if record is not None:
                    self._outstanding -= 1
            elif record is not None:  # read and waiting on this attempt: send it now
                self._outstanding -= 1
                self._retry.append(record)
            # else: failed before it was read, so it is sent when read, like any record
            self._acks_changed = True
            self._cond.notify_all()

    def _release(self, final: bool = False) -> None:
        with self._cond:
            below = self._acked_below
            while below in self._acked:
                self._acked.remove(below)
                below += 1
            self._acked_below = below
        self.spool.release(below, final)
