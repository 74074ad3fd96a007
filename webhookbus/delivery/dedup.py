"""Which provider events were already accepted, so a provider's retry is answered 2xx and not published again.

A provider that did not see our 2xx (a timeout, a dropped connection) sends the same event
again, ZignSec for up to 48 hours.  An event is remembered only once it is durably
accepted (acked by the broker or synced to the spool): a request answered 503 is
remembered only if the messages it gave up on land after all, so its retry is otherwise a
first attempt, not a duplicate (:mod:`webhookbus.delivery.delivery`).

The key is 8 bytes of BLAKE2b over ``provider NUL event id`` (a false match needs ~2^32
remembered ids).  In memory: key -> expiry, oldest first, at most ``max_entries``.  On
disk, in the process's spool slot: ``dedup.log`` and ``dedup.old``, 12-byte records (key,
u32 expiry).  Each mark is written before the 2xx is sent, so a killed process forgets
nothing (the page cache keeps the write): the marks of one event loop iteration in one
``os.write``, which the requests await (a write per mark handed the GIL to the Kafka poll
thread each time, a thread switch that cost more than the write).  Files are synced at close,
so a power loss can forget the last seconds, which at worst publishes a retried event twice.  When
``dedup.log`` holds ``max_entries / 2`` records it replaces ``dedup.old``: the disk holds
at most ``max_entries`` records and always the newest ``max_entries / 2``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from webhookbus.log import Outage

log = logging.getLogger("webhookbus.dedup")

_RECORD = struct.Struct("<8sI")
CURRENT, OLD = "dedup.log", "dedup.old"


def dedup_key(provider: str, event_id: str) -> bytes:
    return hashlib.blake2b(f"{provider}\0{event_id}".encode(), digest_size=8).digest()


class DedupStore:
    """Owned by the event loop's thread: ``seen`` and ``mark`` are plain calls, no locking."""

    def __init__(self, slot: Path, max_entries: int) -> None:
        self.slot = slot
        self.max_entries = max_entries
        self._expiry: dict[bytes, int] = {}
        self._warned_at = 0.0
        # The events are accepted either way: a lost mark costs at most a second copy of a retry.
        self._disk = Outage(log, "dedup store cannot write; a provider's retry may be published twice",
                            slot=str(slot))
        now = time.time()
        for name in (OLD, CURRENT):
            self._load(slot / name, now)
        self._evict(now)
        self._fd = os.open(slot / CURRENT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(self._fd).st_size
        if size % _RECORD.size:  # a torn last record from a crash
            os.ftruncate(self._fd, size - size % _RECORD.size)
        self._written = size // _RECORD.size
        self._pending: list[bytes] = []  # marks not written yet, and the future of their write
        self._write_done: asyncio.Future[None] | None = None

    def _load(self, path: Path, now: float) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        expiry = self._expiry
        for key, expires in _RECORD.iter_unpack(data[: len(data) - len(data) % _RECORD.size]):
            if expires > now:
                expiry.pop(key, None)
                expiry[key] = expires

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, key: bytes, now: float) -> bool:
        expires = self._expiry.get(key)
        return expires is not None and expires > now

    def mark(self, keys: Iterable[bytes], expires: float) -> asyncio.Future[None] | None:
        """Remember ``keys`` until ``expires`` (unix seconds), in memory at once and on disk with
        the other marks of this loop iteration: await what it returns before answering 2xx (it
        never raises).  Without a running loop the marks are written before it returns (None)."""
        when = int(expires) + 1
        pending = self._pending
        for key in keys:
            self._expiry.pop(key, None)
            self._expiry[key] = when
            pending.append(_RECORD.pack(key, when))
        if not pending:
            return None
        if self._write_done is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write()
                return None
            self._write_done = loop.create_future()
            loop.call_soon(self._write)
        return self._write_done

    def _write(self) -> None:
        done, self._write_done = self._write_done, None
        records, self._pending = self._pending, []
        if records and self._fd >= 0:
            try:
                os.write(self._fd, b"".join(records))
                self._written += len(records)
                if self._written >= self.max_entries // 2:
                    self._rotate()
            except OSError as exc:  # on the event loop: must not raise
                self._disk.failed(exc)
            else:
                self._disk.cleared()
            self._evict(time.time())
        if done is not None and not done.done():
            done.set_result(None)

    def _evict(self, now: float) -> None:
        """Drop expired entries from the front, and the oldest beyond ``max_entries``."""
        expiry = self._expiry
        while expiry:
            key = next(iter(expiry))
            expires = expiry[key]
            if expires > now and len(expiry) <= self.max_entries:
                return
            del expiry[key]
            if expires > now and now - self._warned_at > 3600:
                self._warned_at = now
                log.warning("dedup store full: forgetting event ids before their window ends; raise spool.dedup_max_entries",
                            extra={"max_entries": self.max_entries, "seconds_left": int(expires - now)})

    def _rotate(self) -> None:
        fd = os.open(self.slot / "dedup.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.replace(self.slot / CURRENT, self.slot / OLD)  # first: a crash between keeps both halves
        os.replace(self.slot / "dedup.new", self.slot / CURRENT)
        os.close(self._fd)
        self._fd, self._written = fd, 0

    def close(self) -> None:
        self._write()  # what the last iteration marked
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._disk.failed(exc)
            os.close(self._fd)
            self._fd = -1
