"""What counting costs one request, in microseconds of CPU, without the noise of a load test.

Calls exactly what the request path calls for an accepted webhook (in-flight up and down,
the answer with its latency, the published record's topic, the publish latency, the
provider's activity), in a loop, three ways: no ``admin:`` (nothing counted), one worker
(prometheus-client's in-process values) and forked workers (its multiprocess mode: values in
memory-mapped files).  ``make bench`` compares whole requests with and without metrics
(the ``webhookbus-metrics`` rows); this says how much of a request's CPU is counting.

    .venv/bin/python bench/metrics_cost.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhookbus import metrics  # noqa: E402
from webhookbus.activity import Activity  # noqa: E402
from webhookbus.delivery.records import KafkaMessage  # noqa: E402

MESSAGES = [KafkaMessage("identity.events", b"key", b"{}", [], "route")]
FIELDS = {"request_id": "x", "path": "/webhooks/uip", "provider": "uip", "client": "127.0.0.1:5000"}


def per_request_us(counters: metrics.Metrics, activity: Activity, requests: int) -> float:
    async def loop() -> float:
        started = time.process_time()
        for _ in range(requests):
            counters.request_started()
            counters.published(MESSAGES, [])
            counters.publish_took(0.002)
            counters.request_ended()
            counters.answered("uip", 200, 0.003)
            activity.answered("uip", 200, FIELDS)
        return (time.process_time() - started) / requests * 1e6

    return asyncio.run(loop())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    rows = [("no admin: (metrics off)", per_request_us(metrics.Metrics(enabled=False), Activity(0, False), args.requests)),
            ("one worker (in-process values)", per_request_us(metrics.Metrics(), Activity(50), args.requests))]
    shared = metrics.shared_run_directory()
    try:
        metrics.share_between_processes(shared)
        rows.append((f"workers > 1 (mmap files in {Path(shared).parent})",
                     per_request_us(metrics.Metrics(), Activity(50, shared=shared), args.requests)))
    finally:
        metrics.remove_directory(shared)
    print(f"CPU per accepted request spent counting, {args.requests} requests:")
    for name, cost in rows:
        print(f"    {name:<40} {cost:6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
