"""The admin listener: the status page (``/``), ``/metrics``, ``/healthz``, ``/readyz``, off the public port.

It is a WSGI app on prometheus-client's threading WSGI server, not a second app on the
engine that serves webhooks, because:

- with ``server.workers`` above one it runs in the parent, which has no event loop and
  takes no webhooks; there it reads every worker's metrics (prometheus-client's
  multiprocess files), so one scrape sees them all whichever worker is busy or gone;
- it serves the same whatever engine serves the public port, and needs nothing from it;
- a scrape (parsing the multiprocess files, reading the spool's slots) runs on its own
  thread: it never holds a request's event loop for longer than a GIL switch.

With one worker it runs as a thread of that process, reading the process's own registry.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from webhookbus.activity import Snapshot
from webhookbus.config import Config
from webhookbus.delivery.publish import broker_reachable
from webhookbus.http.status import render
from webhookbus.metrics import samples

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a log line
        pass


class _Server(ThreadingWSGIServer):
    allow_reuse_address = True  # a restart must not wait for the last scrape's TIME_WAIT


def _json(start_response: StartResponse, status: str, payload: dict[str, Any],
          headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


class AdminApp:
    """The WSGI application; ``registry`` is what a scrape reads (:func:`webhookbus.metrics.scrape_registry`),
    ``activity`` gives the providers' recent activity (:mod:`webhookbus.activity`)."""

    def __init__(self, config: Config, registry: CollectorRegistry, activity: Callable[[], Snapshot]) -> None:
        self.config = config
        self.registry = registry
        self.activity = activity
        self._metrics = make_wsgi_app(registry)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path not in ("/", "/healthz", "/readyz"):
            return _json(start_response, "404 Not Found", {"error": "not_found", "detail": "no such admin page"})
        if method not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "method_not_allowed", "detail": "use GET"},
                         [("Allow", "GET, HEAD")])
        if path == "/":
            page = render(self.config, self.registry, self.activity())
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page))),
                                      ("Cache-Control", "no-store")])
            return [page]
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        ok, reason = self.ready()
        if ok:
            return _json(start_response, "200 OK", {"status": "ready"})
        return _json(start_response, "503 Service Unavailable", {"error": "not_ready", "detail": reason})

    def ready(self) -> tuple[bool, str]:
        """Every process's producer connected, and a bootstrap server accepting connections."""
        connected = [value for _, value in samples(self.registry, "webhookbus_producer_connected")]
        if not connected or min(connected) < 1:
            return False, "producer not connected yet"
        return broker_reachable(self.config.settings.kafka.bootstrap_servers)


class AdminServer:
    """Bound and listening once built (so a taken port fails before anything starts); serves once started."""

    def __init__(self, config: Config, registry: CollectorRegistry, activity: Callable[[], Snapshot]) -> None:
        admin = config.settings.admin
        assert admin is not None, "no admin section"
        family = socket.AF_INET6 if ":" in admin.host else socket.AF_INET
        server_class = type("AdminWSGIServer", (_Server,), {"address_family": family})
        self.app = AdminApp(config, registry, activity)
        self.server = server_class((admin.host, admin.port), _Quiet)
        self.server.set_app(self.app)
        self.port: int = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> AdminServer:
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhookbus-admin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server.server_close()
