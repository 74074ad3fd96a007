"""The dedup store on its own: window, restarts, torn tails, bounds."""

from __future__ import annotations

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
