"""A full spool disk during a broker stall: 503 for new requests, everything accepted drains.

    .venv/bin/python bench/diskfull.py                    # a 1 MiB tmpfs, 150 req/s, 25 s stall

The issue 13 scenario on a real filesystem: ``spool.directory`` is a ``--disk-mb`` tmpfs
(mounted here: needs root; without it the run says so and exits 0, the deterministic ENOSPC
test in tests/test_reliability.py covers the same code), ``spool.max_bytes`` far above it,
so the disk fills before the spool's own cap.  The broker is frozen (SIGSTOP) while signed
requests arrive at ``--rate`` (``ack: spool``: every request writes to the spool, so the
writer takes each page the forwarder frees): they are answered 200 while the disk has room,
then 503 ``spool_unavailable``.  A ballast file then takes the last free bytes (a failed append
leaves a page or two, which the old code's cursor write could still get), the broker is
resumed and the load goes on ``--after``
seconds: everything answered 2xx must reach Kafka, the spool must empty (the disk frees as it
drains), and a second stall must be absorbed again (on the old code the forwarder died of ENOSPC, the
disk stayed full, and every later stall was answered 100% 503).  One line on stdout::

    disk_mb=1 accepted=N refused_503=M lost=0 spool_left_records=0 second_stall_accepted=S tracebacks=0 disk_error_lines=E

Exits 1 if anything was lost, the spool did not empty, the second stall accepted nothing,
or the log holds a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import Results, load, provider, stop
from webhookbus.delivery.spool import spool_status
from webhookbus.testing.broker import Broker, read_topic
from webhookbus.testing.process import ServerProcess

PATH = "/hooks/disk"
TOPIC = "diskfull.events"


def mount_tmpfs(directory: Path, megabytes: int) -> str | None:
    """None when mounted; else why not."""
    directory.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(directory)],
                         capture_output=True, text=True)
    return None if run.returncode == 0 else (run.stderr.strip() or f"mount exited {run.returncode}")


def fill(path: Path) -> int:
    """Take every byte left (the writer's failed appends leave a page or two): a disk truly full."""
    written = 0
    with open(path, "wb", buffering=0) as ballast:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    written += ballast.write(b"\0" * size)
            except OSError:
                continue
    return written


def to_forward(directory: Path) -> int:
    """Records in the spool not yet acked by the broker."""
    return sum(slot.records for slot in spool_status(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--disk-mb", type=int, default=1)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--stall", type=float, default=25.0)
    parser.add_argument("--after", type=float, default=0.0, help="seconds of load after the broker is back")
    parser.add_argument("--port", type=int, default=None, help="the listener's port (default: a free one)")
    parser.add_argument("--broker-port", type=int, default=None, help="the broker's port (default: a free one)")
    args = parser.parse_args(argv)

    def note(message: str) -> None:
        print(f"diskfull: {message}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="webhookbus-diskfull-"))
    spool = workdir / "spool"
    if (why := mount_tmpfs(spool, args.disk_mb)) is not None:
        note(f"cannot mount a tmpfs ({why}): skipped; tests/test_reliability.py injects ENOSPC instead")
        print(f"disk_mb={args.disk_mb} skipped=cannot_mount")
        return 0
    broker = (Broker(args.broker_port) if args.broker_port else Broker()).start()
    settings = {
        "kafka": {"publish_timeout": 2.5},
        "providers": {"disk": provider(PATH, ack="spool")},  # every request writes: the disk stays contended
        "routes": [{"topic": TOPIC}],
        "spool": {"directory": str(spool), "max_bytes": 1 << 30},
    }
    server = ServerProcess(settings, broker.bootstrap, workdir, **({"port": args.port} if args.port else {})).start()
    first, second = Results(), Results()
    try:
        for number, results in enumerate((first, second), 1):
            pid = broker.process.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGSTOP)
            note(f"stall {number}: broker frozen, {args.rate:g} req/s for {args.stall:g} s, "
                 f"then {args.after:g} s more with the broker back")

            prefix = f"d{int(time.time())}-{number}"
            asyncio.run(load(server.port, PATH, args.rate, args.stall, results, prefix))
            filled = fill(spool / f"ballast-{number}")
            os.kill(pid, signal.SIGCONT)
            note(f"stall {number}: the last {filled} bytes taken by a ballast file; broker resumed")
            if args.after:
                asyncio.run(load(server.port, PATH, args.rate, args.after, results, f"{prefix}-after"))
            note(f"stall {number}: {len(results.accepted)} answered 200, {results.errors} refused")
            deadline = time.monotonic() + 120
            while to_forward(spool) and time.monotonic() < deadline:
                time.sleep(0.5)
        accepted = first.accepted + second.accepted
        delivered = {json.loads(r.value)["id"] for r in read_topic(broker.bootstrap, TOPIC, len(accepted), timeout=120)}
        left = to_forward(spool)
        assert server.terminate() == 0
    finally:
        stop(server, broker)
        subprocess.run(["umount", str(spool)], capture_output=True)

    log = server.log_path.read_text()
    tracebacks = log.count("Traceback")
    disk_lines = sum(1 for line in log.splitlines() if "the disk refuses writes" in line and '"level": "error"' in line)
    lost = len(set(accepted) - delivered)
    print(f"disk_mb={args.disk_mb} accepted={len(accepted)} refused_503={first.count(500, 600) + second.count(500, 600)} "
          f"lost={lost} spool_left_records={left} second_stall_accepted={len(second.accepted)} "
          f"tracebacks={tracebacks} disk_error_lines={disk_lines}")
    failed = lost or left or not second.accepted or tracebacks
    if failed:
        note(f"webhookbus's log is kept in {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
