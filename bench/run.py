"""One benchmark run: every contender under the same load, side by side, then ratios.

    .venv/bin/python bench/run.py [--seconds 10] [--only webhookbus,express] [--no-scaling]

For each contender a fresh local broker is started, then: a warm-up, wrk at saturation
(``--connections`` closed-loop clients replaying pre-signed requests), wrk again at a
constant offered rate (open loop; half webhookbus's saturation rate unless ``--rate``),
a graceful stop (SIGTERM), and a count of the distinct events on the contender's topic,
which must cover every 2xx it answered.  Figures are printed and written to
bench/results/latest.json.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import yaml  # noqa: E402

from measure import WrkRun, cpu_seconds, delivered_events, peak_rss_mb, process_tree, surely_answered, wrk  # noqa: E402
from signed import SECRET, SECRET_ENV, signed_requests, write_wrk_file  # noqa: E402
from webhookbus.config import parse_config  # noqa: E402
from webhookbus.delivery.options import kafka_client  # noqa: E402
from webhookbus.http import engines  # noqa: E402
from webhookbus.testing.broker import Broker, free_port, wait_for_port  # noqa: E402
from webhookbus.testing.listener import post  # noqa: E402
from webhookbus.testing.redis import RedisServer  # noqa: E402

EXPRESS = BENCH / "baselines" / "express"
MINIMAL = "minimal pipeline, same server and client"
CLIENT, ENGINE = kafka_client("auto"), engines.resolve("auto")  # what webhookbus's auto settings use here
CLIENTS = [c for c in ("confluent", "kafka-python") if c == "kafka-python" or CLIENT == "confluent"]
ENGINES = [e for e in engines.ENGINES if not engines.missing(e)]
MAX_FILE_BYTES = 256 * 1024 * 1024  # request file per contender; past its end wrk wraps around
# The compiled build (`make compiled`: setup.py, mypyc), what the webhookbus rows run when it is there;
# the source (this interpreter's editable install) is the webhookbus-source row.
COMPILED_PYTHON = BENCH.parent / ".venv-compiled" / "bin" / "python"


@dataclass
class Server:
    """How to start one HTTP contender, and where it takes webhooks."""

    name: str
    command: list[str]
    env: dict[str, str]
    paths: list[str]
    topic: str | None  # None: the contender does not publish (bare server)
    ready_path: str | None = None  # GET it until 200 (webhookbus: /readyz); else an open port suffices
    also_pids: list[int] = field(default_factory=list)  # processes whose CPU and RSS count as the contender's (Redis)
    tls: bool = False  # wrk speaks https to it


@dataclass
class Result:
    name: str
    note: str = ""
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    errors: int = 0
    accepted: int = 0
    delivered: int | None = None  # distinct events on the topic
    lost: int = 0
    peak_rss_mb: float = 0.0
    cpu_per_1k: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rate: float | None = args.rate
        self._files: dict[tuple[tuple[str, ...], int], tuple[Path, int]] = {}
        self.redis: RedisServer | None = None

    def fresh_redis(self) -> RedisServer:
        """An empty redis-server for the Redis dedup store's row: the request file repeats every
        round, and a Redis that remembered the last round's ids would answer them as duplicates."""
        if self.redis is not None:
            self.redis.stop()
        self.redis = RedisServer().start()
        return self.redis

    def request_file(self, paths: list[str], size: int) -> tuple[Path, int]:
        """Enough distinct signed requests for one contender's phases, and how many there are."""
        key = (tuple(paths), size)
        if key not in self._files:
            args = self.args
            needed = int(args.max_rps * (args.warmup + args.seconds) + (self.rate or args.max_rps / 2) * args.seconds)
            count = max(1000, min(needed, MAX_FILE_BYTES // (size + 150)))
            target = self.workdir / f"requests-{len(self._files)}.txt"
            self._files[key] = (write_wrk_file(signed_requests(paths, size, count), target), count)
        return self._files[key]

    def webhookbus(self, name: str, bootstrap: str, topic: str, port: int, *, workers: int = 1, providers: int = 1,
                   ack: str = "broker", loop: str = "auto", metrics: bool = False,
                   redis: RedisServer | None = None, client: str = "auto", engine: str = "auto",
                   tls: dict[str, str] | None = None, python: str | None = None) -> Server:
        """``tls``: ``server.tls`` settings (bench/tls_cost.py); ``python``: the interpreter whose
        webhookbus runs (default: ``--python``, the compiled build's when it is built)."""
        paths = ["/webhooks/uip"] if providers == 1 else [f"/webhooks/uip-{i}" for i in range(providers)]
        names = [path.rsplit("/", 1)[1] for path in paths]
        settings: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": port, "workers": workers, "loop": loop, "engine": engine,
                       **({"tls": tls} if tls else {})},
            "kafka": {"bootstrap_servers": [bootstrap], "client": client},
            "providers": {n: {"verifier": "uip", "path": p, "secrets": [f"env:{SECRET_ENV}"], "ack": ack}
                          for n, p in zip(names, paths)},
            "routes": [{"provider": n, "type": f"{n}.*", "topic": topic} for n in names],
            "unrouted": {"action": "drop"},
            "spool": {"directory": str(self.workdir / f"spool-{uuid.uuid4().hex[:8]}")},
            "dedup": {"store": redis.url if redis is not None else "local"},
        }
        if metrics:  # the admin listener: every request counted (nothing scrapes it during the run)
            settings["admin"] = {"host": "127.0.0.1", "port": free_port()}
        config = self.workdir / f"{uuid.uuid4().hex[:8]}.yaml"
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        os.environ.setdefault(SECRET_ENV, SECRET)
        parse_config(config.read_text(), str(config))  # a config error fails here, loudly
        python = python or getattr(self.args, "python", sys.executable)
        # PYTHONSAFEPATH: the working directory (this checkout) must not shadow the compiled build.
        # The readiness probe speaks plain HTTP: over TLS the warm-up waits instead.
        return Server(name, [python, "-m", "webhookbus.cli", "serve", "--config", str(config)],
                      {SECRET_ENV: SECRET, "PYTHONSAFEPATH": "1"}, paths, topic,
                      ready_path=None if tls else "/readyz", tls=bool(tls),
                      also_pids=[redis.process.pid] if redis is not None and redis.process is not None else [])

    def measure_http(self, server: Server, port: int, broker: Broker, *, size: int = 600,
                     fixed_rate: bool = True) -> Result:
        """Start the server, load it, stop it gracefully, then check the topic."""
        args = self.args
        log = (self.workdir / f"{uuid.uuid4().hex[:8]}.log").open("wb")
        process = subprocess.Popen(server.command, env={**os.environ, **server.env}, stdout=log,
                                   stderr=subprocess.STDOUT)
        result = Result(server.name)
        runs: list[WrkRun] = []
        requests, distinct = self.request_file(server.paths, size)
        url = f"{'https' if server.tls else 'http'}://127.0.0.1:{port}"

        def load(seconds: float, rate: float | None = None) -> WrkRun:
            start = runs[-1].next if runs else 0
            runs.append(wrk(url, requests, seconds, args.connections, args.threads, start=start, rate=rate))
            return runs[-1]

        try:
            wait_for_port(port, timeout=30)
            if server.ready_path:
                _wait_ready(port, server.ready_path)
            load(args.warmup)
            tree = process_tree(process.pid) + server.also_pids
            cpu_before = cpu_seconds(tree)
            saturation = load(args.seconds)
            cpu_used = cpu_seconds(tree) - cpu_before
            result.rps = saturation.rps
            result.cpu_per_1k = cpu_used / saturation.requests * 1000 if saturation.requests else None
            result.extra["saturation"] = asdict(saturation)
            if fixed_rate:
                if self.rate is None:
                    self.rate = round(saturation.rps / 2)
                fixed = load(args.seconds, rate=self.rate)
                result.p50_ms, result.p99_ms, result.p999_ms = fixed.p50_ms, fixed.p99_ms, fixed.p999_ms
                result.extra["fixed_rate"] = asdict(fixed) | {"offered": round(self.rate * fixed.seconds)}
            result.peak_rss_mb = peak_rss_mb(process_tree(process.pid) + server.also_pids)
        finally:
            _stop(process)
            log.close()
        result.accepted = sum(run.accepted for run in runs)
        result.errors = sum(run.errors for run in runs)
        if server.topic is not None:
            records, result.delivered = delivered_events(broker.bootstrap, server.topic)
            wrapped = runs[-1].next > distinct  # some events were sent twice: dedup may answer 2xx for a copy
            # A wrapped run's 2xx count includes copies: count the lines certainly answered instead
            # (not all of them: a line wrk took and never sent at a phase's end is no loss).
            expected = (surely_answered(runs, 0, distinct, args.connections) - result.errors if wrapped
                        else result.accepted)
            result.lost = max(0, expected - result.delivered)
            result.extra.update(records=records, distinct_requests=distinct, wrapped=wrapped)
        return result

    def broker_ceiling(self, in_flight: int) -> Result:
        label = f"{in_flight} in flight" if in_flight else "no in-flight cap"
        result = Result(f"kafka-python alone, {label}", note="broker ceiling: same records, no HTTP")
        with _broker() as broker:
            topic = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
            command = [sys.executable, str(BENCH / "broker_ceiling.py"), broker.bootstrap, topic,
                       f"{self.args.seconds:g}", str(in_flight)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            peak = cpu = 0.0
            while process.poll() is None:  # sample while it lives: /proc forgets an exited process
                peak, cpu = max(peak, peak_rss_mb([process.pid])), max(cpu, cpu_seconds([process.pid]))
                time.sleep(0.2)
            figures = json.loads(process.stdout.read())  # type: ignore[union-attr]
            result.rps = figures["acked"] / figures["seconds"]
            result.accepted, result.errors, result.peak_rss_mb = figures["acked"], figures["failed"], peak
            result.cpu_per_1k = cpu / figures["acked"] * 1000 if figures["acked"] else None
            records, distinct = delivered_events(broker.bootstrap, topic)
            result.delivered = records  # the same 1000 records cycle: count records, not ids
            result.lost = max(0, result.accepted - records)
        return result

    def contenders(self, reverse: bool = False) -> list[Result]:
        """Every contender once; ``reverse`` runs them in the opposite order (rounds alternate,
        so a machine slowing down or speeding up during a run favours no contender)."""
        results: list[Result] = []
        wanted = set(self.args.only.split(",")) if self.args.only else None
        cores = os.cpu_count() or 1
        steps: list[Callable[[], None]] = []

        def http(key: str, note: str, make: Callable[[str, str, int], Server]) -> None:
            if wanted is not None and key not in wanted:
                return

            def step() -> None:
                port = free_port()
                with _broker() as broker:
                    server = make(broker.bootstrap, f"bench-{key}-{uuid.uuid4().hex[:8]}", port)
                    print(f"  {server.name} ...", flush=True)
                    result = self.measure_http(server, port, broker)
                result.note = note
                results.append(result)
                _print_row(result)

            steps.append(step)

        def ceiling(in_flight: int) -> None:
            print("  broker ceiling ...", flush=True)
            results.append(self.broker_ceiling(in_flight))
            _print_row(results[-1])

        build = "compiled" if self.args.python == str(COMPILED_PYTHON) else self.args.python
        http("webhookbus", f"uip verifier; acks=all, idempotent; 2xx after the broker's ack; auto: {ENGINE} + {CLIENT}; "
                           f"{build}",
             lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=broker", bootstrap, topic, port))
        if self.args.python != sys.executable:
            http("webhookbus-source", f"the row above on the source (pure Python, {sys.executable})",
                 lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=broker, source", bootstrap,
                                                                topic, port, python=sys.executable))
        for engine, client in ((e, c) for e in ENGINES for c in CLIENTS if (e, c) != (ENGINE, CLIENT)):
            http(f"webhookbus-{engine}-{client}", f"server.engine {engine}, kafka.client {client}",
                 lambda bootstrap, topic, port, engine=engine, client=client: self.webhookbus(
                     f"webhookbus, 1 worker, ack=broker, {engine}, {client}", bootstrap, topic, port, engine=engine,
                     client=client))
        http("webhookbus-redis", "dedup.store: redis:// (Debian's redis-server on loopback; its CPU and RSS counted)",
             lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=broker, redis", bootstrap, topic,
                                                            port, redis=self.fresh_redis()))
        if self.args.spool:
            http("webhookbus-spool", "2xx after the local fsync; Kafka after",
                 lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=spool", bootstrap, topic,
                                                                port, ack="spool"))
        http("webhookbus-metrics", "admin: metrics on (the row above has none)",
             lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=broker, metrics", bootstrap,
                                                            topic, port, metrics=True))
        http("webhookbus-asyncio", "server.loop: asyncio",
             lambda bootstrap, topic, port: self.webhookbus("webhookbus, 1 worker, ack=broker, asyncio", bootstrap,
                                                            topic, port, loop="asyncio"))
        http("webhookbus-workers", "server.workers = cores",
             lambda bootstrap, topic, port: self.webhookbus(f"webhookbus, {cores} workers, ack=broker", bootstrap,
                                                            topic, port, workers=cores))
        http("webhookbus-workers-metrics", "server.workers = cores, admin: metrics on (multiprocess files)",
             lambda bootstrap, topic, port: self.webhookbus(f"webhookbus, {cores} workers, ack=broker, metrics",
                                                            bootstrap, topic, port, workers=cores, metrics=True))
        http("express", "acks=-1, NOT idempotent (the test broker rejects kafkajs's InitProducerId)",
             lambda bootstrap, topic, port: Server(
                 "Express + kafkajs", ["node", str(EXPRESS / "server.js")],
                 {"PORT": str(port), "TOPIC": topic, "KAFKA_BROKERS": bootstrap, SECRET_ENV: SECRET},
                 ["/webhook"], topic))
        if CLIENT == "confluent":
            http("minimal", f"HMAC, CloudEvent record, confluent produce, await the ack, on {ENGINE}; nothing else",
                 lambda bootstrap, topic, port: Server(
                     MINIMAL, [sys.executable, str(BENCH / "baselines" / "minimal_pipeline.py"), str(port), bootstrap,
                               topic, ENGINE],
                     {SECRET_ENV: SECRET}, ["/webhooks/uip"], topic))
        for loop in ("auto", "asyncio"):
            http("bare" if loop == "auto" else "bare-asyncio", "server ceiling: no verification, no Kafka",
                 lambda bootstrap, topic, port, loop=loop: Server(
                     "bare hypercorn, answers 200" + ("" if loop == "auto" else ", asyncio"),
                     [sys.executable, str(BENCH / "baselines" / "bare_asgi.py"), str(port), loop],
                     {}, ["/webhooks/uip"], None))
        if ENGINE == "uvicorn":  # the fast engine's own ceiling, with the limits webhookbus adds to it
            http("bare-uvicorn", "server ceiling: no verification, no Kafka",
                 lambda bootstrap, topic, port: Server(
                     "bare uvicorn, answers 200",
                     [sys.executable, str(BENCH / "baselines" / "bare_asgi.py"), str(port), "auto", "uvicorn"],
                     {}, ["/webhooks/uip"], None))
        if wanted is None or "ceiling" in wanted:
            for in_flight in (self.args.connections, 0):
                steps.append(lambda in_flight=in_flight: ceiling(in_flight))
        for step in reversed(steps) if reverse else steps:
            step()
        return results

    def scaling(self) -> list[Result]:
        results = []
        for providers, size in ((1, 600), (5, 600), (50, 600), (1, 10_000), (1, 100_000)):
            port = free_port()
            name = f"{providers} provider{'s' if providers > 1 else ''}+route{'s' if providers > 1 else ''}, " \
                   f"{_size(size)} bodies"
            with _broker() as broker:
                print(f"  {name} ...", flush=True)
                server = self.webhookbus(name, broker.bootstrap, f"bench-scale-{uuid.uuid4().hex[:8]}", port,
                                         providers=providers)
                result = self.measure_http(server, port, broker, size=size, fixed_rate=False)
            results.append(result)
            _print_row(result)
        return results


# -- helpers -----------------------------------------------------------------------------

@contextmanager
def _broker() -> Iterator[Broker]:
    """A fresh in-memory broker per contender: none inherits another's topics or memory."""
    broker = Broker().start()
    try:
        yield broker
    finally:
        broker.stop()


def _wait_ready(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while post(port, path, method="GET").status != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not ready after {timeout} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, so the contender flushes its producer, as in a deploy."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _size(size: int) -> str:
    return f"{size // 1000} KB" if size >= 1000 else f"{size} B"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (f"{'contender':<56} {'CPU us/req':>10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'errors':>6} "
          f"{'delivered/accepted':>19} {'RSS MB':>6}")


def _row(result: Result) -> str:
    delivered = "-" if result.delivered is None else f"{result.delivered}/{result.accepted}"
    if result.lost:
        delivered += " LOST"
    cpu_us = None if result.cpu_per_1k is None else result.cpu_per_1k * 1000
    return (f"{result.name:<56} {_fmt(cpu_us, 0):>10} {result.rps:>7.0f} {_fmt(result.p50_ms, 2):>7} "
            f"{_fmt(result.p99_ms, 2):>7} {_fmt(result.p999_ms, 2):>7} {result.errors:>6} {delivered:>19} "
            f"{result.peak_rss_mb:>6.1f}")


def _print_row(result: Result) -> None:
    print("    " + _row(result), flush=True)


def median_of(results: tuple[Result, ...]) -> Result:
    """One contender's rounds as one row: the median of each figure, the sums of the counts
    (every round's deliveries are checked), the highest peak RSS."""
    if len(results) == 1:
        return results[0]

    def median(values: list[float | None]) -> float | None:
        known = sorted(v for v in values if v is not None)
        return statistics.median(known) if known else None

    first = results[0]
    merged = Result(first.name, first.note)
    merged.rps = median([r.rps for r in results]) or 0.0
    merged.p50_ms, merged.p99_ms, merged.p999_ms = (median([getattr(r, f) for r in results])
                                                    for f in ("p50_ms", "p99_ms", "p999_ms"))
    merged.cpu_per_1k = median([r.cpu_per_1k for r in results])
    merged.peak_rss_mb = max(r.peak_rss_mb for r in results)
    merged.errors, merged.accepted, merged.lost = (sum(getattr(r, f) for r in results) for f in ("errors", "accepted", "lost"))
    merged.delivered = None if first.delivered is None else sum(r.delivered or 0 for r in results)
    merged.extra = {"rounds": [asdict(r) for r in results], "rounds_rps": [round(r.rps) for r in results]}
    fixed = [r.extra["fixed_rate"] for r in results if "fixed_rate" in r.extra]
    if fixed:
        merged.extra["fixed_rate"] = {"late": sum(f["late"] for f in fixed),
                                      "late_ms_max": max(f["late_ms_max"] for f in fixed)}
    return merged


def ratios(results: list[Result]) -> dict[str, Any]:
    """The benchmark issue's targets, from this run's figures only."""
    one_worker = [r for r in results if r.name.startswith("webhookbus, 1 worker") and not r.name.endswith(("asyncio", "redis"))]
    one = next((r for r in one_worker if r.name.endswith("ack=broker")), None)
    express = next((r for r in results if r.name.startswith("Express")), None)
    bare = next((r for r in results if r.name == "bare hypercorn, answers 200"), None)  # the same loop as `one`
    minimal = next((r for r in results if r.name == MINIMAL), None)
    if one is None or not one.rps:
        return {"vs_webhookbus_1_worker": {}, "targets": {}}
    best = max(one_worker, key=lambda r: r.rps)
    targets: dict[str, Any] = {}
    if express is not None and express.rps:
        targets["throughput vs Express+kafkajs (>= 2.0x)"] = _target(one.rps / express.rps, 2.0, "x")
        if one.cpu_per_1k and express.cpu_per_1k:
            targets["CPU per request vs Express+kafkajs (<= 0.5x)"] = _target(
                one.cpu_per_1k / express.cpu_per_1k, 0.5, "x",
                f"{one.cpu_per_1k * 1000:.0f} us vs {express.cpu_per_1k * 1000:.0f} us", below=True)
        if one.p99_ms is not None and express.p99_ms is not None:
            targets["p99 at the fixed rate vs Express+kafkajs (<= 1x)"] = _target(
                one.p99_ms / express.p99_ms, 1.0, "x", f"{one.p99_ms:.2f} ms vs {express.p99_ms:.2f} ms", below=True)
    if bare is not None and bare.rps:
        targets["best 1-worker mode vs bare hypercorn (>= 0.75x)"] = _target(best.rps / bare.rps, 0.75, "x", best.name)
    if minimal is not None and minimal.rps:
        targets["throughput vs the minimal pipeline (>= 0.6x)"] = _target(one.rps / minimal.rps, 0.6, "x")
    targets["peak RSS of one worker (< 120 MB)"] = _target(one.peak_rss_mb, 120, " MB", below=True)
    summary: dict[str, Any] = {"vs_webhookbus_1_worker": {r.name: round(r.rps / one.rps, 3) for r in results},
                               "targets": targets}
    redis = next((r for r in results if r.name.endswith("ack=broker, redis")), None)
    if redis is not None and redis.rps:
        summary["redis_store_vs_local"] = {
            "rps_ratio": round(redis.rps / one.rps, 3),
            "cpu_us_per_request": None if redis.cpu_per_1k is None or one.cpu_per_1k is None
            else round((redis.cpu_per_1k - one.cpu_per_1k) * 1000, 1),
            "p50_ms": None if redis.p50_ms is None or one.p50_ms is None else round(redis.p50_ms - one.p50_ms, 2),
            "p99_ms": None if redis.p99_ms is None or one.p99_ms is None else round(redis.p99_ms - one.p99_ms, 2),
        }
    return summary


def _target(value: float, bound: float, unit: str, detail: str = "", below: bool = False) -> dict[str, Any]:
    met = value <= bound if below else value >= bound
    return {"value": round(value, 3), "bound": bound, "unit": unit.strip(), "met": met, "detail": detail}


def report(run: Run, results: list[Result], scaling: list[Result], summary: dict[str, Any]) -> None:
    args = run.args
    print(f"\nwrk, {args.connections} connections; saturation {args.seconds:g} s; latency at a fixed "
          f"{_fmt(run.rate, 0)} req/s (open loop) for {args.seconds:g} s; 600 B signed UIP bodies")
    print("    " + HEADER)
    for result in results:
        print("    " + _row(result))
    for result in results:
        if result.note:
            rounds = result.extra.get("rounds_rps")
            print(f"      {result.name}: {result.note}" + (f"; req/s by round {rounds}" if rounds else ""))
    if scaling:
        print(f"\nscaling: webhookbus, 1 worker, ack=broker, saturation only\n    {HEADER}")
        for result in scaling:
            print("    " + _row(result))
    print("\nsaturation req/s relative to webhookbus, 1 worker, ack=broker:")
    for name, ratio in summary["vs_webhookbus_1_worker"].items():
        print(f"    {name:<56} {ratio:>6.2f}x")
    if "redis_store_vs_local" in summary:
        cost = summary["redis_store_vs_local"]
        print(f"\nthe Redis dedup store against the local one: {cost['rps_ratio']:.2f}x the req/s, "
              f"{cost['cpu_us_per_request']} us more CPU per request (listener + producer + redis-server), "
              f"p50 {cost['p50_ms']:+} ms, p99 {cost['p99_ms']:+} ms at the fixed rate")
    print("\ntargets:")
    for name, target in summary["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        detail = f"  ({target['detail']})" if target["detail"] else ""
        print(f"    {name:<50} {target['value']:>7.2f}{target['unit']:<3} {verdict}{detail}")
    late = [r for r in results if r.extra.get("fixed_rate", {}).get("late")]
    for result in late:
        fixed = result.extra["fixed_rate"]
        print(f"note: {result.name} fell behind the fixed rate for {fixed['late']} sends (up to "
              f"{fixed['late_ms_max']:.0f} ms): its percentiles understate those stalls")
    for result in results + scaling:
        if result.lost:
            print(f"INVALID RUN: {result.name} answered 2xx for {result.lost} events that are not on Kafka")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of the saturation and fixed-rate phases")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=float, help="fixed offered rate (default: half webhookbus's saturation)")
    parser.add_argument("--max-rps", type=float, default=6000, help="sizes the request files (distinct events)")
    parser.add_argument("--python", default=str(COMPILED_PYTHON) if COMPILED_PYTHON.exists() else sys.executable,
                        help="the interpreter whose webhookbus the webhookbus rows run (default: the compiled "
                             "build's, .venv-compiled, when `make compiled` built it; else this one's)")
    parser.add_argument("--only", help="comma-separated: webhookbus,webhookbus-source,webhookbus-<engine>-<client>,webhookbus-metrics,"
                                       "webhookbus-redis,webhookbus-spool,webhookbus-asyncio,webhookbus-workers,"
                                       "webhookbus-workers-metrics,express,minimal,bare,bare-asyncio,bare-uvicorn,ceiling")
    parser.add_argument("--no-spool", dest="spool", action="store_false", help="skip the ack=spool contender")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every contender this many times, alternating the order; report medians")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="webhookbus-bench-") as tmp:
        run = Run(args, Path(tmp))
        rounds: list[list[Result]] = []
        try:
            for index in range(args.rounds):
                print(f"contenders{f', round {index + 1} of {args.rounds}' if args.rounds > 1 else ''}\n    {HEADER}",
                      flush=True)
                rounds.append(run.contenders(reverse=index % 2 == 1))
        finally:
            if run.redis is not None:
                run.redis.stop()
        results = [median_of(same) for same in zip(*(sorted(r, key=lambda x: x.name) for r in rounds))]
        order = [r.name for r in rounds[0]]
        results.sort(key=lambda r: order.index(r.name))
        scaling: list[Result] = []
        if not args.no_scaling:
            print("scaling", flush=True)
            scaling = run.scaling()
    summary = ratios(results)
    report(run, results, scaling, summary)
    valid = not any(r.lost for r in results + scaling)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: str(v) for k, v in vars(args).items()} | {"fixed_rate": run.rate},
        "contenders": [asdict(r) for r in results],
        "scaling": [asdict(r) for r in scaling],
        **summary,
        "valid": valid,
        "wall_seconds": round(time.monotonic() - started, 1),
    }, indent=2) + "\n")
    print(f"\n{'valid' if valid else 'INVALID'} run; written to {args.out} ({time.monotonic() - started:.0f} s)")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
