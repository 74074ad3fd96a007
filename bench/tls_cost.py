"""What TLS costs a request: the same webhookbus (uip provider, ack=broker, one worker) over
plain HTTP and over HTTPS, on each engine ``server.engine: auto`` can choose, interleaved.

wrk keeps its 32 connections alive, so a handshake is paid once per connection and the
figure is the per-request cost of TLS records (encryption, the extra reads and writes).
wrk cannot present a client certificate, so ``client_auth`` stays ``none`` here; verifying a
client certificate is part of the handshake, paid once per connection too.

    .venv/bin/python bench/tls_cost.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from run import Result, Run, _broker  # noqa: E402
from webhookbus.testing.broker import free_port  # noqa: E402
from webhookbus.testing.pki import TestPki  # noqa: E402
from webhookbus.testing.pytest_plugin import engines  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-rps", type=float, default=6000)
    args = parser.parse_args()
    args.rate = None
    with tempfile.TemporaryDirectory(prefix="webhookbus-tls-bench-") as directory:
        workdir = Path(directory)
        pki = TestPki(workdir / "pki")
        run = Run(args, workdir)
        rows: dict[tuple[str, bool], list[Result]] = {}
        order = [(engine, tls) for engine in engines() for tls in (False, True)]
        for index in range(args.rounds):
            for engine, tls in order if index % 2 == 0 else order[::-1]:
                name = f"webhookbus on {engine}, {'https' if tls else 'http'}"
                print(f"  {name} ...", flush=True)
                port = free_port()
                with _broker() as broker:
                    server = run.webhookbus(name, broker.bootstrap, f"bench-tls-{uuid.uuid4().hex[:8]}", port,
                                            engine=engine, tls=pki.server_tls() if tls else None)
                    result = run.measure_http(server, port, broker, fixed_rate=False)
                if result.lost or result.errors:
                    print(f"INVALID RUN: {name}: lost {result.lost}, errors {result.errors}")
                    return 1
                rows.setdefault((engine, tls), []).append(result)
    print(f"\nwrk {args.connections} keep-alive connections, {args.seconds:g} s saturation, medians of {args.rounds} "
          f"interleaved rounds")
    print(f"    {'contender':<34} {'req/s':>7} {'CPU us/req':>10}")
    cpu: dict[tuple[str, bool], float] = {}
    for (engine, tls), results in rows.items():
        rps = statistics.median(r.rps for r in results)
        cpu[engine, tls] = statistics.median(r.cpu_per_1k or 0 for r in results) * 1000
        print(f"    {results[0].name:<34} {rps:>7.0f} {cpu[engine, tls]:>10.0f}")
    for engine in engines():
        if (engine, False) in cpu and (engine, True) in cpu:
            extra = cpu[engine, True] - cpu[engine, False]
            print(f"    TLS on {engine}: {extra:+.0f} us of CPU per request ({extra / cpu[engine, False]:+.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
