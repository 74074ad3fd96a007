"""A real Redis on loopback for tests: Debian's ``redis-server``, in memory, on a free port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from webhookbus.testing.broker import free_port, wait_for_port


@dataclass
class RedisServer:
    """``stop()``/``start()`` simulate an outage (no persistence: what it held is lost);
    ``pause()``/``resume()`` a Redis that accepts connections and never answers."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    password: str | None = None
    tls: tuple[str, str] | None = None  # (certificate, key) files: TLS only, on ``port``; clients need no certificate

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: make test installs it (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", tempfile.gettempdir()]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls[0],
                     "--tls-key-file", self.tls[1], "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, timeout, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGKILL: a Redis that died, not one that shut down."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
