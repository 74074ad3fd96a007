"""``webhookbus serve`` as a child process: for what a thread cannot show, SIGKILL and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from webhookbus.testing.broker import free_port, wait_for_port


@dataclass
class ServerProcess:
    """A config dict written to ``directory``, served on a fixed port across restarts.

    The spool lives in ``directory/spool`` unless the config names one, so a restart
    (after :meth:`kill` or :meth:`terminate`) resumes what the previous process left.
    stderr (the JSON log) is appended to ``directory/webhookbus.log``.
    """

    settings: dict[str, Any]
    bootstrap: str
    directory: Path
    port: int = field(default_factory=free_port)
    engine: str | None = None  # server.engine, unless the settings name one
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "webhookbus.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "webhookbus.log"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        settings = dict(self.settings)
        engine = {"engine": self.engine} if self.engine else {}
        settings["server"] = {"graceful_timeout": 5, **engine, **settings.get("server", {}), "host": "127.0.0.1",
                              "port": self.port}
        settings["kafka"] = {"bootstrap_servers": [self.bootstrap], **settings.get("kafka", {})}
        settings["spool"] = {"directory": str(self.directory / "spool"), **settings.get("spool", {})}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(settings))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webhookbus.cli", "serve", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            wait_for_port(self.port, timeout, process=self.process)
        except (TimeoutError, ChildProcessError):
            self.kill()
            raise RuntimeError(f"webhookbus did not start; see {self.log_path}") from None
        return self

    def signal_all(self, sig: signal.Signals) -> None:
        """``sig`` to the server and every process under it (workers, producer processes):
        SIGSTOP on the listener alone would leave its producer process sending."""
        assert self.process is not None
        pending, tree = [self.process.pid], []
        while pending:
            pid = pending.pop()
            tree.append(pid)
            try:
                pending += [int(child) for child in open(f"/proc/{pid}/task/{pid}/children").read().split()]
            except OSError:
                continue
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power (minus the disk)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the graceful shutdown; returns the exit status."""
        assert self.process is not None
        process, self.process = self.process, None
        status = terminate(process, timeout)
        if status is None:
            raise subprocess.TimeoutExpired(process.args, timeout)
        return status

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()
        self.process = None


def terminate(process: subprocess.Popen[Any], timeout: float = 30.0) -> int | None:
    """SIGTERM, then ``timeout`` seconds for a graceful exit; the exit status, or None when it
    had to be SIGKILLed.  Either way the process is gone (reaped) when this returns."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
