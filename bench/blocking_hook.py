"""The latency a blocking hook decided on Kafka adds: HTTP in -> Kafka -> responder -> Kafka -> HTTP out.

    flock /work/bench.lock .venv/bin/python bench/blocking_hook.py [--rate 50] [--seconds 20]

Signed Authgear ``user.pre_create`` requests at a fixed rate (open loop: each request has a
slot on a schedule and its latency counts from that slot, so a stall is not hidden behind a
client that stopped sending), against one ``webhookbus serve`` on a fresh embedded broker, to
two Authgear providers in turn:

- **static**: its route has no ``reply``: the answer is the configured one, sent once the
  event is on Kafka (what every blocking hook cost before);
- **reply**: its route has ``reply``: the answer comes from ``python -m webhookbus.reply``
  running config/authgear_policy.py in its own process.

Interleaved, so whatever else runs on the machine slows both alike; the difference of the two
is what the hook adds.  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from webhookbus.testing import Broker, free_port
from webhookbus.testing.samples import SIGNERS

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"bench-authgear-secret"
PATH = "/webhooks/authgear"
STATIC_PATH = "/webhooks/authgear-static"
CLIENTS = 16  # keep-alive connections; more than the rate ever needs at once


def settings(port: int, bootstrap: str, topic: str, reply_topic: str | None, spool: str) -> dict[str, Any]:
    """Provider ``authgear`` answered from Kafka (with ``reply_topic``), ``authgear-static`` statically."""
    secrets = [f"literal:{SECRET.decode()}"]
    route: dict[str, Any] = {"provider": "authgear", "type": "authgear.user.*", "topic": topic}
    if reply_topic is not None:
        route["reply"] = {"topic": reply_topic, "timeout": 2.0}
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "kafka": {"bootstrap_servers": [bootstrap]},
        "providers": {"authgear": {"verifier": "authgear", "path": PATH, "secrets": secrets},
                      "authgear-static": {"verifier": "authgear", "path": STATIC_PATH, "secrets": secrets}},
        "routes": [route, {"provider": "authgear-static", "topic": f"{topic}-static"}],
        "spool": {"directory": spool},
    }


def request(index: int) -> tuple[bytes, dict[str, str]]:
    email = f"user{index}@{'blocked.test' if index % 10 == 0 else 'example.com'}"
    body = {"id": str(uuid.uuid4()), "seq": index, "type": "user.pre_create",
            "payload": {"user": {"id": f"u{index}", "standard_attributes": {"email": email}}},
            "context": {"timestamp": int(time.time()), "user_id": f"u{index}"}}
    signed = SIGNERS["authgear"]["user.pre_create"](None, SECRET, PATH, body)
    return signed.body, signed.headers


def load(port: int, rate: float, seconds: float) -> dict[str, dict[str, Any]]:
    """Per path, latencies in ms from each request's slot to its answer, and what the answers were;
    requests alternate between the two providers."""
    slots: queue.Queue[tuple[float, str, bytes, dict[str, str]] | None] = queue.Queue()
    latencies: dict[str, list[float]] = {PATH: [], STATIC_PATH: []}
    answers: dict[str, dict[str, int]] = {PATH: {}, STATIC_PATH: {}}
    late = [0]
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while (item := slots.get()) is not None:
            slot, path, body, headers = item
            now = time.perf_counter()
            if now < slot:
                time.sleep(slot - now)
            elif now - slot > 0.001:
                late[0] += 1
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            done = time.perf_counter()
            key = f"{response.status} " + (json.dumps(json.loads(answer), sort_keys=True)[:60] if answer else "")
            with lock:
                latencies[path].append((done - slot) * 1000)
                answers[path][key] = answers[path].get(key, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    count = int(rate * seconds)
    prepared = [request(index) for index in range(count)]
    start = time.perf_counter() + 0.2
    for index, (body, headers) in enumerate(prepared):  # queued in slot order: the next free client takes it
        slots.put((start + index / rate, (PATH, STATIC_PATH)[index % 2], body, headers))
    for _ in threads:
        slots.put(None)
    for thread in threads:
        thread.join()
    results = {}
    for path, measured in latencies.items():
        ordered = sorted(measured)
        results[path] = {"requests": len(ordered), "p50": statistics.median(ordered),
                         "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "max": ordered[-1],
                         "late_sends": late[0], "answers": answers[path]}
    return results


def run(bootstrap: str, rate: float, seconds: float) -> dict[str, dict[str, Any]]:
    port, topic = free_port(), f"bench-hooks-{uuid.uuid4().hex[:8]}"
    reply_topic = f"bench-replies-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "config.yaml"
        config.write_text(yaml.safe_dump(settings(port, bootstrap, topic, reply_topic, f"{work}/spool")))
        server = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "serve", "--config", str(config),
                                   "--log-level", "warning"], stderr=subprocess.DEVNULL)
        _create(bootstrap, topic)  # so the responder reads it from before the first event
        responder = subprocess.Popen([sys.executable, "-m", "webhookbus.reply",
                                      str(ROOT / "config/authgear_policy.py") + ":decide", "--topic", topic,
                                      "--bootstrap", bootstrap], stderr=subprocess.DEVNULL)
        try:
            _ready(port)
            time.sleep(2.0)  # the responder's assignment (it has no readiness probe)
            load(port, rate, 2.0)  # warm-up: connections, kafka-python's metadata, the code paths
            return load(port, rate, seconds)
        finally:
            for process in (responder, server):
                process.terminate()
                process.wait(30)


def _create(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=-1)])
    finally:
        admin.close()


def _ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("webhookbus never became ready")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    broker = Broker().start()
    try:
        measured = run(broker.bootstrap, args.rate, args.seconds)
    finally:
        broker.stop()
    print(f"Authgear user.pre_create at {args.rate:g} req/s for {args.seconds:g} s, open loop, interleaved, "
          f"embedded broker, {os.cpu_count()} cores")
    print(f"    {'answer':<20} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  answers")
    for name, path in (("static answer", STATIC_PATH), ("reply from Kafka", PATH)):
        result = measured[path]
        print(f"    {name:<20} {result['requests']:>8} {result['p50']:>8.2f} {result['p99']:>8.2f} "
              f"{result['max']:>8.2f}  {result['answers']}")
    static, replied = measured[STATIC_PATH], measured[PATH]
    print(f"late sends: {static['late_sends']}; added by the blocking hook: "
          f"p50 {replied['p50'] - static['p50']:.2f} ms, p99 {replied['p99'] - static['p99']:.2f} ms "
          "(target: p99 added < 25 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
