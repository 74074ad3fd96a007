"""A long broker stall under steady load: RSS of the listener and its producer process, and
whether every request ended with a status.

    .venv/bin/python bench/stall.py                      # 200 req/s, broker SIGSTOPped for 180 s
    .venv/bin/python bench/stall.py --stall 600          # the issue's 10 minutes

Signed webhooks arrive at ``--rate`` per second (open loop, keep-alive connections reused
as an HTTP client pool does) at a provider with ``ack: broker`` and the spool fallback, so
during the stall each request waits ``publish_timeout`` and is then spooled.  After a warm-up
the broker is frozen (SIGSTOP) for ``--stall`` seconds, then resumed; the run waits until
every event answered 2xx is on Kafka.  Every ``--every`` seconds it prints both RSS values
to stderr; at the end one line on stdout::

    stall_s=S requests=N ok=O status_5xx=F no_status=C over_deadline=D lost=L \
        listener_rss_mb=A->B producer_rss_mb=A->B growth_after_60s_mb_per_min=G/H

``over_deadline``: requests that took longer than ``publish_timeout`` + 2 s; ``no_status``:
connections closed without an answer; RSS ``A->B``: at the end of the first minute of the
stall and at its end; the growth is the least-squares slope of the samples after that first
minute (listener/producer).  Exits 1 if anything was lost, a request ended without a status,
or either process grew by more than ``--max-growth-mb`` after the first minute.

Why minutes are enough: memory that grows "per request while the broker is away" grows
linearly from the first seconds, so a bounded design must be flat once its bounds
(the forwarder's window, the producer's in-flight records, the dedup store's entries:
``spool.dedup_max_entries`` is set to 10,000 here, ~100 B each, so that bound is reached
in the first minute as the default 500,000 would be in the first 40) are full, which at 200 req/s takes well under a minute.  A
180 s stall is 36,000 requests past that point, a 10-minute one 120,000: a leak of a few
hundred bytes per request shows as a slope either way (the issue's was ~3.9 KB/request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from load import Results, children, load, provider, rss_mb, stop
from webhookbus.testing.broker import Broker, read_topic
from webhookbus.testing.process import ServerProcess

PATH = "/hooks/stall"
TOPIC = "stall.events"
PUBLISH_TIMEOUT = 2.5


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_v = sum(v for _, v in samples) / len(samples)
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var if var else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--stall", type=float, default=180.0, help="seconds the broker stays frozen")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--max-growth-mb", type=float, default=8.0, help="allowed RSS growth after the first minute")
    parser.add_argument("--kafka-client", default="kafka-python", choices=["auto", "kafka-python", "confluent"],
                        help="kafka.client (kafka-python runs in a producer process of its own, confluent in the listener)")
    parser.add_argument("--port", type=int, default=None, help="the listener's port (default: a free one)")
    parser.add_argument("--broker-port", type=int, default=None, help="the broker's port (default: a free one)")
    args = parser.parse_args(argv)

    def note(message: str) -> None:
        print(f"stall: {message}", file=sys.stderr, flush=True)

    broker = (Broker(args.broker_port) if args.broker_port else Broker()).start()
    workdir = Path(tempfile.mkdtemp(prefix="webhookbus-stall-"))
    settings = {
        "server": {"graceful_timeout": 5},
        "kafka": {"publish_timeout": PUBLISH_TIMEOUT, "client": args.kafka_client},
        "providers": {"stall": provider(PATH)},
        "routes": [{"topic": TOPIC}],
        # The dedup store grows by design (~100 B per event id) up to this bound, which the
        # first minute reaches at 200 req/s; past it the oldest ids go (see the docstring).
        "spool": {"max_bytes": 2 << 30, "dedup_max_entries": 10_000},
    }
    server = ServerProcess(settings, broker.bootstrap, workdir, **({"port": args.port} if args.port else {})).start()
    assert server.process is not None
    listener = server.process.pid
    results = Results()
    run = f"s{int(time.time())}"
    samples: list[tuple[float, float, float]] = []
    try:
        asyncio.run(load(server.port, PATH, args.rate, args.warmup, results, f"{run}-warm"))
        producer = next(iter(children(listener)), None)  # none: the client runs in the listener
        note(f"warm-up done: {results.requests} requests; SIGSTOP the broker for {args.stall:g} s")
        os.kill(broker.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        stall_started = time.monotonic()

        async def sample() -> None:
            while True:
                t = time.monotonic() - stall_started
                listener_mb, producer_mb = rss_mb(listener), rss_mb(producer) if producer else 0.0
                samples.append((t, listener_mb, producer_mb))
                note(f"t={t:5.0f}s listener_rss_mb={listener_mb:6.1f} producer_rss_mb={producer_mb:6.1f} "
                     f"requests={results.requests}")
                await asyncio.sleep(args.every)

        async def stalled() -> None:
            sampler = asyncio.create_task(sample())
            try:
                await load(server.port, PATH, args.rate, args.stall, results, run)
            finally:
                sampler.cancel()

        asyncio.run(stalled())
        os.kill(broker.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        note(f"broker resumed; {len(results.accepted)} events answered 2xx, reading them back")
        delivered = {json.loads(r.value)["id"] for r in read_topic(broker.bootstrap, TOPIC, len(results.accepted),
                                                                   timeout=300)}
        assert server.terminate() == 0
    finally:
        stop(server, broker)

    lost = len(set(results.accepted) - delivered)
    if results.lost_on_reuse or results.lost_fresh:
        idle = results.lost_on_reuse
        note(f"no status: {len(idle)} on reused keep-alive connections (idle {min(idle, default=0):.2f}-"
             f"{max(idle, default=0):.2f} s before), {results.lost_fresh} on fresh ones")
    after = [s for s in samples if s[0] >= 60] or samples[-1:]
    first_minute = after[0]
    last = samples[-1]
    listener_slope = slope_per_minute([(t, a) for t, a, _ in after])
    producer_slope = slope_per_minute([(t, b) for t, _, b in after])
    no_status = results.statuses.get(None, 0)
    over_deadline = sum(d > PUBLISH_TIMEOUT + 2 for d in results.durations)
    print(f"stall_s={args.stall:g} requests={results.requests} ok={results.count(200, 300)} "
          f"status_5xx={results.count(500, 600)} no_status={no_status} over_deadline={over_deadline} "
          f"slowest_s={max(results.durations):.1f} lost={lost} "
          f"listener_rss_mb={first_minute[1]:.0f}->{last[1]:.0f} producer_rss_mb={first_minute[2]:.0f}->{last[2]:.0f} "
          f"growth_after_60s_mb_per_min={listener_slope:.2f}/{producer_slope:.2f}")
    grew = max(last[1] - first_minute[1], last[2] - first_minute[2])
    failed = lost or no_status or grew > args.max_growth_mb
    if failed:
        note(f"webhookbus's log and spool are kept in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
