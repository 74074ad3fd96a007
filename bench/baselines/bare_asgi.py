"""The server's own ceiling: hypercorn, configured exactly as webhookbus configures it (the
same settings, the same event loop), serving an ASGI app that reads the body and answers
200 doing nothing else.

    python bench/baselines/bare_asgi.py PORT [auto|asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import sys

from hypercorn.asyncio import serve

from webhookbus.config import ServerSettings
from webhookbus.http.engines.hypercorn_engine import hypercorn_config
from webhookbus.http.server import loop_factory


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


if __name__ == "__main__":
    settings = ServerSettings(port=int(sys.argv[1]), loop=sys.argv[2] if len(sys.argv) > 2 else "auto")
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(serve(app, hypercorn_config(settings)))  # SIGTERM/SIGINT: hypercorn's graceful shutdown
