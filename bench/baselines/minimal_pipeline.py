"""The fastest handler a user could write with webhookbus's own server and Kafka client: the
practical ceiling for what webhookbus adds (issue 12).

Per request: read the body, check the UIP HMAC-SHA256 (hex, constant-time compare), parse the
JSON for the event and its id, build a binary-mode CloudEvent record (``ce_*`` headers, the raw
body as value), ``produce()`` it with confluent-kafka (acks=all, idempotent, linger.ms 1, as
webhookbus configures it) and answer 200 once the broker acked it.  A poll thread resolves the
acks onto the loop with ``call_soon_threadsafe``.  No dedup, no spool, no log line, no limits.

    python bench/baselines/minimal_pipeline.py PORT BOOTSTRAP TOPIC [hypercorn|uvicorn]

The secret comes from ``UIP_WEBHOOK_SECRET``.  SIGTERM flushes the producer, then exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import threading

from confluent_kafka import Producer

SECRET = os.environ["UIP_WEBHOOK_SECRET"].encode()
PORT, BOOTSTRAP, TOPIC = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ENGINE = sys.argv[4] if len(sys.argv) > 4 else "hypercorn"

producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True, "linger.ms": 1,
                     "socket.nagle.disable": True})
loop: asyncio.AbstractEventLoop | None = None
stopping = threading.Event()


def poll() -> None:
    while not stopping.is_set():
        producer.poll(0.05)


def acked(future: asyncio.Future[None], error: object, _message: object) -> None:
    assert loop is not None
    loop.call_soon_threadsafe(_resolve, future, error)


def _resolve(future: asyncio.Future[None], error: object) -> None:
    if not future.done():
        future.set_exception(RuntimeError(str(error))) if error else future.set_result(None)


async def answer(send, status: int) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    global loop
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                threading.Thread(target=poll, daemon=True).start()
                await send({"type": "lifespan.startup.complete"})
            else:
                stopping.set()
                await asyncio.to_thread(producer.flush, 10)
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    signature = next((v for k, v in scope["headers"] if k == b"x-uip-signature"), b"")
    if not hmac.compare_digest(signature, hmac.new(SECRET, body, hashlib.sha256).hexdigest().encode()):
        return await answer(send, 401)
    event = json.loads(body)
    data = event.get("data") or {}
    headers = [("ce_specversion", b"1.0"), ("ce_id", str(data.get("audit_id", "")).encode()),
               ("ce_source", b"uip"), ("ce_type", f"uip.{event.get('event')}".encode()),
               ("content-type", b"application/json")]
    future = asyncio.get_running_loop().create_future()
    key = data.get("uip_id")
    producer.produce(TOPIC, body, key.encode() if isinstance(key, str) else None, headers=headers,
                     on_delivery=lambda error, message: acked(future, error, message))
    try:
        await future
    except RuntimeError:
        return await answer(send, 503)
    await answer(send, 200)


if __name__ == "__main__":
    if ENGINE == "uvicorn":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=PORT, loop="uvloop", http="httptools", ws="none",
                    log_level="warning", access_log=False)
    else:
        from hypercorn.asyncio import serve

        from webhookbus.config import ServerSettings
        from webhookbus.http.server import hypercorn_config, loop_factory

        settings = ServerSettings(port=PORT)
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            runner.run(serve(app, hypercorn_config(settings)))
