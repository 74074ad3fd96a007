"""Slot starvation: connections that send headers and then nothing, beside genuine providers.

    .venv/bin/python bench/starve.py                      # 1,100 attackers, 20 genuine req/s, 30 s
    .venv/bin/python bench/starve.py --attack 1100 --seconds 60

The attack of issue 13: ``--attack`` connections each send a complete POST header block
announcing a body, and then nothing; whenever the listener closes one (its read timeout,
``server.request_timeout``) the attacker opens another at once.  Meanwhile genuine signed
webhooks arrive at ``--rate`` per second.  Prints one line:

    attack_connections=N attack_reconnects_per_s=R genuine=G ok=O overloaded=V other=X success_rate=P%

Before the in-flight slot was taken only once the body is in, the attackers held every slot
(511 of 1,201 genuine requests were answered 503 ``overloaded`` in the issue's run).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from webhookbus.testing.broker import Broker
from webhookbus.testing.listener import post
from webhookbus.testing.process import ServerProcess

SECRET = "starve-secret"
PATH = "/hooks/genuine"


def headers_only(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 900\r\n"
                 f"x-signature: sha256=00\r\n\r\n".encode())
    sock.setblocking(False)
    return sock


def attack(port: int, connections: int, stop: threading.Event, reconnects: list[int]) -> None:
    """Keep ``connections`` header-only requests open; reopen each one the listener closes."""
    selector = selectors.DefaultSelector()
    for _ in range(connections):
        selector.register(headers_only(port), selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            try:
                data = sock.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if data:
                continue  # an answer (408, 503): the connection closes next
            selector.unregister(sock)
            sock.close()  # type: ignore[union-attr]
            try:
                selector.register(headers_only(port), selectors.EVENT_READ)
                reconnects[0] += 1
            except OSError:
                time.sleep(0.01)
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", type=int, default=1100, help="header-only connections held open")
    parser.add_argument("--rate", type=float, default=20.0, help="genuine requests per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--request-timeout", type=float, default=10.0, help="server.request_timeout (the default)")
    args = parser.parse_args(argv)

    broker = Broker().start()
    workdir = Path(tempfile.mkdtemp(prefix="webhookbus-starve-"))
    settings = {
        "server": {"request_timeout": args.request_timeout},
        "providers": {"genuine": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                                  "options": {"prefix": "sha256=", "event_field": "type", "id_field": "id"}}},
        "routes": [{"topic": "starve.genuine"}],
    }
    server = ServerProcess(settings, broker.bootstrap, workdir).start()
    stop = threading.Event()
    reconnects = [0]
    statuses: Counter[str] = Counter()
    try:
        attacker = threading.Thread(target=attack, args=(server.port, args.attack, stop, reconnects), daemon=True)
        attacker.start()
        time.sleep(2.0)  # the attack is in place before the first genuine request
        started, n = time.monotonic(), 0
        reconnects_before = reconnects[0]
        while (elapsed := time.monotonic() - started) < args.seconds:
            body = json.dumps({"type": "user.updated", "id": f"genuine-{n}"}).encode()
            headers = {"content-type": "application/json",
                       "x-signature": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
            try:
                reply = post(server.port, PATH, body, headers, timeout=10)
                statuses["ok" if reply.status == 200 else
                         "overloaded" if reply.status == 503 and reply.json().get("error") == "overloaded" else
                         "other"] += 1
            except OSError:
                statuses["other"] += 1
            n += 1
            time.sleep(max(0.0, n / args.rate - (time.monotonic() - started)))
        rate = (reconnects[0] - reconnects_before) / elapsed
    finally:
        stop.set()
        server.stop()
        broker.stop()
    genuine = sum(statuses.values())
    print(f"attack_connections={args.attack} attack_reconnects_per_s={rate:.0f} genuine={genuine} ok={statuses['ok']} "
          f"overloaded={statuses['overloaded']} other={statuses['other']} "
          f"success_rate={100 * statuses['ok'] / max(1, genuine):.1f}%")
    return 0 if statuses["ok"] == genuine else 1


if __name__ == "__main__":
    sys.exit(main())
