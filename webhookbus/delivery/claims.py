"""Claims on provider event ids: the dedup rule of :mod:`.delivery`, behind one small interface.

A request claims the ids of its events before publishing them.  An id already accepted
within its window is a duplicate; an id another request holds makes this one wait for that
request's outcome; any other id is held by this request until it is settled: accepted (the
id is remembered for the provider's window) or released (a retry is a first attempt).

Two stores keep the claims: :class:`LocalClaims`, one process's memory plus the on-disk
:class:`~webhookbus.delivery.dedup.DedupStore` in its spool slot (the default), and
:class:`~webhookbus.delivery.redis_claims.RedisClaims`, shared by every worker and
instance that names the same Redis (``dedup.store: redis://...``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from webhookbus.delivery.dedup import DedupStore

if TYPE_CHECKING:
    from webhookbus.config import Config


class StillInFlight(Exception):
    """An earlier copy of the event is still being published after the caller's wait."""


class DedupUnavailable(Exception):
    """The shared store did not answer in time; ``reason`` is safe to log (no secret, no URL password)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Claim:
    """What one request holds: ``held`` until settled; ``duplicates`` were accepted already."""

    held: list[bytes]
    duplicates: frozenset[bytes]
    provider: str
    expires: float  # unix seconds: now + the provider's window
    token: bytes = b""  # the shared store's mark on the ids it holds for this request
    # The local store's requests waiting for this one's outcome (rare: a retry that came too soon).
    waiters: list[asyncio.Future[bool]] = field(default_factory=list, repr=False)


class Claims(Protocol):
    """A store of claims; every method runs on the event loop's thread."""

    unavailable: int  # calls that found the store unreachable or slow (a metric to export)

    async def claim(self, provider: str, keys: Sequence[bytes], window: float, wait: float | None) -> Claim:
        """Hold ``keys`` (none of them may be None) for one request, after waiting (at most ``wait``
        seconds, None: as long as it takes) for another request holding any of them; raises
        :class:`StillInFlight` past ``wait`` and :class:`DedupUnavailable` when the store cannot tell."""
        ...

    def settle(self, claim: Claim, accepted: bool) -> Awaitable[None] | None:
        """Remember the held ids until ``claim.expires`` (accepted) or let them go.  Never raises:
        an accepted event whose id cannot be remembered costs at most a second copy of a retry.
        A store that confirms later returns what to await for it (never raising either)."""
        ...

    def remembered(self) -> int | None:
        """How many ids this process knows without asking anybody (None: it does not keep them)."""
        ...

    async def close(self) -> None:
        """After the publisher closed, so a late ack still settles its claim."""
        ...


class LocalClaims:
    """One process's claims: the requests holding ids in flight, the spool slot's file for the accepted."""

    unavailable = 0

    def __init__(self, slot: Path, max_entries: int) -> None:
        self.store = DedupStore(slot, max_entries)
        self._in_flight: dict[bytes, Claim] = {}

    async def claim(self, provider: str, keys: Sequence[bytes], window: float, wait: float | None) -> Claim:
        in_flight = self._in_flight
        while holders := {in_flight[key] for key in keys if key in in_flight}:
            loop = asyncio.get_running_loop()
            outcomes = [loop.create_future() for _ in holders]
            for holder, outcome in zip(holders, outcomes):
                holder.waiters.append(outcome)
            done, _ = await asyncio.wait(outcomes, timeout=wait)
            if not done:
                raise StillInFlight()
        # No await from here on: nobody else can claim these keys in between.
        now = time.time()
        seen = self.store.seen
        duplicates = frozenset(key for key in keys if seen(key, now))
        claim = Claim([key for key in keys if key not in duplicates], duplicates, provider, now + window)
        for key in claim.held:
            in_flight[key] = claim
        return claim

    def settle(self, claim: Claim, accepted: bool) -> Awaitable[None] | None:
        written = self.store.mark(claim.held, claim.expires) if accepted else None
        in_flight = self._in_flight
        for key in claim.held:
            if in_flight.get(key) is claim:
                del in_flight[key]
        for outcome in claim.waiters:
            if not outcome.done():
                outcome.set_result(accepted)
        return written

    def remembered(self) -> int:
        return len(self.store)

    async def close(self) -> None:
        self.store.close()


def open_claims(config: Config, slot: Path) -> Claims:
    """The store ``dedup.store`` names: ``local`` (this process's spool slot) or a Redis URL."""
    dedup = config.settings.dedup
    if dedup.store == "local":
        return LocalClaims(slot, config.settings.spool.dedup_max_entries)
    from webhookbus.delivery.redis_claims import RedisClaims

    publish_timeout = min(config.publish_timeout(name) for name in config.providers) if config.providers else 1.0
    return RedisClaims(dedup, config.dedup_password, deadline=min(dedup.timeout, publish_timeout / 4))
