"""Hot reload: ``SIGHUP`` re-reads the config file and swaps a valid one in between requests.

The main use is rotating a secret without a restart.  Each serving process (every worker:
the parent of ``server.workers > 1`` only relays the signal) loads the file again, off the
event loop's thread, exactly as at start (same validation, same ``file:line`` errors as
``webhookbus check``), then swaps it into the application in one step on the loop's thread.
A request already past its provider lookup finishes with the verifier, secrets and routes
it started with.  An invalid file, or one that changes a setting only a restart can apply
(:func:`restart_only_changes`), is refused: the old config keeps serving and a log line says
why.  Each process writes its outcome next to the pid file, where ``webhookbus reload`` reads
it.  Works on any engine whose application runs on an asyncio loop in the main thread (where
signal handlers can be installed); elsewhere SIGHUP does nothing and a log line says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webhookbus.config import Config, ConfigError, Settings, load_config

if TYPE_CHECKING:
    from webhookbus.http.app import WebhookBus

log = logging.getLogger("webhookbus.reload")

# What a reload may change; anything else (a section or a server setting added later
# included) is fixed for the life of the process: sockets, processes, the producer, the spool.
RELOADABLE_SECTIONS = frozenset({"providers", "routes", "unrouted", "audit"})
RELOADABLE_SERVER = frozenset({"max_body_bytes", "max_in_flight", "client_cert_header", "public_url", "trusted_proxies"})

def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The settings ``new`` changes that this process cannot apply while it runs."""
    changed: list[str] = []
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if name == "server":
            changed += [f"server.{key}" for key in type(before).model_fields
                        if key not in RELOADABLE_SERVER and getattr(before, key) != getattr(after, key)]
        elif name not in RELOADABLE_SECTIONS and before != after:
            changed.append(name)
    if _reply_topics(old) != _reply_topics(new):  # each process's consumer is assigned its partitions at start
        changed.append("routes[].reply.topic")
    return changed


def _reply_topics(settings: Settings) -> set[str]:
    return {route.reply.topic for route in settings.routes if getattr(route, "reply", None) is not None}


class Reloader:
    """Reloads one application from the file its config came from; reloads never overlap."""

    def __init__(self, app: WebhookBus, path: str) -> None:
        self.app, self.path = app, path
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def signalled(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Load the file again and serve it from the next request on; False when refused."""
        async with self._lock:
            try:
                config = await asyncio.to_thread(load_config, self.path)
                changes = restart_only_changes(self.app.config.settings, config.settings)
                if changes:
                    raise ConfigError(f"{self.path}: only a restart can change {', '.join(changes)}; "
                                      "restore them or restart")
            except ConfigError as exc:
                return self._outcome("refused", str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must not end the process that keeps serving
                return self._outcome("refused", f"{type(exc).__name__} while loading {self.path}")
            self.app.reconfigure(config)
            return self._outcome("applied", None, config)

    def _outcome(self, result: str, reason: str | None, config: Config | None = None) -> bool:
        self.app.metrics.config_reload(config is not None)  # webhookbus_config_reloads_total{result}
        if config is None:
            log.error("config reload refused; the previous config keeps serving",
                      extra={"config": self.path, "reason": reason})
        else:
            log.info("config reloaded", extra={"config": self.path, "providers": sorted(config.providers),
                                               "routes": len(config.settings.routes)})
            for warning in config.warnings:
                log.warning("config", extra={"config": self.path, "warning": warning})
        write_outcome(self.app.config.settings, {"result": result, "reason": reason})
        return config is not None


def listen(app: WebhookBus) -> Callable[[], None]:
    """Reload ``app`` on SIGHUP from now on; returns what stops it.  A no-op for a config that
    came from no file (tests build them from text), or off the main thread (no signals there)."""
    path = app.config.source
    if not Path(path).is_file():
        return lambda: None
    loop = asyncio.get_running_loop()
    reloader = Reloader(app, path)
    try:
        loop.add_signal_handler(signal.SIGHUP, reloader.signalled)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        log.warning("SIGHUP will not reload the config here", extra={"reason": str(exc)})
        return lambda: None

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not SIG_DFL: a reload sent while flushing must not kill
        _outcome_file(app.config.settings).unlink(missing_ok=True)

    return stop


def relay(pids: Callable[[], Iterable[int | None]]) -> Callable[..., None]:
    """A SIGHUP handler for a parent that does not serve: passes the signal to its workers."""

    def handler(*_: object) -> None:
        for pid in pids():
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    return handler


# -- finding the running process: a pid file, and each process's last outcome, in the spool directory


def pid_file(settings: Settings) -> Path:
    return Path(settings.spool.directory) / "webhookbus.pid"


class PidFile:
    """``with PidFile(settings):`` around serving: the process ``webhookbus reload`` signals.

    Written before the address is bound, so a second instance that then fails to bind puts
    the first one's pid back when it exits."""

    def __init__(self, settings: Settings) -> None:
        self.path = pid_file(settings)
        self.previous: str | None = None

    def __enter__(self) -> PidFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.previous = self.path.read_text().strip()
            except FileNotFoundError:
                pass
            _write_atomically(self.path, f"{os.getpid()}\n")
        except OSError as exc:  # serving goes on (an unwritable spool is refused at startup, with its reason)
            log.warning("cannot write the pid file: webhookbus reload will not find this process",
                        extra={"path": str(self.path), "reason": exc.strerror})
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self.path.read_text().strip() != str(os.getpid()):
                return
            if self.previous and self.previous.isdigit() and _alive(int(self.previous)):
                _write_atomically(self.path, f"{self.previous}\n")
            else:
                self.path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _outcome_file(settings: Settings) -> Path:
    return Path(settings.spool.directory) / f"reload-{os.getpid()}.json"


def write_outcome(settings: Settings, outcome: dict[str, Any]) -> None:
    path = _outcome_file(settings)
    try:
        _write_atomically(path, json.dumps({**outcome, "pid": os.getpid(), "at": time.time()}))
    except OSError as exc:  # the reload itself is done; only `webhookbus reload` will not see it
        log.warning("cannot write the reload outcome", extra={"path": str(path), "reason": exc.strerror})


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


class NotRunning(Exception):
    """No running webhookbus process owns the pid file."""


def signal_reload(settings: Settings) -> int:
    """Send SIGHUP to the process in the pid file; its pid.  Refuses a stale file (no such
    process, or a process that is not webhookbus: pids are reused)."""
    path = pid_file(settings)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        raise NotRunning(f"no readable pid file at {path} (is webhookbus serving with this config, "
                         "from this directory?)") from None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise NotRunning(f"{path}: process {pid} is not running") from None
    except OSError:
        cmdline = b"webhookbus"  # no /proc to check against: trust the file
    if b"webhookbus" not in cmdline:
        raise NotRunning(f"{path}: process {pid} is not webhookbus (a stale pid file)")
    os.kill(pid, signal.SIGHUP)
    return pid


def outcomes_since(settings: Settings, since: float) -> list[dict[str, Any]]:
    """The reload outcomes processes wrote after ``since`` (one per serving process)."""
    found = []
    for path in Path(settings.spool.directory).glob("reload-*.json"):
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if outcome.get("at", 0) >= since:
            found.append(outcome)
    return sorted(found, key=lambda outcome: outcome["pid"])
