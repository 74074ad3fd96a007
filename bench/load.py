"""Open-loop signed load for the reliability scenarios (stall.py, diskfull.py), and RSS.

Requests start at a fixed rate whatever the earlier ones are doing (as providers send),
over keep-alive connections reused the way an HTTP client's pool reuses them, so a
connection the listener closes while idle is seen as a provider sees it: no status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhookbus.testing.broker import Broker
    from webhookbus.testing.process import ServerProcess

SECRET = "load-secret"
OPTIONS = {"prefix": "sha256=", "event_field": "type", "id_field": "id"}


def provider(path: str, **settings: object) -> dict[str, object]:
    """A provider entry for the webhookbus config that :func:`load` signs for."""
    return {"verifier": "hmac", "path": path, "secrets": [f"literal:{SECRET}"], "options": OPTIONS, **settings}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop(server: ServerProcess, broker: Broker) -> None:
    """The scenarios' teardown: resume the broker if the run left it frozen (else the listener's
    graceful stop waits its whole budget for a broker that cannot answer), then stop both."""
    try:
        os.kill(broker.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    except (ProcessLookupError, AttributeError):
        pass
    server.stop()
    broker.stop()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Results:
    statuses: dict[int | None, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # the JSON "error" of 4xx/5xx answers
    accepted: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    # Why connections ended without a status: idle seconds of reused ones, and fresh ones.
    lost_on_reuse: list[float] = field(default_factory=list)
    lost_fresh: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def count(self, low: int, high: int) -> int:
        return sum(c for s, c in self.statuses.items() if s is not None and low <= s < high)


class Pool:
    def __init__(self, port: int, results: Results) -> None:
        self.port, self.results = port, results
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float] | None:
        """The most recently used idle connection the listener has not closed (as urllib3 checks)."""
        while self.idle:
            reader, writer, since = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer, since
            writer.close()
        return None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes] | None:
        """The status and body, or None when the connection closed without an answer."""
        reused = self._reusable()
        try:
            reader, writer = reused[:2] if reused else await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.results.lost_fresh += 1
            return None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nhost: load\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("closed without a status")
            status, length = int(status_line.split()[1]), 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            if reused:
                self.results.lost_on_reuse.append(time.monotonic() - reused[2])
            else:
                self.results.lost_fresh += 1
            return None
        self.idle.append((reader, writer, time.monotonic()))
        return status, answer


def signed(event_id: str, pad: int = 400) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"type": "user.updated", "id": event_id, "pad": "p" * pad}).encode()
    return body, {"content-type": "application/json",
                  "x-signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


async def load(port: int, path: str, rate: float, seconds: float, results: Results, prefix: str) -> None:
    """Request n starts at n / rate; returns once every request has ended."""
    pool = Pool(port, results)
    tasks: set[asyncio.Task[None]] = set()

    async def one(event_id: str) -> None:
        body, headers = signed(event_id)
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(pool.post(path, body, headers), 60)
        except TimeoutError:
            answer = None
        results.durations.append(time.monotonic() - started)
        status = answer[0] if answer else None
        results.statuses[status] = results.statuses.get(status, 0) + 1
        if status is not None and status < 300:
            results.accepted.append(event_id)
        elif answer is not None:
            try:
                error = json.loads(answer[1]).get("error", "?")
            except ValueError:
                error = "?"
            results.errors[error] = results.errors.get(error, 0) + 1

    started, n = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds:
        task = asyncio.create_task(one(f"{prefix}-{n}"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        await asyncio.sleep(max(0.0, n / rate - elapsed))
    if tasks:
        await asyncio.wait(tasks)
