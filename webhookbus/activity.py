"""What each provider did lately, for the status page: last accepted and refused times, recent refusals,
and the providers a process serves (which a reload changes in the workers, not in the parent).

Counters live in :mod:`webhookbus.metrics`; these are the things Prometheus does not keep
(a time per provider, the last refusals with their reason and client address).  A refusal
is recorded with the error code and reason the caller was answered and the client's
address: never a body or a header value.

Each process keeps its own :class:`Activity` in plain dicts and a bounded deque (a request
pays a dict store).  With forked workers each one also writes it, at most once a second
when it changed, to ``activity_<pid>.json`` in the run's shared metrics directory, and
:func:`merged` combines every worker's file for the parent's status page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from webhookbus.config import Config

log = logging.getLogger("webhookbus.activity")

FLUSH_EVERY = 1.0  # seconds: how stale a worker's part of the status page may be


@dataclass
class Snapshot:
    """One process's activity, or several merged."""

    last_accepted: dict[str, float] = field(default_factory=dict)
    last_refused: dict[str, float] = field(default_factory=dict)
    refusals: list[dict[str, Any]] = field(default_factory=list)  # newest first
    providers: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> path, verifier

    def merge(self, other: Snapshot, keep: int) -> None:
        self.providers.update(other.providers)
        for mine, theirs in ((self.last_accepted, other.last_accepted), (self.last_refused, other.last_refused)):
            for provider, when in theirs.items():
                mine[provider] = max(when, mine.get(provider, 0.0))
        self.refusals = sorted(self.refusals + other.refusals, key=lambda r: r["time"], reverse=True)[:keep]


class Activity:
    """Recorded on the event loop's thread; ``shared``: the directory to publish it to (workers)."""

    def __init__(self, keep: int, enabled: bool = True, shared: str | None = None) -> None:
        self.enabled = enabled
        self.keep = keep
        self.last_accepted: dict[str, float] = {}
        self.last_refused: dict[str, float] = {}
        self.refusals: deque[dict[str, Any]] = deque(maxlen=keep)
        self._path = Path(shared) / f"activity_{os.getpid()}.json" if shared else None
        self._flush_scheduled = False
        self.providers: dict[str, dict[str, str]] = {}

    def serving(self, config: Config) -> None:
        """The providers served from now on (at start and after a reload): written at once."""
        self.providers = {p.name: {"path": p.path, "verifier": p.settings.verifier} for p in config.providers.values()}
        if self.enabled:
            self.flush()

    def answered(self, provider: str | None, status: int, fields: dict[str, Any]) -> None:
        if not self.enabled or provider is None:
            return
        now = time.time()
        if status < 400:
            self.last_accepted[provider] = now
        else:
            self.last_refused[provider] = now
            if self.keep:
                self.refusals.append({"time": now, "provider": provider, "status": status,
                                      "error": fields.get("error"), "reason": fields.get("reason"),
                                      "client": fields.get("client")})
        if self._path is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self.last_accepted), dict(self.last_refused), list(reversed(self.refusals)),
                        dict(self.providers))

    def flush(self) -> None:
        """Write this process's part for the parent (small, into the page cache: no fsync)."""
        self._flush_scheduled = False
        if self._path is None:
            return
        snapshot = self.snapshot()
        temporary = self._path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(asdict(snapshot)))
            os.replace(temporary, self._path)
        except OSError as exc:  # the status page goes stale; requests are not affected
            log.warning("cannot write activity for the status page", extra={"reason": exc.strerror})


def merged(directory: str | os.PathLike[str], keep: int) -> Snapshot:
    """Every worker's last written activity in ``directory``, combined."""
    total = Snapshot()
    for path in Path(directory).glob("activity_*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced, or the worker died mid-write: next refresh
            continue
        total.merge(Snapshot(**data), keep)
    return total
