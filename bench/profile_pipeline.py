"""Where a request's CPU goes in webhookbus on auto's engine and client: py-spy under wrk load.

    .venv/bin/python bench/profile_pipeline.py [--seconds 10] [--client auto] [--engine auto]

Starts a broker and ``webhookbus serve`` as bench/run.py configures it, loads it with wrk
(32 connections, pre-signed UIP requests), samples the listener with py-spy meanwhile, and
prints the functions holding the most samples (self time, then inclusive), per thread.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from measure import wrk  # noqa: E402
from run import Run, _stop, _wait_ready  # noqa: E402
from webhookbus.testing.broker import Broker, free_port, wait_for_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--client", default="auto")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhookbus-profile-") as tmp:
        run = Run(argparse.Namespace(max_rps=8000, warmup=2, seconds=args.seconds, rate=None), Path(tmp))
        broker = Broker().start()
        port = free_port()
        server = run.webhookbus("profiled", broker.bootstrap, "bench-profile", port, client=args.client,
                                engine=args.engine)
        requests, _ = run.request_file(server.paths, 600)
        process = subprocess.Popen(server.command, env={**__import__("os").environ, **server.env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raw = Path(tmp) / "profile.txt"
        try:
            wait_for_port(port, timeout=30)
            _wait_ready(port, "/readyz")
            url = f"http://127.0.0.1:{port}"
            wrk(url, requests, 2, 32)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
                                    "--duration", f"{args.seconds:g}", "--rate", "250", "--format", "raw",
                                    "--threads", "--nonblocking", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = threading.Thread(target=lambda: print("load:", wrk(url, requests, args.seconds + 1, 32, start=100_000)))
            load.start()
            spy.wait()
            load.join()
        finally:
            _stop(process)
            broker.stop()
        report(raw.read_text(), args.top)
    return 0


def report(collapsed: str, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        threads[frames[0]] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    print(f"{total} samples")
    for name, n in threads.most_common():
        print(f"  thread {name}: {100 * n / total:.1f}%")
    print("self:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive:")
    for name, n in inclusive.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main())
