"""The server's own ceiling: an engine (hypercorn by default), configured and run exactly as
webhookbus runs it (the same settings, the same event loop, webhookbus.http.engines), serving
an ASGI app that reads the body and answers 200 doing nothing else.

    python bench/baselines/bare_asgi.py PORT [auto|asyncio|uvloop] [hypercorn|uvicorn]
"""

from __future__ import annotations

import asyncio
import signal
import sys

from webhookbus.config import ServerSettings
from webhookbus.http.engines import load
from webhookbus.http.server import bind, loop_factory


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def main(settings: ServerSettings) -> None:
    shutdown = asyncio.Event()  # SIGTERM/SIGINT: the engine's graceful shutdown
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, shutdown.set)
    await load(settings.engine_name).serve(app, settings, bind(settings), None, shutdown)  # type: ignore[arg-type]


if __name__ == "__main__":
    settings = ServerSettings(port=int(sys.argv[1]), loop=sys.argv[2] if len(sys.argv) > 2 else "auto",
                              engine=sys.argv[3] if len(sys.argv) > 3 else "hypercorn")
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(main(settings))
