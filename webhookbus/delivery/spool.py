"""The local durable spool: what a 2xx stands on when Kafka has not acknowledged (yet).

Append-only segment files, written by one thread with group commit: requests that arrive
while an ``fdatasync`` is running share the next one, so under load one sync covers many
requests and the cost per request stays small.  A request's future resolves only after
the sync that covered its records.  Why files and not SQLite: README, "What a 2xx means".

On disk, one directory per process ("slot", claimed with ``flock`` so several workers can
share ``spool.directory``)::

    <directory>/<slot>/lock                  owner pid; flock'd while a process uses the slot
    <directory>/<slot>/cursor                every record below this sequence number is acked
    <directory>/<slot>/<first seq>.seg       frames, appended; deleted once all are acked

A frame is ``<u32 length><u32 CRC-32><payload>``; the payload holds the sequence number,
the acceptance time and one Kafka record exactly as it will be produced (no re-encoding).
Only the segment being written can end in a torn frame (``kill -9``, power loss): recovery
keeps the whole frames before it and cuts the rest, so half a record is never forwarded.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webhookbus.log import Outage, reason
from webhookbus.delivery.records import FRAME, HEAD, MAX_FRAME, Batch, KafkaMessage, SpooledRecord, decode, encode

log = logging.getLogger("webhookbus.spool")

MAX_SLOTS = 64


class SpoolFull(Exception):
    """The spool reached ``spool.max_bytes``: answer 503 and let the provider retry."""


class SpoolError(Exception):
    """The disk refused a write or a sync; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_frames(path: Path, offset: int = 0, limit: int | None = None,
                max_records: int | None = None) -> tuple[list[SpooledRecord], int, bool]:
    """Whole, intact records of one segment from ``offset`` (up to byte ``limit``).

    Returns the records, the offset after the last one, and whether a torn or damaged
    frame stopped the read (``False`` at a clean end of the file or of ``limit``).
    """
    records: list[SpooledRecord] = []
    with open(path, "rb", buffering=1 << 20) as file:
        file.seek(offset)
        while max_records is None or len(records) < max_records:
            if limit is not None and offset >= limit:
                return records, offset, False
            head = file.read(FRAME.size)
            if not head:
                return records, offset, False
            if len(head) < FRAME.size:
                return records, offset, True
            length, crc = FRAME.unpack(head)
            payload = file.read(length) if length <= MAX_FRAME else b""
            if len(payload) != length or length < HEAD.size or zlib.crc32(payload) != crc:
                return records, offset, True
            try:
                records.append(decode(payload))
            except (struct.error, UnicodeDecodeError):
                return records, offset, True
            offset += FRAME.size + length
    return records, offset, False


def segment_path(slot: Path, first_seq: int) -> Path:
    return slot / f"{first_seq:020d}.seg"


def list_segments(slot: Path) -> list[int]:
    """First sequence numbers of the slot's segments, in order."""
    return sorted(int(p.stem) for p in slot.glob("*.seg") if p.stem.isdigit())


def read_cursor(slot: Path) -> int:
    """The acked-below mark; 0 (forward everything again: at-least-once) if unreadable."""
    try:
        return int((slot / "cursor").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_cursor(slot: Path, acked_below: int) -> None:
    tmp = slot / "cursor.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(acked_below).encode())
        finally:
            os.close(fd)
        os.replace(tmp, slot / "cursor")
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file would hold on to the space it got
        raise


def slot_owner(slot: Path) -> int | None:
    """The pid of the live process using ``slot``, if any."""
    try:
        pid = int((slot / "lock").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def lock_slot(slot: Path) -> int | None:
    """The fd holding ``slot``'s lock, or None if another process holds it."""
    slot.mkdir(parents=True, exist_ok=True)
    fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def claim_slot(directory: Path) -> tuple[Path, int]:
    """Lock the lowest free slot under ``directory``; returns it and the lock's fd."""
    for index in range(MAX_SLOTS):
        if (fd := lock_slot(directory / str(index))) is not None:
            return directory / str(index), fd
    raise SpoolError(f"all {MAX_SLOTS} spool slots under {directory} are in use")


def slots_with_records(directory: str | os.PathLike[str]) -> list[Path]:
    """Slots holding segments: those no process has locked were left behind (a worker that
    is gone for good, e.g. after ``server.workers`` was lowered) and need a forwarder."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return [slot for slot in sorted(root.iterdir()) if slot.name.isdigit() and list_segments(slot)]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Append:
    __slots__ = ("messages", "after", "future", "size")

    def __init__(self, messages: Sequence[KafkaMessage], after: Batch | None,
                 future: asyncio.Future[None], size: int) -> None:
        self.messages, self.after, self.future, self.size = messages, after, future, size


@dataclass(slots=True)
class Position:
    """Where a reader is: segment (by first seq), byte offset in it, next expected seq."""

    segment: int
    offset: int
    next_seq: int


class Spool:
    """One slot's segments: appended from the event loop, read and released by the forwarder.

    ``append`` is the coroutine request handlers await; ``read`` and ``release`` are called
    from the forwarder thread; ``on_durable`` (set by the forwarder) runs on the writer
    thread after each sync.  ``on_linked`` hears, on the writer thread and before a reader
    can see them, which records have a first attempt still in flight (sequence number ->
    the publisher's batch and index), so the forwarder can wait for its outcome; until a
    forwarder takes that hook the links are kept in ``linked``.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int,
                 slot: Path | None = None) -> None:
        self.max_bytes = max_bytes
        # Space comes back a whole segment at a time, and never from the one being written:
        # small segments against the cap keep a drained spool from still looking full.
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 8))
        if slot is None:
            self.slot, self._lock_fd = claim_slot(Path(directory))
        elif (fd := lock_slot(slot)) is not None:
            self.slot, self._lock_fd = slot, fd
        else:
            raise SpoolError(f"spool slot {slot} is in use")
        self._cursor_written = 0.0  # monotonic time of the last cursor write (or attempt)
        # One line while the disk refuses writes (ENOSPC, EIO), however many requests it refuses.
        self.disk = Outage(log, "spool: the disk refuses writes; new requests get 503, accepted ones still drain",
                           slot=str(self.slot))
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._queued_bytes = 0
        self.linked: dict[int, tuple[Batch, int]] = {}
        self.on_linked: Callable[[dict[int, tuple[Batch, int]]], None] = self.linked.update
        self.on_durable: Callable[[], None] = lambda: None
        self._fd: int | None = None
        self._active: int | None = None  # first seq of the segment being written
        self._active_size = 0
        self.acked_below = self._cursor_on_disk = read_cursor(self.slot)
        self._segments, self.next_seq = self._recover()
        self.bytes = sum(segment_path(self.slot, s).stat().st_size for s in self._segments)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _recover(self) -> tuple[list[int], int]:
        """Cut a torn tail off the last segment; the next sequence number follows its last record."""
        segments = list_segments(self.slot)
        next_seq = self.acked_below
        if segments:
            last = segments[-1]
            path = segment_path(self.slot, last)
            records, end, torn = read_frames(path)
            if torn:
                log.warning("spool: cut a torn record off the last segment",
                            extra={"segment": path.name, "kept_records": len(records),
                                   "cut_bytes": path.stat().st_size - end})
                os.truncate(path, end)
            if records:
                next_seq = max(next_seq, records[-1].seq + 1)
            else:
                path.unlink()
                segments.pop()
                next_seq = max(next_seq, last)
        return segments, next_seq

    # -- the event loop's side ----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._write_loop, name="webhookbus-spool", daemon=True)
        self._thread.start()

    async def append(self, messages: Sequence[KafkaMessage], after: Batch | None = None) -> None:
        """Return once ``messages`` are on disk and synced; :class:`SpoolFull` / :class:`SpoolError` otherwise."""
        assert self._loop is not None, "Spool.start() was not called"
        size = sum(FRAME.size + HEAD.size + len(m.topic) + len(m.key or b"") + len(m.value) + 64 for m in messages)
        with self._lock:
            if self.bytes + self._queued_bytes + size > self.max_bytes:
                raise SpoolFull(f"spool holds {self.bytes} bytes, the limit is {self.max_bytes}")
            self._queued_bytes += size
        future = self._loop.create_future()
        self._queue.put(_Append(messages, after, future, size))
        await future

    async def stop_writing(self) -> None:
        """Write and sync what is queued; later appends would wait forever."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Release the slot (after the forwarder stopped: another process may take it)."""
        if self._lock_fd >= 0:
            os.ftruncate(self._lock_fd, 0)  # no owner pid left behind for `spool status`
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the writer thread ----------------------------------------------------------------

    def _write_loop(self) -> None:
        while (first := self._queue.get()) is not None:
            group = [first]
            stop = False
            while True:  # everything that arrived during the previous sync shares this one
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(group)
            if stop:
                break

    def _commit(self, group: list[_Append]) -> None:
        error: Exception | None = None
        try:
            fd = self._fd if self._fd is not None else self._open_segment()
            now = time.time()
            frames: list[bytes] = []
            links: dict[int, tuple[Batch, int]] = {}
            seq = self.next_seq
            for item in group:
                for index, message in enumerate(item.messages):
                    frames.append(encode(seq, now, message))
                    if item.after is not None:
                        links[seq] = (item.after, index)
                    seq += 1
            data = b"".join(frames)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
            if links:
                self.on_linked(links)
        except Exception as exc:  # the disk (OSError), or a bug: either way the writer must go on
            error = SpoolError(f"spool write failed: {reason(exc)}")
            self.disk.failed(exc)
            self._abandon_segment()
        with self._lock:
            self._queued_bytes -= sum(item.size for item in group)
            if error is None:
                self.next_seq = seq
                self._active_size += len(data)
                self.bytes += len(data)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, [item.future for item in group], error)
        except RuntimeError:  # loop closed: nobody waits any more
            pass
        if error is None:
            self.disk.cleared()
            if self._active_size >= self.segment_bytes:
                self._roll()  # first: the forwarder woken next may release the whole segment
            self.on_durable()

    def _open_segment(self) -> int:
        path = segment_path(self.slot, self.next_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _fsync_directory(self.slot)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)  # else its name, the next seq, stays taken (EEXIST)
            raise
        self._fd = fd
        with self._lock:
            self._active, self._active_size = self.next_seq, 0
            self._segments.append(self.next_seq)
        return self._fd

    def _roll(self, discard: bool = False) -> None:
        """Close the active segment; ``discard`` removes it too (it holds nothing durable)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        with self._lock:  # one step for release(): it must never see a discarded segment as spent
            if discard and self._active is not None:
                self._segments.remove(self._active)
                segment_path(self.slot, self._active).unlink(missing_ok=True)
            self._active = None

    def _abandon_segment(self) -> None:
        """After a failed write the segment's tail is unknown: cut it back and start a new one.

        A segment with nothing durable in it goes entirely, or its name (the next sequence
        number, which the next segment starts at) would stay taken.
        """
        if self._fd is not None and self._active is not None:
            try:
                os.ftruncate(self._fd, self._active_size)
            except OSError:
                pass  # the reader stops at the damaged frame and moves to the next segment
        self._roll(discard=self._active_size == 0)

    # -- the forwarder's side --------------------------------------------------------------

    def start_position(self) -> Position:
        with self._lock:
            segments = list(self._segments)
        below = [s for s in segments if s <= self.acked_below]
        first = below[-1] if below else (segments[0] if segments else self.next_seq)
        return Position(first, 0, first)

    def read(self, position: Position, max_records: int) -> tuple[list[SpooledRecord], list[range]]:
        """Durable records from ``position`` on (which it advances), and ranges found missing.

        A missing range is what a damaged segment held: it cannot be sent, so the caller
        releases it (and the loss is logged here).
        """
        records: list[SpooledRecord] = []
        missing: list[range] = []
        while len(records) < max_records:
            with self._lock:
                segments = list(self._segments)
                active, durable = self._active, self._active_size
                next_seq = self.next_seq
            if position.segment not in segments:
                later = [s for s in segments if s > position.segment]
                if not later:
                    break
                position.segment, position.offset = later[0], 0
            limit = durable if position.segment == active else None
            try:
                found, position.offset, damaged = read_frames(
                    segment_path(self.slot, position.segment), position.offset, limit, max_records - len(records))
            except FileNotFoundError:  # an empty segment abandoned after a failed write (same name next time)
                break
            if found:
                records += found
                position.next_seq = found[-1].seq + 1
            if len(records) >= max_records or position.segment == active:
                break
            later = [s for s in segments if s > position.segment]
            end = later[0] if later else next_seq
            if position.next_seq < end and (damaged or later):
                log.error("spool: records lost to a damaged segment",
                          extra={"segment": position.segment, "first_seq": position.next_seq, "records": end - position.next_seq})
                missing.append(range(position.next_seq, end))
                position.next_seq = end
            if not later:
                break
            position.segment, position.offset = later[0], 0
        return records, missing

    def release(self, acked_below: int, final: bool = False) -> None:
        """Everything below ``acked_below`` reached Kafka: delete spent segments, record it.

        Segments go first: deleting needs no space, and on a full disk it is what frees
        some.  The cursor file is rewritten at most every 100 ms (and when segments go, or
        when ``final``); after a crash, or while the disk refuses the cursor, the last
        acked records are sent once more, never lost.  Never raises: a forwarder thread
        that died of a full disk would leave everything accepted stuck on it.
        """
        if acked_below > self.acked_below:
            self.acked_below = acked_below
        with self._lock:
            segments, active, next_seq = list(self._segments), self._active, self.next_seq
        spent = [s for s, end in zip(segments, segments[1:] + [next_seq]) if s != active and end <= self.acked_below]
        for first in spent:
            path = segment_path(self.slot, first)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                size = 0
            except OSError as exc:
                self.disk.failed(exc)
                break
            with self._lock:
                self._segments.remove(first)
                self.bytes -= size
        if self.cursor_lags and (final or spent or not self.cursor_due_in()):
            self._cursor_written = time.monotonic()
            try:
                write_cursor(self.slot, self.acked_below)
            except OSError as exc:
                self.disk.failed(exc)
            else:
                self._cursor_on_disk = self.acked_below

    @property
    def cursor_lags(self) -> bool:
        return self._cursor_on_disk != self.acked_below

    def cursor_due_in(self) -> float:
        """Seconds before the lagging cursor may be written again (0: now)."""
        return max(0.0, self._cursor_written + 0.1 - time.monotonic())

    def depth(self) -> int:
        """Records written and not yet acked."""
        with self._lock:
            return self.next_seq - self.acked_below


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    owner: int | None
    records: int
    bytes: int
    oldest: float | None


def slot_status(slot: Path) -> SlotStatus:
    """Depth, size and oldest unacked record of one slot, read without disturbing its owner.

    Cheap enough for every scrape of the admin listener however much the slot holds: it
    reads at most two segments (the one holding the oldest unacked record, and the last),
    and only their frames' headers.  ``records`` counts sequence numbers written and not
    acked, as :meth:`Spool.depth` does.
    """
    acked_below = read_cursor(slot)
    segments = list_segments(slot)
    size = 0
    for first in segments:
        try:
            size += segment_path(slot, first).stat().st_size
        except FileNotFoundError:
            pass
    start = [s for s in segments if s <= acked_below][-1:] or segments[:1]
    oldest, last_seq = None, None
    for first in segments[segments.index(start[0]):] if start else []:
        pending = [head for head in _frame_heads(segment_path(slot, first)) if head[0] >= acked_below]
        if pending:
            oldest = pending[0][1]
            break
    for first in reversed(segments):
        heads = _frame_heads(segment_path(slot, first))
        if heads:
            last_seq = heads[-1][0]
            break
    records = max(0, last_seq + 1 - acked_below) if last_seq is not None and oldest is not None else 0
    return SlotStatus(slot.name, slot_owner(slot), records, size, oldest)


def _frame_heads(path: Path) -> list[tuple[int, float]]:
    """(seq, accepted_at) of each whole frame of a segment, up to a torn or damaged one (no CRC check)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # released by its owner meanwhile
        return []
    heads: list[tuple[int, float]] = []
    at, end = 0, len(data)
    while at + FRAME.size + HEAD.size <= end:
        length = FRAME.unpack_from(data, at)[0]
        if length < HEAD.size or at + FRAME.size + length > end:
            break
        seq, accepted_at = HEAD.unpack_from(data, at + FRAME.size)[:2]
        heads.append((seq, accepted_at))
        at += FRAME.size + length
    return heads


def spool_status(directory: str | os.PathLike[str]) -> list[SlotStatus]:
    root = Path(directory)
    slots = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) if root.is_dir() else []
    return [slot_status(slot) for slot in slots]
