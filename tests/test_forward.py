"""The forwarder against a publisher the test answers by hand: order, retries, release, linked records."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable

from webhookbus.delivery.forward import Forwarder
from webhookbus.delivery.publish import DONE, Batch
from webhookbus.routing import KafkaMessage
from webhookbus.delivery.spool import Spool


def message(n: int) -> KafkaMessage:
    return KafkaMessage("t", None, b"value-%d" % n, [], "r")


class HandPublisher:
    """``submit`` only records; the test decides what the broker answered."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def submit(self, messages, callback=None) -> Batch:
        batch = Batch(list(messages), None, [callback] if callback else None)
        with self.lock:
            self.batches.append(batch)
        return batch

    def when_done(self, batch: Batch, callback) -> None:
        if batch.state == DONE:
            callback(batch)
        else:
            batch.callbacks.append(callback)

    @staticmethod
    def answer(batch: Batch, failed: list[int] = ()) -> None:
        batch.failed, batch.error = list(failed), "NotLeaderForPartitionError" if failed else None
        batch.state = DONE
        for callback in batch.callbacks:
            callback(batch)

    def values(self) -> list[bytes]:
        with self.lock:
            return [m.value for b in self.batches for m in b.messages]


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def spool_with(tmp_path, count: int, **links) -> Spool:
    spool = Spool(tmp_path, 1 << 30, 1 << 30)

    async def main() -> None:
        spool.start()
        for n in range(count):
            await spool.append([message(n)], links.get(f"after{n}"))
        await spool.stop_writing()

    asyncio.run(main())
    return spool


def test_records_go_out_in_order_and_only_refused_ones_are_sent_again(tmp_path):
    spool = spool_with(tmp_path, 10)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher, batch_records=4, window=8)  # type: ignore[arg-type]
    forwarder.start()
    wait_until(lambda: len(publisher.batches) == 2)
    assert publisher.values() == [b"value-%d" % n for n in range(8)], "in order, at most the window outstanding"
    first, second = publisher.batches
    HandPublisher.answer(first, failed=[1])  # value-1 refused
    HandPublisher.answer(second)
    wait_until(lambda: len(publisher.batches) >= 4)
    sent_later = [m.value for b in publisher.batches[2:] for m in b.messages]
    assert sorted(sent_later) == sorted([b"value-1", b"value-8", b"value-9"])
    assert spool.acked_below == 1, "value-1 holds the cursor until it is acked"
    for batch in publisher.batches[2:]:
        HandPublisher.answer(batch)
    wait_until(lambda: spool.acked_below == 10)
    forwarder.stop(1)
    assert (spool.slot / "cursor").read_text() == "10"
    assert publisher.values().count(b"value-1") == 2 and len(publisher.values()) == 11
    spool.close()


def test_what_was_not_acked_at_stop_is_sent_again_after_a_restart(tmp_path):
    spool = spool_with(tmp_path, 3)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher)  # type: ignore[arg-type]
    forwarder.start()
    wait_until(lambda: len(publisher.batches) == 1)
    forwarder.stop(0.2)  # the broker never answered
    spool.close()

    reopened = Spool(tmp_path, 1 << 30, 1 << 30)
    again = HandPublisher()
    forwarder = Forwarder(reopened, again)  # type: ignore[arg-type]
    forwarder.start()
    wait_until(lambda: len(again.batches) == 1)
    assert again.values() == [b"value-0", b"value-1", b"value-2"]
    HandPublisher.answer(again.batches[0])
    wait_until(lambda: reopened.acked_below == 3)
    forwarder.stop(1)
    reopened.close()


def test_a_record_spooled_past_its_deadline_is_sent_only_if_its_first_attempt_fails(tmp_path):
    landed = Batch([message(0)])  # first attempts still in kafka-python when the deadline passed
    refused = Batch([message(1)])
    spool = spool_with(tmp_path, 3, after0=landed, after1=refused)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher)  # type: ignore[arg-type]
    forwarder.start()
    wait_until(lambda: len(publisher.batches) == 1)
    assert publisher.values() == [b"value-2"], "records with an attempt in flight wait for its outcome"
    HandPublisher.answer(publisher.batches[0])
    HandPublisher.answer(landed)
    HandPublisher.answer(refused, failed=[0])
    wait_until(lambda: len(publisher.batches) == 2)
    assert publisher.values() == [b"value-2", b"value-1"]
    HandPublisher.answer(publisher.batches[1])
    wait_until(lambda: spool.acked_below == 3)
    forwarder.stop(1)
    spool.close()


def test_a_record_made_durable_while_the_forwarder_reads_is_not_left_behind(tmp_path):
    """The spool's sync can land between the forwarder's read and its 'nothing more' verdict."""
    spool = spool_with(tmp_path, 2)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher)  # type: ignore[arg-type]
    read, reads = spool.read, []

    def read_racing_a_sync(position, want):
        if reads:
            return read(position, want)
        reads.append(want)
        found = read(position, 1)  # value-1 was not durable yet when this read looked...
        forwarder._wake()  # ...and its sync completed before the read returned
        return found

    spool.read = read_racing_a_sync  # type: ignore[method-assign]
    forwarder.start()
    wait_until(lambda: len(publisher.batches) == 2)
    assert publisher.values() == [b"value-0", b"value-1"], "no later append is needed to send value-1"
    for batch in publisher.batches:
        HandPublisher.answer(batch)
    wait_until(lambda: spool.acked_below == 2)
    forwarder.stop(1)
    spool.close()


def test_batches_refused_together_start_one_round_of_retries_not_one_each(tmp_path):
    """An outage fails every outstanding batch at once; each must not double the pause."""
    spool = spool_with(tmp_path, 8)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher, batch_records=2, window=8)  # type: ignore[arg-type]
    forwarder.start()
    wait_until(lambda: len(publisher.batches) == 4)
    for batch in publisher.batches:
        HandPublisher.answer(batch, failed=[0, 1])
    assert forwarder._backoff == 0.1, "one round of retries, at the first pause"
    wait_until(lambda: len(publisher.batches) == 8)
    assert sorted(publisher.values()[8:]) == sorted(publisher.values()[:8])
    for batch in publisher.batches[4:]:
        HandPublisher.answer(batch)
    wait_until(lambda: spool.acked_below == 8)
    forwarder.stop(1)
    spool.close()


def test_records_read_while_stop_decides_are_left_in_the_spool_not_sent(tmp_path):
    """stop() records the acks it saw; a batch sent after that would be acked unrecorded."""
    spool = spool_with(tmp_path, 2)
    publisher = HandPublisher()
    forwarder = Forwarder(spool, publisher)  # type: ignore[arg-type]
    read, stopper = spool.read, []

    def read_while_stopping(position, want):
        found = read(position, want)
        if not stopper:
            stopping = threading.Thread(target=forwarder.stop, args=(1,))
            stopping.start()
            stopper.append(stopping)  # only once started: the test joins it as soon as it is listed
            wait_until(lambda: forwarder._draining)
        return found

    spool.read = read_while_stopping  # type: ignore[method-assign]
    forwarder.start()
    wait_until(lambda: bool(stopper))
    stopper[0].join(5)
    assert publisher.batches == [], "nothing goes out after stop() began"
    assert spool.acked_below == 0
    spool.close()


def test_first_attempts_are_let_go_once_answered_however_long_the_window_stays_full(tmp_path):
    """A broker stall: the window is full and each request past its deadline is spooled with a
    link to its first attempt.  Once the producer answered those, nothing may keep them."""
    tracemalloc.start()
    try:
        originals = [Batch([KafkaMessage("t", None, b"%06d" % n * 4000, [], "r")]) for n in range(300)]
        spool = spool_with(tmp_path, 304, **{f"after{4 + n}": batch for n, batch in enumerate(originals)})
        publisher = HandPublisher()
        forwarder = Forwarder(spool, publisher, batch_records=2, window=4)  # type: ignore[arg-type]
        forwarder.start()
        wait_until(lambda: len(publisher.batches) == 2)  # the window is full and the broker never answers
        for batch in originals:
            HandPublisher.answer(batch, failed=[0])  # the producer gave up on each first attempt
        del originals, batch
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes still held: the 7 MB of answered first attempts must be let go"

    def broker_back() -> bool:  # the failed first attempts go out from the spool, and are acked
        for waiting in [b for b in list(publisher.batches) if b.state != DONE]:
            HandPublisher.answer(waiting)
        return spool.acked_below == 304

    wait_until(broker_back)
    assert sorted(publisher.values()) == sorted(b"value-%d" % n for n in range(304))
    forwarder.stop(1)
    spool.close()
