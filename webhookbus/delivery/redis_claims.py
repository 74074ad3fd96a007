"""Claims shared through Redis, so a provider's retry that reaches another worker or instance
is still a duplicate (``dedup.store: redis://host:port/db``).

Each key, ``webhookbus:dedup:<provider>:<hex of dedup_key>``, is absent, ``a`` (accepted:
expires with the provider's window) or a claim token (in flight: expires after
``dedup.claim_ttl`` unless this process renews it, so a claim of a process that died is not
held for ever).  A request's keys are claimed by one script, atomically: if another token
holds any of them nothing is claimed and the request polls until they are settled (as
:class:`~webhookbus.delivery.claims.LocalClaims` waits on a future).  The scripts are
idempotent, so redis-py may repeat one once on a broken connection (a Redis restart).

Calls are pipelined: what the requests of one moment ask is sent as one batch on one
connection while the previous batch is answered, so under load a round trip serves many
requests (and the client holds one connection, not one per request in flight).  Every batch
has a deadline well inside ``publish_timeout``; a failed one marks the store down for a
second, so an outage costs each request nothing more than that second's checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from webhookbus.config import DedupSettings, Secret
from webhookbus.delivery.claims import Claim, DedupUnavailable, StillInFlight

log = logging.getLogger("webhookbus.dedup")

ACCEPTED = b"a"

# KEYS: the ids; ARGV: token, in-flight ms.  Returns 0 when another request holds a key
# (nothing claimed), else 1 (duplicate) or 0 (claimed) per key.  A key already holding
# this token is ours: the script ran before a connection broke and redis-py repeated it.
_CLAIM = """
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and value ~= 'a' and value ~= ARGV[1] then return 0 end
end
local states = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'a' then states[i] = 1
  else redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); states[i] = 0 end
end
return states
"""

# KEYS: the ids; ARGV: token, 1 (accepted) or 0, window ms.
_SETTLE = """
for _, key in ipairs(KEYS) do
  if ARGV[2] == '1' then redis.call('SET', key, 'a', 'PX', ARGV[3])
  elseif redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 1
"""

# KEYS: ids; ARGV: in-flight ms, then one token per key.
_RENEW = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 1
"""

DOWN_FOR = 1.0  # seconds a failed call marks the store down: requests do not queue on a dead address
BATCH = 128  # calls per pipeline: each batch must be answered within the deadline, however many wait


class _Script:
    def __init__(self, text: str) -> None:
        self.text, self.sha = text, hashlib.sha1(text.encode()).hexdigest().encode()


# Keys and arguments go as bytes: redis-py's encoding of str and int arguments was a third of
# the client's CPU per request in a profile.
_Call = tuple[_Script, list[bytes], list[bytes], "asyncio.Future[Any]"]


class RedisClaims:
    """One process's client of the shared store; ``deadline`` bounds every call (seconds)."""

    def __init__(self, settings: DedupSettings, password: Secret | None, deadline: float) -> None:
        self.deadline = deadline
        self.claim_ttl = settings.claim_ttl
        self.claim_ttl_ms = b"%d" % max(1, int(settings.claim_ttl * 1000))
        tls = {"ssl_ca_certs": settings.ca_certs} if settings.ca_certs else {}
        self.redis = Redis.from_url(
            settings.store, password=password.decode() if password else None, username=settings.username,
            socket_timeout=deadline, socket_connect_timeout=deadline,
            retry=Retry(NoBackoff(), 1),  # once, at once: a connection Redis closed is replaced
            **tls)
        self.where = settings.store.split("//", 1)[-1].split("?", 1)[0]  # host:port/db for log lines, no options
        self._claim, self._settle, self._renew = _Script(_CLAIM), _Script(_SETTLE), _Script(_RENEW)
        self._tokens = map(f"{secrets.token_hex(8)}-%x".encode().__mod__, itertools.count())
        self._held: dict[bytes, Claim] = {}  # token -> claim, renewed until settled
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._down_reason = ""
        self.unavailable = 0

    @staticmethod
    def _key(provider: str, key: bytes) -> bytes:
        return b"webhookbus:dedup:%s:%s" % (provider.encode(), key.hex().encode())

    def _submit(self, script: _Script, keys: list[bytes], args: list[bytes]) -> asyncio.Future[Any]:
        """Queue one script call for the next batch; its future gets the reply or :class:`DedupUnavailable`."""
        future = asyncio.get_running_loop().create_future()
        if time.monotonic() < self._down_until:
            self.unavailable += 1
            future.set_exception(DedupUnavailable(self._down_reason))
            return future
        self._queue.append((script, keys, args, future))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return future

    async def _send(self) -> None:
        """Send what is queued as one pipeline, wait for its replies, repeat while more is queued."""
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                try:
                    replies = await self._execute(batch)
                except DedupUnavailable as exc:
                    replies = [exc] * len(batch)
                for (_, _, _, future), reply in zip(batch, replies):
                    if future.done():
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply if isinstance(reply, DedupUnavailable)
                                             else DedupUnavailable(f"redis at {self.where}: {type(reply).__name__}"))
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        if time.monotonic() < self._down_until:  # it failed while this batch was queued
            self.unavailable += len(batch)
            raise DedupUnavailable(self._down_reason)
        try:
            async with asyncio.timeout(self.deadline):  # a request waits at most this batch's and its own
                replies = await self._pipeline(batch)
                if any(isinstance(reply, NoScriptError) for reply in replies):  # a restarted Redis forgot them
                    for script in {call[0] for call in batch}:
                        await self.redis.script_load(script.text)
                    replies = await self._pipeline(batch)  # the scripts are idempotent
        except (RedisError, OSError, TimeoutError) as exc:
            self.unavailable += len(batch)
            reason = f"redis at {self.where}: {type(exc).__name__}" + (f": {exc}" if str(exc) and "pass" not in str(exc).lower() else "")
            if not self._down_until:
                log.error("dedup store unavailable", extra={"reason": reason, "down_for_s": DOWN_FOR})
            self._down_until, self._down_reason = time.monotonic() + DOWN_FOR, reason
            raise DedupUnavailable(reason) from None
        if self._down_until:
            log.warning("dedup store reachable again", extra={"store": f"redis at {self.where}"})
            self._down_until = 0.0
        return replies

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, b"%d" % len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def claim(self, provider: str, keys: Sequence[bytes], window: float, wait: float | None) -> Claim:
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_held())
        token = next(self._tokens)
        names = [self._key(provider, key) for key in keys]
        give_up = None if wait is None else time.monotonic() + wait
        pause = 0.005
        while True:
            states = await self._submit(self._claim, names, [token, self.claim_ttl_ms])
            if states != 0:
                break
            if give_up is not None and time.monotonic() + pause > give_up:
                raise StillInFlight()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        duplicates = frozenset(key for key, state in zip(keys, states) if state == 1)
        claim = Claim([key for key in keys if key not in duplicates], duplicates, provider,
                      time.time() + window, token=token)
        if claim.held:
            self._held[token] = claim
        return claim

    def settle(self, claim: Claim, accepted: bool) -> asyncio.Future[None] | None:
        if self._held.pop(claim.token, None) is None:
            return None
        names = [self._key(claim.provider, key) for key in claim.held]
        window_ms = max(1, int((claim.expires - time.time()) * 1000))
        settled = self._submit(self._settle, names, [claim.token, b"1" if accepted else b"0", b"%d" % window_ms])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        settled.add_done_callback(partial(self._settled, accepted, done))
        return done

    @staticmethod
    def _settled(accepted: bool, done: asyncio.Future[None], settled: asyncio.Future[Any]) -> None:
        if (exc := settled.exception()) is not None:
            # Accepted: a retry within the claim's TTL still waits, then may publish a second copy.
            # Released: the claim expires after dedup.claim_ttl, delaying a retry until then.
            log.warning("dedup store: could not settle a claim",
                        extra={"reason": getattr(exc, "reason", type(exc).__name__), "accepted": accepted})
        if not done.done():
            done.set_result(None)

    async def _renew_held(self) -> None:
        """Keep the claims of requests still in flight (a late ack can take minutes) from expiring."""
        while True:
            await asyncio.sleep(self.claim_ttl / 3)
            held = list(self._held.values())
            if not held:
                continue
            names = [self._key(claim.provider, key) for claim in held for key in claim.held]
            tokens = [claim.token for claim in held for _ in claim.held]
            try:
                await self._submit(self._renew, names, [self.claim_ttl_ms, *tokens])
            except DedupUnavailable:
                pass  # logged once per outage; the next round tries again

    def remembered(self) -> None:
        return None

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        # Claims still held (an outcome nobody learnt) are left to expire after dedup.claim_ttl.
        if self._sender is not None:  # the settles still queued
            await asyncio.wait([self._sender], timeout=self.deadline * 4)
        await self.redis.aclose()
