"""Running the application: sockets, the engine, workers, signals.

The sockets are bound here, whatever engine serves (:mod:`webhookbus.http.engines`), so the
address-in-use error, ``server.workers`` and SIGTERM behave the same on every engine.  On
the shutdown trigger the engine stops accepting, gives in-flight requests
``graceful_timeout`` seconds, then runs the lifespan shutdown, which flushes the Kafka
producer.

With ``server.workers`` above one, :func:`run` forks that many worker processes, each a
complete single-process server (its own event loop, producer, spool slot) listening on
its own ``SO_REUSEPORT`` socket, so the kernel spreads connections evenly over them (one
shared socket would let whichever worker wakes first accept a whole burst of keep-alive
connections).  The parent only holds the address, relays the shutdown signal and SIGHUP
(a config reload, :mod:`webhookbus.http.reload`) and waits for the workers to finish gracefully.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import wait

from webhookbus import metrics
from webhookbus.activity import Snapshot, merged
from webhookbus.http.admin import AdminServer
from webhookbus.http import reload
from webhookbus.http.app import WebhookBus
from webhookbus.config import Config, ServerSettings
from webhookbus.http.engines import StartupFailed, load
from webhookbus.http.tls import server_context

__all__ = ["ListenError", "StartupFailed", "admin_server", "bind", "close", "run", "serve"]

log = logging.getLogger("webhookbus.server")


class ListenError(Exception):
    """The listener's address cannot be bound: in use (another instance?), not permitted, or not local."""


_BIND_ERRORS = {
    errno.EADDRINUSE: "address already in use (another make run? set server.port or WEBHOOKBUS_SERVER__PORT)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; set server.port or WEBHOOKBUS_SERVER__PORT)",
    errno.EADDRNOTAVAIL: "address not available on this machine (set server.host or WEBHOOKBUS_SERVER__HOST)",
}


def bind(server: ServerSettings, reuse_port: bool = False, port: int | None = None) -> list[socket.socket]:
    """The configured address, bound (not yet listening): before anything else starts, so an
    address in use is a :class:`ListenError` naming it, not a traceback after the producer and
    a spool slot were started.  Without ``reuse_port``, another instance's reuse-port listener
    on the address counts as in use too."""
    port = server.port if port is None else port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            server.host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        host = f"[{server.host}]" if ":" in server.host else server.host
        raise ListenError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise _listen_error(exc, server.host, port, "server") from None
    return [sock]


def _listen_error(exc: OSError, host: str, port: int, section: str) -> Exception:
    if exc.errno not in _BIND_ERRORS:
        return exc
    host = f"[{host}]" if ":" in host else host
    return ListenError(f"cannot listen on {host}:{port}: {_BIND_ERRORS[exc.errno]}".replace("server.", f"{section}.")
                       .replace("WEBHOOKBUS_SERVER__", f"WEBHOOKBUS_{section.upper()}__"))


def admin_server(config: Config, registry: metrics.CollectorRegistry,
                 activity: Callable[[], Snapshot]) -> AdminServer | None:
    """The admin listener, bound (:class:`ListenError` when it cannot be), or None without ``admin:``."""
    admin = config.settings.admin
    if admin is None:
        return None
    try:
        return AdminServer(config, registry, activity)
    except OSError as exc:
        raise _listen_error(exc, admin.host, admin.port, "admin") from None


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


async def serve(config: Config, shutdown: asyncio.Event | None = None, sockets: list[socket.socket] | None = None,
                worker: int = 0, with_admin: bool = True) -> None:
    """Serve until ``shutdown`` is set or, when none is given, until SIGTERM/SIGINT.

    ``sockets`` are already bound ones to accept on (a forked worker's, or ``dev``'s); by
    default the configured address is bound here, before the application starts
    (:class:`ListenError` when it cannot be).  ``worker`` is the process's index among
    ``server.workers``.  The admin listener runs here too, unless ``with_admin`` is false
    (a forked worker: the parent runs it for all of them).  :class:`StartupFailed` when the
    lifespan startup fails.
    """
    server = config.settings.server
    own = sockets is None
    if sockets is None:
        sockets = bind(server)
    admin = None
    try:
        app = WebhookBus(config, worker=worker)
        if with_admin:
            admin = admin_server(config, metrics.scrape_registry(config, app.metrics), app.activity.snapshot)
        if admin is not None:
            admin.start()
        if shutdown is None:
            shutdown = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, shutdown.set)
        tls = server_context(server.tls) if server.tls is not None else None
        await load(server.engine_name).serve(app, server, sockets, tls, shutdown)
    finally:
        if admin is not None:
            admin.stop()
        if own:  # the engine closes them once it served; not when the startup failed
            close(sockets)


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT in ``server.workers`` processes; the exit status.

    Workers are forked after the config is loaded (plugins imported, secrets resolved) and
    before any thread or event loop exists.  A worker that dies unexpectedly stops the
    others and the exit status is 1, so a supervisor restarts the whole service rather
    than it running on with less capacity than configured.
    """
    server = config.settings.server
    # What is loaded by now (modules, plugins, the config) lives as long as the process: frozen,
    # full collections stop rescanning it (pauses of 30-50 ms, every few seconds under load in
    # bench/), and forked workers keep those pages shared instead of copying them.
    gc.collect()
    gc.freeze()
    # Until each process's application listens for SIGHUP (a reload), the default action would end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if server.workers == 1:
        with asyncio.Runner(loop_factory=loop_factory(server)) as runner:
            runner.run(serve(config))
        return 0
    # Without SO_REUSEPORT first: another instance's reuse-port workers would otherwise share the address.
    close(bind(server))
    # Every worker's metrics in files of this run's own directory, which the parent's admin listener reads.
    shared = metrics.shared_run_directory()
    metrics.share_between_processes(shared)
    registry = metrics.scrape_registry(config)
    try:
        return _run_workers(config, registry)
    finally:
        metrics.remove_directory(shared)


def _run_workers(config: Config, registry: metrics.CollectorRegistry) -> int:
    server = config.settings.server
    keep = config.settings.admin.recent_rejections if config.settings.admin else 0
    activity = partial(merged, metrics.shared_directory() or "", keep)
    admin = admin_server(config, registry, activity)  # bound before the workers start, served once they run
    # Bound, never listening: holds the address (and resolves port 0) without taking connections.
    held = bind(server, reuse_port=True)
    port = held[0].getsockname()[1]
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_worker, args=(config, port, index, admin),
                                   name=f"webhookbus-worker-{index}")
                 for index in range(server.workers)]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload.relay(lambda: [p.pid for p in processes]))
        if admin is not None:
            admin.start()
        while not stopping and all(process.exitcode is None for process in processes):
            wait([process.sentinel for process in processes], timeout=0.5)
        if not stopping:
            log.error("a worker exited unexpectedly; stopping the others",
                      extra={"exitcodes": [process.exitcode for process in processes]})
        for process in processes:
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
        grace = server.graceful_timeout * 2 + 10  # in-flight requests, then the producer's flush
        for process in processes:
            process.join(grace)
            if process.exitcode is None:
                process.kill()
                process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close(held)
        if admin is not None:
            admin.stop()
    return 0 if stopping and all(process.exitcode == 0 for process in processes) else 1


def loop_factory(server: ServerSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when configured, or with ``loop: auto`` when installed; None: asyncio's.

    The process is bound by one core's worth of Python (the GIL): uvloop's event loop and
    socket writes in C leave more of it to requests (bench/README.md has the figures).
    """
    if server.loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # loop: uvloop was checked when the config was loaded
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _worker(config: Config, port: int, index: int, admin: AdminServer | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # serve() installs its own handlers on the loop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if admin is not None:  # the parent's: a worker must not hold its address
        admin.server.server_close()
    sockets = bind(config.settings.server, reuse_port=True, port=port)
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.settings.server)) as runner:
            runner.run(serve(config, sockets=sockets, worker=index, with_admin=False))
    finally:
        logging.shutdown()  # multiprocessing ends the worker with os._exit: write the batched log lines
