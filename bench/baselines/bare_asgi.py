"""The server's own ceiling: hypercorn, configured exactly as webhookbus configures it,
serving an ASGI app that reads the body and answers 200 doing nothing else.

    python bench/baselines/bare_asgi.py PORT
"""

from __future__ import annotations

import asyncio
import sys

from hypercorn.asyncio import serve

from webhookbus.config import ServerSettings
from webhookbus.server import hypercorn_config


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    config = hypercorn_config(ServerSettings(port=int(sys.argv[1])))
    asyncio.run(serve(app, config))  # SIGTERM/SIGINT: hypercorn's own graceful shutdown
