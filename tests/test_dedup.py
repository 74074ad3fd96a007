"""The dedup store on its own: window, restarts, torn tails, bounds."""

from __future__ import annotations

import asyncio
import time

from webhookbus.delivery.dedup import CURRENT, DedupStore, dedup_key


def test_marked_ids_are_seen_until_their_window_ends(tmp_path):
    store = DedupStore(tmp_path, 100)
    now = time.time()
    store.mark([dedup_key("uip", "a1")], now + 60)
    assert store.seen(dedup_key("uip", "a1"), now)
    assert not store.seen(dedup_key("zignsec", "a1"), now), "the provider is part of the key"
    assert not store.seen(dedup_key("uip", "a2"), now)
    assert not store.seen(dedup_key("uip", "a1"), now + 120)


def test_a_restart_remembers_and_a_torn_record_is_dropped(tmp_path):
    store = DedupStore(tmp_path, 100)
    now = time.time()
    store.mark([dedup_key("p", str(n)) for n in range(10)], now + 3600)
    store.mark([dedup_key("p", "expired")], now - 10)
    store.close()
    with open(tmp_path / CURRENT, "ab") as file:
        file.write(b"\x01\x02\x03\x04\x05")  # half a record: a crash mid-write

    reopened = DedupStore(tmp_path, 100)
    assert all(reopened.seen(dedup_key("p", str(n)), now) for n in range(10))
    assert not reopened.seen(dedup_key("p", "expired"), now)
    assert len(reopened) == 10
    reopened.mark([dedup_key("p", "after")], now + 3600)  # appended on a record boundary again
    reopened.close()
    assert DedupStore(tmp_path, 100).seen(dedup_key("p", "after"), now)


def test_memory_and_disk_stay_bounded_and_keep_the_newest(tmp_path):
    store = DedupStore(tmp_path, max_entries=100)
    now = time.time()
    for n in range(1000):
        store.mark([dedup_key("p", str(n))], now + 3600)
    assert len(store) == 100
    assert store.seen(dedup_key("p", "999", ), now) and not store.seen(dedup_key("p", "0"), now)
    store.close()
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("dedup.*")) // 12
    assert on_disk <= 100
    reopened = DedupStore(tmp_path, max_entries=100)
    assert all(reopened.seen(dedup_key("p", str(n)), now) for n in range(950, 1000)), "the newest half survives"


def test_the_marks_of_one_loop_iteration_are_written_together_before_their_await_returns(tmp_path):
    """One write per iteration, not per mark (each write hands the GIL to the Kafka poll thread),
    and still on disk before a request that awaits it answers 2xx."""
    store = DedupStore(tmp_path, 100)
    now = time.time()
    log = tmp_path / "dedup.log"

    async def two_requests() -> None:
        first = store.mark([dedup_key("p", "a")], now + 60)
        second = store.mark([dedup_key("p", "b"), dedup_key("p", "c")], now + 60)
        assert first is not None and first is second, "one write for the iteration's marks"
        assert store.seen(dedup_key("p", "a"), now) and log.stat().st_size == 0, "known at once, written later"
        await first
        assert log.stat().st_size == 3 * 12
        assert await asyncio.wait_for(asyncio.shield(first), 1) is None  # awaited again: done, never raises
        third = store.mark([dedup_key("p", "d")], now + 60)
        assert third is not first
        await third
        assert log.stat().st_size == 4 * 12

    asyncio.run(two_requests())
    store.close()
    assert all(DedupStore(tmp_path, 100).seen(dedup_key("p", k), now) for k in "abcd")
