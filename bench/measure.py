"""What the harness reads off a run: load-generator figures, a process tree's CPU and peak
RSS from /proc, and how many records reached a topic."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from signed import event_ids

BENCH = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (workers of a multi-process server)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU consumed so far by these processes."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def peak_rss_mb(pids: list[int]) -> float:
    """Sum of each process's own peak resident set (VmHWM): an upper bound of the tree's peak."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


# -- the load generator ----------------------------------------------------------------

@dataclass
class WrkRun:
    """What one wrk run reports (bench/wrk/presigned.lua's ``WRK {json}`` line)."""

    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    next: int = 0  # the first request-file line this run did not use
    low: int = 0  # the lowest wrk thread's position: lines below low - connections were all answered
    late: int = 0  # fixed rate only: sends that missed their slot by over 1 ms
    late_ms_max: float = 0.0

    @property
    def accepted(self) -> int:
        return self.requests - self.status_errors

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(url: str, request_file: Path, seconds: float, connections: int, threads: int = 1, start: int = 0,
        rate: float | None = None) -> WrkRun:
    """Saturation (closed loop: ``connections`` clients, each sending as soon as answered) or,
    with ``rate``, a constant offered rate (open loop, bench/wrk/fixed_rate.lua).  Requests
    are the file's lines from ``start`` on."""
    script = "presigned.lua" if rate is None else "fixed_rate.lua"
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(BENCH / "wrk" / script), url, "--", str(request_file), str(start), str(threads)]
    if rate is not None:
        command.append(f"{rate / threads:.3f}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> WrkRun:
    line = next(line for line in output.splitlines() if line.startswith("WRK "))
    figures = json.loads(line[4:])
    return WrkRun(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        status_errors=figures["status_errors"],
        socket_errors=sum(figures[k] for k in ("connect", "read", "write", "timeout")),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        p999_ms=figures["p999_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        next=figures["next"],
        low=figures.get("low", figures["next"]),
        late=figures.get("late", 0),
        late_ms_max=figures.get("late_ms_max", 0.0),
    )


def surely_answered(runs: list[WrkRun], start: int, distinct: int, connections: int) -> int:
    """How many of a request file's ``distinct`` lines the runs (consecutive phases from line
    ``start``) certainly had answered.  When wrk stops, each connection may hold one line it
    took and never finished: in flight, or formatted and never sent; the next phase starts after
    it, so such a line is sent again only if the file wraps around to it.  Below a run's lowest
    thread position less ``connections`` every line was answered."""
    covered = bytearray(distinct)
    for run in runs:
        for line in range(start, max(start, run.low - connections)):
            covered[line % distinct] = 1
        start = run.next
    return sum(covered)


# -- the topic -----------------------------------------------------------------------

def delivered_events(bootstrap: str, topic: str, timeout: float = 60.0) -> tuple[int, int]:
    """Consume ``topic`` from the beginning to its end offsets: (records, distinct event ids)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions and time.monotonic() < deadline:
            consumer.topics()  # refreshes metadata
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return 0, 0
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(assigned)
        records, ids = 0, set()
        while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in assigned):
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records += len(batch)
                ids |= event_ids(record.value for record in batch)
        return records, len(ids)
    finally:
        consumer.close()
