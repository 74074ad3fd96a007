"""A webhookbus listener running in a background thread, on a config given as a dict."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from webhookbus.config import Config, parse_config
from webhookbus.http.server import serve
from webhookbus.testing.broker import free_port


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def post(port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         method: str = "POST", timeout: float = 15.0) -> Reply:
    """One HTTP request to 127.0.0.1:port with the body sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


@dataclass
class Listener:
    """``with Listener(config_dict, bootstrap) as listener: listener.post(...)``.

    Without a ``spool.directory`` in the config it gets a fresh temporary one, so its
    spool and remembered event ids never leak into another listener or test run.
    """

    settings: dict[str, Any]
    bootstrap: str
    port: int = field(default_factory=free_port)
    engine: str | None = None  # server.engine, unless the settings name one
    config: Config | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _spool: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Listener:
        settings = dict(self.settings)
        engine = {"engine": self.engine} if self.engine else {}
        settings["server"] = {**engine, **settings.get("server", {}), "host": "127.0.0.1", "port": self.port}
        kafka = settings.setdefault("kafka", {})
        settings["kafka"] = {"bootstrap_servers": [self.bootstrap], **kafka}
        if "directory" not in settings.get("spool", {}):
            self._spool = tempfile.TemporaryDirectory(prefix="webhookbus-spool-")
            settings["spool"] = {**settings.get("spool", {}), "directory": self._spool.name}
        self.config = parse_config(yaml.safe_dump(settings), "<test config>")
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                ready.set()
                assert self.config is not None
                await serve(self.config, self._stop)

            try:
                asyncio.run(main())
            except BaseException as exc:  # raised by __enter__ (the thread would only print it)
                failed.append(exc)

        self._thread = threading.Thread(target=run, name=f"listener-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        while not accepts(self.port):
            if not self._thread.is_alive():
                self._thread = None
                raise failed[0] if failed else RuntimeError("the listener stopped before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the listener does not listen on 127.0.0.1:{self.port} after 10 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            self._thread = None
        if self._spool is not None:
            self._spool.cleanup()
            self._spool = None

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "POST") -> Reply:
        return post(self.port, path, body, headers, method)
