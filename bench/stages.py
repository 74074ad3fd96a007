"""What each step of a request costs in the listener's process, without a server or a broker.

    .venv/bin/python bench/stages.py [--count 50000]

Times, one by one on a signed 600 B UIP request as ``bench/run.py`` sends them: reading the
request, verifying it, the CloudEvent, routing and the record, the dedup claim with its
settlement (the dedup file's write comes once per loop iteration, outside this figure), the
log line (and what it costs through a LogRecord), and the whole application called with a
publisher that acks at once.  In-process figures
are ~1.35x lower than what the same code costs under wrk (bench/README.md); use them to see
which step a change moved, and ``run.py`` for what a request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from signed import SECRET, SECRET_ENV, signed_requests  # noqa: E402

from webhookbus import log as webhookbus_log  # noqa: E402
from webhookbus.config import parse_config  # noqa: E402
from webhookbus.delivery.claims import LocalClaims  # noqa: E402
from webhookbus.delivery.dedup import dedup_key  # noqa: E402
from webhookbus.delivery.publish import BatchPublisher  # noqa: E402
from webhookbus.events import normalize  # noqa: E402
from webhookbus.http.app import WebhookBus  # noqa: E402
from webhookbus.routing import messages_for  # noqa: E402


class AcksAtOnce(BatchPublisher):
    """Every batch acked as it is sent: the application's own cost, without a client."""

    def _send(self, batch: Any) -> None:
        self._settle(batch, [], None)

    def _abandon(self, batch: Any) -> None:
        pass

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    async def close(self, timeout: float = 10.0) -> None:
        pass


def _scope(path: str, signature: str, length: int) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8080"), (b"content-length", str(length).encode()),
                        (b"x-uip-signature", signature.encode()), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080), "scheme": "http"}


def _done(coroutine: Any) -> Any:
    """The result of a coroutine that never suspends (none of the timed steps waits)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the step waited")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    count = parser.parse_args().count
    os.environ[SECRET_ENV] = SECRET  # the requests are signed with it
    workdir = Path(tempfile.mkdtemp(prefix="webhookbus-stages-"))
    config = parse_config(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 8080}, "kafka": {"bootstrap_servers": ["127.0.0.1:9092"]},
        "providers": {"uip": {"verifier": "uip", "path": "/webhooks/uip", "secrets": [f"env:{SECRET_ENV}"]}},
        "routes": [{"provider": "uip", "type": "uip.*", "topic": "bench"}], "unrouted": {"action": "drop"},
        "spool": {"directory": str(workdir / "spool")}}), "bench/stages.py")
    webhookbus_log.configure("INFO")
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # type: ignore[attr-defined]
    app = WebhookBus(config, AcksAtOnce(config.settings.kafka))
    app.delivery.start()
    provider = config.providers["uip"]
    requests = signed_requests(["/webhooks/uip"], 600, count + 1)
    first = requests[0]
    message = {"type": "http.request", "body": first.body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    def timed(name: str, step: Callable[[], object]) -> None:
        step()
        started = time.perf_counter()
        for _ in range(count):
            step()
        print(f"{name:52s} {(time.perf_counter() - started) / count * 1e6:6.2f} us")

    scope = _scope(first.path, first.signature, len(first.body))
    request = _done(app._read_request(provider, scope, receive))  # noqa: SLF001
    timed("reading the request (headers, URL, InboundRequest)", lambda: _done(app._read_request(provider, scope, receive)))  # noqa: SLF001
    timed("verifying it (uip v1: HMAC, JSON, fields)", lambda: provider.verifier.verify(request))
    event = provider.verifier.verify(request).events[0]  # type: ignore[union-attr]
    timed("the CloudEvent", lambda: normalize(request, "uip", event))
    cloud_event = normalize(request, "uip", event)
    timed("routing and the structured record", lambda: messages_for(config.settings, cloud_event))
    claims, ids = LocalClaims(workdir, 10 * count), iter(range(10 * count))

    def claim_and_settle() -> None:
        claims.settle(_done(claims.claim("uip", [dedup_key("uip", f"e{next(ids)}")], 3600, 5.0)), True)

    timed("the dedup claim, settled (its file write: per iteration)", claim_and_settle)
    fields = {"request_id": "7f3a", "path": "/webhooks/uip", "provider": "uip", "client": "127.0.0.1:5555",
              "secret_index": 0, "events": [cloud_event.id], "topics": ["bench"], "status": 200, "ms": 1.23}
    request_log = logging.getLogger("webhookbus.http")
    timed("the log line", lambda: webhookbus_log.log_fields(request_log, logging.INFO, "request", dict(fields)))
    timed("the log line through a LogRecord", lambda: request_log.info("request", extra=dict(fields)))

    statuses: dict[int, int] = {}

    async def answered(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    started = time.perf_counter()
    for signed in requests[1:]:
        body = {"type": "http.request", "body": signed.body, "more_body": False}
        await app(_scope(signed.path, signed.signature, len(signed.body)), lambda body=body: _ready(body), answered)
    print(f"{'the whole application, fresh events, acked at once':52s} "
          f"{(time.perf_counter() - started) / count * 1e6:6.2f} us")
    await app.delivery.close(1.0)
    if statuses != {200: count}:  # timing refusals would measure something else
        sys.exit(f"not every request was accepted: {statuses}")


async def _ready(message: dict[str, Any]) -> dict[str, Any]:
    return message


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
