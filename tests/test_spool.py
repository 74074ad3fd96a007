"""The spool on its own: framing, group commit, torn tails, release, slots, the size cap."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from webhookbus.routing import KafkaMessage
from webhookbus.delivery.spool import (
    Spool,
    SpoolFull,
    decode,
    encode,
    list_segments,
    read_frames,
    segment_path,
    spool_status,
)


def message(n: int, size: int = 40) -> KafkaMessage:
    return KafkaMessage(f"topic-{n % 3}", None if n % 2 else f"key-{n}".encode(), (b"%08d" % n) * (size // 8),
                        [("content-type", b"application/json"), ("ce_id", f"id-{n}".encode())], "r")


def append_all(spool: Spool, batches: list[list[KafkaMessage]]) -> None:
    """Append each batch as one request, one after the other (a group commit never spans two segments)."""
    async def main() -> None:
        spool.start()
        for batch in batches:
            await spool.append(batch)
        await spool.stop_writing()

    asyncio.run(main())


def values(spool_or_slot: Spool | Path) -> list[bytes]:
    slot = spool_or_slot.slot if isinstance(spool_or_slot, Spool) else spool_or_slot
    return [r.message.value for s in list_segments(slot) for r in read_frames(segment_path(slot, s))[0]]


def test_a_frame_round_trips_every_field():
    original = message(8)
    frame = encode(41, 1700000000.25, original)
    record = decode(frame[8:])
    assert (record.seq, record.accepted_at) == (41, 1700000000.25)
    assert record.message.topic == original.topic
    assert record.message.key == b"key-8"
    assert record.message.value == original.value
    assert record.message.headers == original.headers
    assert decode(encode(1, 0.0, message(9))[8:]).message.key is None


def test_concurrent_appends_share_syncs_and_are_durable_when_they_return(tmp_path, monkeypatch):
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    spool = Spool(tmp_path, 1 << 30, 1 << 30)
    seen_after_append: list[int] = []

    async def main() -> None:
        spool.start()

        async def one(n: int) -> None:
            await spool.append([message(n)])
            seen_after_append.append(len(values(spool)))  # what is on disk when the 2xx would go out

        await asyncio.gather(*(one(n) for n in range(300)))
        await spool.stop_writing()

    asyncio.run(main())
    assert sorted(values(spool)) == sorted(message(n).value for n in range(300))
    assert len(syncs) < 100, "group commit: concurrent requests share one fdatasync"
    assert min(seen_after_append) >= 1 and all(count >= i + 1 for i, count in enumerate(seen_after_append))
    spool.close()


def test_a_torn_last_record_is_cut_and_never_read(tmp_path, caplog):
    spool = Spool(tmp_path, 1 << 30, 1 << 30)
    append_all(spool, [[message(n)] for n in range(5)])
    spool.close()
    [segment] = list_segments(spool.slot)
    path = segment_path(spool.slot, segment)
    whole = path.stat().st_size
    with open(path, "ab") as file:  # what kill -9 in the middle of a write leaves
        file.write(encode(5, 0.0, message(5))[:-7])

    with caplog.at_level(logging.WARNING, "webhookbus.spool"):
        reopened = Spool(tmp_path, 1 << 30, 1 << 30)
    assert "torn" in caplog.text
    assert path.stat().st_size == whole
    assert reopened.next_seq == 5
    append_all(reopened, [[message(6)]])  # appends continue cleanly after the cut
    records = [r for s in list_segments(reopened.slot) for r in read_frames(segment_path(reopened.slot, s))[0]]
    assert [r.seq for r in records] == [0, 1, 2, 3, 4, 5]
    assert records[-1].message.value == message(6).value
    reopened.close()


def test_a_damaged_frame_stops_the_read_and_is_reported(tmp_path):
    spool = Spool(tmp_path, 1 << 30, 1 << 30)
    append_all(spool, [[message(n)] for n in range(3)])
    spool.close()
    path = segment_path(spool.slot, list_segments(spool.slot)[0])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the last record's value: its CRC no longer matches
    path.write_bytes(bytes(data))
    records, end, damaged = read_frames(path)
    assert [r.seq for r in records] == [0, 1] and damaged
    assert end < len(data)


def test_release_deletes_spent_segments_and_a_restart_resumes_after_the_cursor(tmp_path):
    spool = Spool(tmp_path, 1 << 30, segment_bytes=300)  # a few records per segment
    append_all(spool, [[message(n)] for n in range(20)])
    segments = list_segments(spool.slot)
    assert len(segments) > 3
    spool.release(10)
    remaining = list_segments(spool.slot)
    assert remaining[0] <= 10 < remaining[1], "the segment holding seq 10 is kept, every earlier one deleted"
    assert remaining == [s for s in segments if s >= remaining[0]] and len(remaining) < len(segments)
    assert (spool.slot / "cursor").read_text() == "10"
    spool.close()

    reopened = Spool(tmp_path, 1 << 30, segment_bytes=300)
    records, missing = reopened.read(reopened.start_position(), 100)
    assert missing == []
    assert [r.seq for r in records if r.seq >= reopened.acked_below] == list(range(10, 20))
    reopened.release(20)
    assert reopened.depth() == 0
    reopened.close()


def test_a_reader_skips_a_damaged_middle_segment_and_reports_what_was_lost(tmp_path):
    spool = Spool(tmp_path, 1 << 30, segment_bytes=200)
    append_all(spool, [[message(n)] for n in range(12)])
    spool.close()
    segments = list_segments(spool.slot)
    middle = segment_path(spool.slot, segments[1])
    middle.write_bytes(b"\x00" * 5)
    reopened = Spool(tmp_path, 1 << 30, segment_bytes=200)
    records, missing = reopened.read(reopened.start_position(), 100)
    assert missing == [range(segments[1], segments[2])]
    assert {r.seq for r in records} == set(range(12)) - set(range(segments[1], segments[2]))
    reopened.close()


def test_the_size_cap_refuses_instead_of_growing(tmp_path):
    spool = Spool(tmp_path, max_bytes=2000, segment_bytes=1 << 20)

    async def main() -> int:
        spool.start()
        accepted = 0
        try:
            for n in range(100):
                await spool.append([message(n, size=200)])
                accepted += 1
        except SpoolFull:
            pass
        finally:
            await spool.stop_writing()
        return accepted

    accepted = asyncio.run(main())
    assert 0 < accepted < 100
    assert spool.bytes <= 2000
    spool.close()


def test_processes_sharing_a_directory_get_their_own_slots(tmp_path):
    first = Spool(tmp_path, 1 << 30, 1 << 30)
    second = Spool(tmp_path, 1 << 30, 1 << 30)
    assert (first.slot.name, second.slot.name) == ("0", "1")
    append_all(first, [[message(1)], [message(2)]])
    status = {s.slot: s for s in spool_status(tmp_path)}
    assert status["0"].records == 2 and status["0"].owner == os.getpid() and status["0"].oldest is not None
    assert status["1"].records == 0
    first.close()
    third = Spool(tmp_path, 1 << 30, 1 << 30)  # slot 0 is free again: its records are resumed
    assert third.slot.name == "0" and third.depth() == 2
    second.close()
    third.close()


@pytest.mark.parametrize("fail_on", ["write", "fdatasync"])
def test_a_failing_disk_fails_the_requests_and_loses_no_earlier_record(tmp_path, monkeypatch, fail_on):
    from webhookbus.delivery.spool import SpoolError

    spool = Spool(tmp_path, 1 << 30, 1 << 30)
    real = getattr(os, fail_on)

    async def main() -> None:
        spool.start()
        await spool.append([message(1)])
        monkeypatch.setattr(os, fail_on, lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        with pytest.raises(SpoolError):
            await spool.append([message(2)])
        monkeypatch.setattr(os, fail_on, real)
        await spool.append([message(3)])
        await spool.stop_writing()

    asyncio.run(main())
    records = [r for s in list_segments(spool.slot) for r in read_frames(segment_path(spool.slot, s))[0]]
    assert [r.message.value for r in records] == [message(1).value, message(3).value]
    assert [r.seq for r in records] == [0, 1]
    spool.close()


@pytest.mark.parametrize("fail_on", ["write", "fdatasync", "_fsync_directory"])
def test_a_failed_first_write_to_a_new_segment_does_not_block_the_appends_after_it(tmp_path, monkeypatch, fail_on):
    """The segment is named after the next sequence number, which the next one starts at too."""
    import threading

    from webhookbus.delivery import spool as spool_module
    from webhookbus.delivery.spool import SpoolError

    spool = Spool(tmp_path, 1 << 30, 1 << 30)
    where = spool_module if fail_on == "_fsync_directory" else os
    real, failed = getattr(where, fail_on), []

    def fails_once_on_the_writer_thread(*args):
        if not failed and threading.current_thread().name == "webhookbus-spool":
            failed.append(fail_on)
            raise OSError(28, "No space left on device")
        return real(*args)

    async def main() -> None:
        spool.start()
        with pytest.raises(SpoolError):
            await spool.append([message(1)])
        await spool.append([message(2)])
        await spool.append([message(3)])
        await spool.stop_writing()

    monkeypatch.setattr(where, fail_on, fails_once_on_the_writer_thread)
    asyncio.run(main())
    assert failed == [fail_on]
    assert values(spool) == [message(2).value, message(3).value]
    assert list_segments(spool.slot) == [0]
    spool.close()


def test_a_record_that_cannot_be_encoded_fails_its_request_and_the_writer_goes_on(tmp_path, monkeypatch):
    from webhookbus.delivery import spool as spool_module
    from webhookbus.delivery.spool import SpoolError

    real = spool_module.encode
    monkeypatch.setattr(spool_module, "encode", lambda seq, now, m: real(seq, now, m) if m.value != b"bad" else 1 / 0)
    spool = Spool(tmp_path, 1 << 30, 1 << 30)

    async def main() -> None:
        spool.start()
        with pytest.raises(SpoolError, match="ZeroDivisionError at test_spool.py"):
            await spool.append([KafkaMessage("t", None, b"bad", [], "r")])
        await spool.append([message(2)])
        await spool.stop_writing()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert values(spool) == [message(2).value]
    spool.close()


def test_slot_status_counts_what_is_not_acked_across_segments(tmp_path):
    """What `spool status` and the admin listener's spool gauges show, from two segments' headers."""
    import time

    spool = Spool(tmp_path, 1 << 20, 400)  # a few records per segment
    before = time.time()
    append_all(spool, [[message(n, size=100)] for n in range(12)])
    segments = list_segments(spool.slot)
    assert len(segments) >= 3
    [status] = spool_status(tmp_path)
    assert (status.records, status.oldest is not None and status.oldest >= before) == (12, True)
    assert status.bytes == sum(p.stat().st_size for p in spool.slot.glob("*.seg"))

    accepted_at = {r.seq: r.accepted_at for first in segments for r in read_frames(segment_path(spool.slot, first))[0]}
    spool.release(segments[1] + 1, final=True)  # acked up to the second record of the second segment
    [status] = spool_status(tmp_path)
    assert (status.records, status.oldest) == (12 - (segments[1] + 1), accepted_at[segments[1] + 1])

    spool.release(12, final=True)
    assert spool_status(tmp_path)[0].records == 0 and spool_status(tmp_path)[0].oldest is None
    spool.close()
