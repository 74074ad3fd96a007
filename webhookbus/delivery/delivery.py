"""When a verified request may be answered 2xx: dedup, then the provider's acknowledgement mode.

- ``ack: broker``: 2xx once the broker acked every routed message.  Past the deadline the
  messages go to the spool (2xx once synced) or, with ``on_broker_timeout: reject``, the
  answer is 503 + Retry-After and the provider retries.
- ``ack: spool``: 2xx once the messages are synced to the spool; the forwarder ships them.

An event id the provider gave is remembered only after its messages were durably
accepted, and a second request with the same id waits for the first: it is answered 2xx
without publishing if the first succeeded, and tried afresh if the first failed.  A
request answered 503 at the deadline (``on_broker_timeout: reject``, or a full spool) may
have left its messages with the producer: they can still land, so the id stays claimed
until they are answered for, and remembered if they land.  Meanwhile a retry waits at most ``publish_timeout`` and is answered 503 again
rather than sending a second copy.  The claims live in this process (:class:`LocalClaims`) or
in a Redis shared by every instance (:mod:`.redis_claims`); when Redis cannot answer, the
provider's ``on_dedup_unavailable`` publishes without dedup (at least once) or answers 503.
README, "What a 2xx means", states the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from webhookbus.config import Config, Provider
from webhookbus.delivery.claims import Claim, Claims, DedupUnavailable, StillInFlight, open_claims
from webhookbus.delivery.dedup import dedup_key
from webhookbus.events import CloudEvent
from webhookbus.metrics import Metrics
from webhookbus.delivery.forward import Forwarder
from webhookbus.delivery.publish import PublishFailed, Publisher, open_publisher
from webhookbus.delivery.records import Batch, size_bound
from webhookbus.routing import KafkaMessage, messages_for
from webhookbus.delivery.spool import Spool, SpoolError, SpoolFull, slots_with_records

log = logging.getLogger("webhookbus.delivery")


class Refused(Exception):
    """Not accepted this time: answer 503 with Retry-After so the provider tries again."""

    def __init__(self, error: str, detail: str, retry_after: int, in_flight: Batch | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.retry_after = 503, error, detail, retry_after
        self.in_flight = in_flight  # the messages given up at the deadline, which may still land


class EventTooLarge(Exception):
    """A record would exceed the producer's ``max_request_size``: Kafka would refuse it on
    every attempt, so the request is refused (413) instead of spooled for ever."""


# kafka-python's default max_request_size, for when kafka.producer does not set it.
KAFKA_MAX_REQUEST_SIZE = 1_048_576


class Delivery:
    """Owns the publisher, the spool with its forwarder, and the claims on event ids of one process.

    ``start`` and ``close`` run at lifespan startup and shutdown; ``accept`` is awaited by
    request handlers, all on the event loop's thread.
    """

    def __init__(self, config: Config, publisher: Publisher | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.publisher = publisher or open_publisher(config.settings.kafka, metrics)
        self.metrics = self.publisher.metrics if metrics is None else metrics
        self.spool: Spool | None = None
        self.claims: Claims | None = None
        self.forwarder: Forwarder | None = None
        self.adopted: list[Forwarder] = []
        self._max_record = config.settings.kafka.producer.get("max_request_size", KAFKA_MAX_REQUEST_SIZE)

    def start(self) -> None:
        """Open the spool (resuming what a previous run left) and start the threads."""
        spool = self.settings.spool
        self.spool = Spool(spool.directory, spool.max_bytes, spool.segment_bytes)
        self.claims = open_claims(self.config, self.spool.slot)
        self.spool.start()
        self.publisher.start()
        window = min(2000, max(1, self.settings.kafka.max_in_flight_records // 2))
        forwarder = partial(Forwarder, publisher=self.publisher, batch_records=min(500, window), window=window)
        self.forwarder = forwarder(self.spool)
        self.forwarder.start()
        log.info("spool open", extra={"slot": str(self.spool.slot), "records_to_forward": self.spool.depth(),
                                      "event_ids_remembered": self.claims.remembered(),
                                      "dedup_store": "local" if self.settings.dedup.store == "local" else "redis"})
        for slot in slots_with_records(spool.directory):
            if slot == self.spool.slot:
                continue
            try:
                orphan = Spool(spool.directory, spool.max_bytes, spool.segment_bytes, slot=slot)
            except SpoolError:
                continue  # its process is alive (or took it first)
            log.info("spool: forwarding what another process left", extra={"slot": str(slot), "records": orphan.depth()})
            self.adopted.append(forwarder(orphan, until_drained=True))
            self.adopted[-1].start()

    async def close(self, timeout: float) -> None:
        """Sync the spool, let the forwarder finish what it sent, then flush the producer.

        All within ``timeout`` (``graceful_timeout``): each step gets what the earlier ones
        left, so a broker that is down costs a SIGTERM one ``graceful_timeout``, not one per
        step.  What is not acked by then stays in the spool for the next run.
        """
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.spool is not None:
            await self.spool.stop_writing()
        forwarders = [f for f in [self.forwarder, *self.adopted] if f is not None]
        for forwarder in forwarders:
            await asyncio.to_thread(forwarder.stop, left())
        await self.publisher.close(left())
        if self.claims is not None:  # after the publisher: a late ack still marks its event
            await self.claims.close()
        for forwarder in forwarders:  # unlock last: another process may take the slots over
            forwarder.spool.close()
        if self.spool is not None:
            log.info("spool closed", extra={"slot": str(self.spool.slot), "records_to_forward": self.spool.depth()})

    async def accept(self, provider: Provider, given_ids: Sequence[str | None], events: Sequence[CloudEvent],
                     fields: dict[str, Any], config: Config | None = None) -> None:
        """Return when the events may be answered 2xx; raise :class:`Refused` when not.

        ``config``: the one the request started under, whose routes it is published by (a reload
        may have swapped ``self.config`` since); by default the current one.
        """
        settings = (config or self.config).settings
        window = provider.settings.dedup_window
        keys = [dedup_key(provider.name, event.id) if window and given is not None else None
                for given, event in zip(given_ids, events)]
        claim = await self._claim(provider, [key for key in keys if key is not None], window, fields)
        accepted, late, remembered = False, None, None
        try:
            fresh = [i for i, key in enumerate(keys) if claim is None or key not in claim.duplicates]
            if len(fresh) < len(events):
                fields["duplicates"] = [events[i].id for i in range(len(events)) if i not in fresh]
                self.metrics.duplicates_suppressed(provider.name, len(events) - len(fresh))
                if not fresh:
                    return
            messages = [message for i in fresh for message in messages_for(settings, events[i])]
            if any(size_bound(message) > self._max_record for message in messages):
                raise EventTooLarge(f"the event's Kafka record would exceed max_request_size ({self._max_record} bytes)")
            fields["topics"] = sorted({m.topic for m in messages})
            if not messages:
                fields["unrouted"] = True
            await self._store(provider, messages, fields)
            accepted = True
        except Refused as refused:
            late = refused.in_flight
            raise
        finally:
            if claim is not None and claim.held:
                assert self.claims is not None
                settle = partial(self.claims.settle, claim)
                if late is None:
                    remembered = settle(accepted)
                else:
                    self.publisher.when_done(late, lambda batch: settle(not batch.failed))
        if remembered is not None:  # accepted: remembered before the 2xx, as the local store writes it
            await remembered

    def _publish_timeout(self, provider: Provider) -> float:
        """From the provider object, which a request holds on to: a reload may have removed it from the config."""
        return provider.settings.publish_timeout or self.settings.kafka.publish_timeout

    def reconfigure(self, config: Config) -> None:
        """Route new requests by ``config``; the spool, claims and producer stay (a restart changes them)."""
        self.config, self.settings = config, config.settings

    async def _claim(self, provider: Provider, keys: list[bytes], window: float, fields: dict[str, Any]) -> Claim | None:
        """Claim the event ids, waiting while a request for the same event is in flight, to learn its outcome.

        With ``ack: broker`` an earlier copy may be in flight long after its own deadline (see
        the module docstring): give up at ours and answer 503 rather than send a second copy.
        None: nothing to claim, or a shared store that cannot tell and a provider that publishes anyway.
        """
        assert self.claims is not None, "Delivery.start() was not called"
        if not keys:
            return None
        timeout = self._publish_timeout(provider)
        try:
            return await self.claims.claim(provider.name, keys, window,
                                           wait=timeout if provider.settings.ack == "broker" else None)
        except StillInFlight:
            raise Refused("broker_unavailable", "an earlier copy of this event is not acknowledged yet",
                          max(1, round(timeout))) from None
        except DedupUnavailable as exc:
            fields["dedup_unavailable"] = exc.reason
            self.metrics.dedup_unavailable(provider.name, provider.settings.on_dedup_unavailable)
            if provider.settings.on_dedup_unavailable == "reject":
                raise Refused("dedup_unavailable", "the dedup store does not answer", max(1, round(timeout))) from None
            return None

    async def _store(self, provider: Provider, messages: list[KafkaMessage], fields: dict[str, Any]) -> None:
        if not messages:
            return
        settings = provider.settings
        if settings.ack == "spool":
            await self._spool(messages, None)
            fields["spooled"] = True
            return
        timeout = self._publish_timeout(provider)
        try:
            await self.publisher.publish(messages, timeout)
        except PublishFailed as exc:
            if settings.on_broker_timeout == "reject":
                raise Refused("broker_unavailable", exc.reason, max(1, round(timeout)), exc.in_flight) from None
            try:
                await self._spool(messages, exc.in_flight)
            except Refused as refused:  # the spool is full: the messages given up on may still land
                refused.in_flight = exc.in_flight
                raise
            fields["spooled"] = exc.reason

    async def _spool(self, messages: list[KafkaMessage], after: Batch | None) -> None:
        assert self.spool is not None
        try:
            await self.spool.append(messages, after)
        except SpoolFull:
            raise Refused("spool_full", "the local spool is full", 5) from None
        except SpoolError as exc:
            raise Refused("spool_unavailable", exc.reason, 5) from None
