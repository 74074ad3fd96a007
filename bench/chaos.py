"""Chaos run: nothing answered 2xx is lost, no provider retry is published twice.

    .venv/bin/python bench/chaos.py                           # short form (what `make test` runs, smaller)
    .venv/bin/python bench/chaos.py --events 20000 --cycles 6 # long form

Several client threads send signed webhooks (the generic ``hmac`` verifier) to a
``webhookbus serve`` child process, half to a provider in ``ack: broker`` mode (with the
default spool fallback), half to one in ``ack: spool`` mode.  Each event is retried until
answered 2xx, as providers do, and then sent once more (a provider that missed our 2xx).
Every few events a client also sends a bad request: malformed JSON, an oversized body, a
wrong signature, or a body cut short.  Meanwhile the harness runs ``--cycles`` times:
stop the broker for ``--outage`` seconds and start it again (the idempotent producer's
state is gone: webhookbus must replace it and send again from the spool), then SIGKILL
webhookbus and restart it.  At the end it prints exactly one line on stdout:

    accepted=N delivered=N lost=0 duplicates_published=0 crash_redeliveries=K rejected_bad=M errors_5xx_unexpected=0

and exits 1 if ``lost``, ``duplicates_published`` or ``errors_5xx_unexpected`` is above
0 (or a bad request was accepted, or a record nobody sent appeared).  Details go to stderr.

How delivery is counted, given that the test broker forgets everything when it stops
-------------------------------------------------------------------------------------
The broker (tansu) stores in memory, so "consume every topic at the end" would miss all
that was delivered before the last broker restart.  Instead a collector consumes every
topic continuously, per broker incarnation, with ``assign()``, recording each record's
CloudEvents ``id`` and ``receivedtime``.  Before each broker stop the harness freezes
webhookbus and its producer process (SIGSTOP), so no more records can be produced, waits until the collector has
read every partition up to its end offset and the end offsets stopped moving, then stops
the broker and resumes webhookbus (SIGCONT).  So every record a broker incarnation
acknowledged was seen; a record sent but not acknowledged is webhookbus's to send again,
and it must (from the spool).  At the end webhookbus drains its spool and the last
incarnation is read to its end.

Counting, per event id (the harness knows every attempt and the moment its 2xx arrived):
- ``accepted``: events with an attempt answered 2xx; ``delivered``: those seen on Kafka;
  ``lost``: accepted and never seen.
- Each distinct ``receivedtime`` of an id is one publication (one request webhookbus took).
  A publication received after the event's first 2xx came back is a retry that should
  have been deduplicated: ``duplicates_published``.  Extra publications received before
  it come from attempts cut short (SIGKILL, connection lost) and the same publication
  seen more than once is a record sent again after a crash or a broker restart: both
  are ``crash_redeliveries`` (at-least-once; consumers dedup on the CloudEvents id).
- ``errors_5xx_unexpected``: every 5xx answer (no mode in this config answers 5xx to a
  correct request: the spool absorbs the outages).  ``rejected_bad``: bad requests refused.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from webhookbus.testing.broker import Broker
from webhookbus.testing.listener import post
from webhookbus.testing.process import ServerProcess

SECRET = "chaos-secret-never-logged"
MAX_BODY = 8192
PROVIDERS = {"chaos-broker": ("/hooks/broker", "chaos.broker"), "chaos-spool": ("/hooks/spool", "chaos.spool")}
AUDIT_TOPIC = "chaos.audit"
TOPICS = [topic for _, topic in PROVIDERS.values()] + [AUDIT_TOPIC]


def webhookbus_config(kafka_client: str = "auto") -> dict:
    options = {"prefix": "sha256=", "event_field": "type", "id_field": "id"}
    providers = {name: {"verifier": "hmac", "path": path, "secrets": [f"literal:{SECRET}"], "options": options}
                 for name, (path, _) in PROVIDERS.items()}
    providers["chaos-spool"]["ack"] = "spool"
    return {
        "server": {"max_body_bytes": MAX_BODY, "graceful_timeout": 5},
        "kafka": {"publish_timeout": 1.0, "client": kafka_client},
        "providers": providers,
        "routes": [{"provider": name, "topic": topic} for name, (_, topic) in PROVIDERS.items()],
        "audit": {"topic": AUDIT_TOPIC, "max_per_second": 50, "burst": 50},
    }


def sign(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"content-type": "application/json",
            "x-signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


# -- what the clients saw ---------------------------------------------------------------

@dataclass
class Event:
    id: str
    path: str
    body: bytes
    attempts: list[tuple[float, int | None]] = field(default_factory=list)  # (answered at, status or None)

    @property
    def first_2xx_at(self) -> float | None:
        return next((at for at, status in self.attempts if status is not None and status < 300), None)


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[Event] = field(default_factory=list)
    sent: int = 0
    rejected_bad: int = 0
    bad_accepted: int = 0
    errors_5xx: int = 0


class Client(threading.Thread):
    def __init__(self, number: int, port: int, events: int, tally: Tally, run: str, stop: threading.Event) -> None:
        super().__init__(name=f"chaos-client-{number}", daemon=True)
        self.number, self.port, self.events, self.tally, self.run_id, self.stop = number, port, events, tally, run, stop
        self.random = random.Random(number)

    def run(self) -> None:
        pending_duplicate: Event | None = None
        for n in range(self.events):
            if self.stop.is_set():
                return
            path = list(PROVIDERS.values())[(self.number + n) % 2][0]
            event_id = f"{self.run_id}-{self.number}-{n}"
            body = json.dumps({"type": "chaos.event", "id": event_id, "n": n,
                               "pad": "x" * self.random.randint(50, 500)}).encode()
            event = Event(event_id, path, body)
            with self.tally.lock:
                self.tally.events.append(event)
            while not self.stop.is_set() and event.first_2xx_at is None and len(event.attempts) < 200:
                self.attempt(event)
            if pending_duplicate is not None:  # the provider never saw our 2xx: it sends again, later
                self.attempt(pending_duplicate)
            pending_duplicate = event
            if n % 7 == 3:
                self.bad_request(n)
        if pending_duplicate is not None:
            self.attempt(pending_duplicate)

    def attempt(self, event: Event) -> None:
        try:
            status: int | None = post(self.port, event.path, event.body, sign(event.body), timeout=30).status
        except OSError:
            status = None  # refused or cut by a restart: outcome unknown, the provider retries
        event.attempts.append((time.time(), status))
        with self.tally.lock:
            self.tally.sent += 1
            if status is not None and status >= 500:
                self.tally.errors_5xx += 1
        if status is None or status >= 300:
            time.sleep(0.05)

    def bad_request(self, n: int) -> None:
        path = PROVIDERS["chaos-spool"][0]
        body = json.dumps({"type": "chaos.bad", "id": f"bad-{self.run_id}-{self.number}-{n}"}).encode()
        kind = (n // 7) % 4
        try:
            if kind == 3:
                status = self.truncated(path, body)
            else:
                request = {
                    0: (b"{not json" + body, None),  # signed correctly, but not JSON
                    1: (body + b" " * MAX_BODY, None),  # over max_body_bytes
                    2: (body, "not-the-secret"),  # wrong signature
                }[kind]
                headers = sign(request[0], request[1] or SECRET)
                status = post(self.port, path, request[0], headers, timeout=30).status
        except OSError:
            return  # webhookbus was restarting: nothing was decided
        with self.tally.lock:
            self.tally.sent += 1
            if status is not None and status < 300:
                self.tally.bad_accepted += 1
            elif status is not None and status >= 500:
                self.tally.errors_5xx += 1
            else:
                self.tally.rejected_bad += 1

    def truncated(self, path: str, body: bytes) -> int | None:
        """Declare the whole body, send half, and hang up: no answer, or a 4xx."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in sign(body).items())
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: chaos\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode()
                         + body[: len(body) // 2])
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(100)
        match = re.match(rb"HTTP/1.1 (\d{3})", reply)
        return int(match[1]) if match else None


# -- what Kafka holds ---------------------------------------------------------------------

class Collector(threading.Thread):
    """Consumes every topic of one broker incarnation until told to stop."""

    def __init__(self, bootstrap: str, seen: dict[str, list[tuple[str, str]]], incarnation: int) -> None:
        super().__init__(name=f"chaos-collector-{incarnation}", daemon=True)
        self.bootstrap, self.seen, self.incarnation = bootstrap, seen, incarnation
        self.stop_requested = threading.Event()
        self.caught_up = threading.Event()
        self.records = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _consume(self) -> None:
        create_topics(self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            partitions = []
            for topic in TOPICS:
                while not (found := consumer.partitions_for_topic(topic)):
                    time.sleep(0.1)
                partitions += [TopicPartition(topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            consumer.seek_to_beginning()
            stable_ends, stable_since = None, 0.0
            while True:
                for batch in consumer.poll(timeout_ms=100).values():
                    for record in batch:
                        self.record(record.topic, record.value)
                if not self.stop_requested.is_set():
                    continue
                ends = consumer.end_offsets(partitions)
                if any(consumer.position(p) < end for p, end in ends.items()):
                    continue
                if ends != stable_ends:
                    stable_ends, stable_since = ends, time.monotonic()
                elif time.monotonic() - stable_since > 0.5:
                    return
        finally:
            consumer.close()

    def record(self, topic: str, value: bytes) -> None:
        if SECRET.encode() in value:
            raise AssertionError(f"the provider secret appeared in a record on {topic}")
        self.records += 1
        if topic == AUDIT_TOPIC:
            return
        event = json.loads(value)
        self.seen[event["id"]].append((event["receivedtime"], hashlib.sha256(value).hexdigest()[:16]))

    def finish(self, timeout: float = 60.0) -> None:
        """Read up to the end offsets, wait until they stop moving, stop."""
        self.stop_requested.set()
        self.join(timeout)
        if self.error is not None:
            raise self.error
        if self.is_alive():
            raise TimeoutError("the collector did not catch up with the broker")


def create_topics(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 3, 1) for topic in TOPICS])
    except KafkaError:
        pass  # webhookbus's producer created them first
    finally:
        admin.close()


# -- the run ------------------------------------------------------------------------------

def receivedtime(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="distinct events in all (each sent at least twice)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=1, help="broker restart + SIGKILL of webhookbus, this many times")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the broker stays down each cycle")
    parser.add_argument("--kafka-client", default="auto", choices=["auto", "kafka-python", "confluent"],
                        help="kafka.client of the webhookbus under test")
    parser.add_argument("--port", type=int, default=None, help="webhookbus's port (default: a free one)")
    parser.add_argument("--broker-port", type=int, default=None, help="the broker's port (default: a free one)")
    args = parser.parse_args(argv)

    def note(message: str) -> None:
        print(f"chaos: {message}", file=sys.stderr, flush=True)

    run_id = f"r{int(time.time())}"
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    tally = Tally()
    stop = threading.Event()
    broker = (Broker(args.broker_port) if args.broker_port else Broker()).start()
    workdir = Path(tempfile.mkdtemp(prefix="webhookbus-chaos-"))
    server = ServerProcess(webhookbus_config(args.kafka_client), broker.bootstrap, workdir,
                           **({"port": args.port} if args.port else {}))
    incarnation = 0
    collector = Collector(broker.bootstrap, seen, incarnation)
    collector.start()
    server.start()
    per_client = max(1, args.events // args.clients)
    clients = [Client(n, server.port, per_client, tally, run_id, stop) for n in range(args.clients)]
    started = time.monotonic()
    try:
        for client in clients:
            client.start()
        total = per_client * args.clients
        for cycle in range(args.cycles):
            wait_for(lambda: len(tally.events) >= total * (2 * cycle + 1) / (2 * args.cycles + 1), clients)
            note(f"cycle {cycle + 1}: freezing webhookbus, reading the broker to its end, stopping it")
            server.signal_all(signal.SIGSTOP)  # the listener and its producer process
            collector.finish()
            broker.stop()
            server.signal_all(signal.SIGCONT)
            time.sleep(args.outage)
            broker.start()
            incarnation += 1
            collector = Collector(broker.bootstrap, seen, incarnation)
            collector.start()
            note(f"cycle {cycle + 1}: broker back after {args.outage:g} s")
            wait_for(lambda: len(tally.events) >= total * (2 * cycle + 2) / (2 * args.cycles + 1), clients)
            note(f"cycle {cycle + 1}: SIGKILL webhookbus, restart")
            server.kill()
            time.sleep(0.3)
            server.start()
        for client in clients:
            client.join()
        accepted_ids = {e.id for e in tally.events if e.first_2xx_at is not None}
        note(f"clients done after {time.monotonic() - started:.1f} s; waiting for the spool to drain")
        deadline = time.monotonic() + 120
        while not accepted_ids <= seen.keys() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.terminate() == 0, "webhookbus did not shut down cleanly on SIGTERM"
        collector.finish()
    finally:
        stop.set()
        server.stop()
        broker.stop()

    events = {e.id: e for e in tally.events}
    accepted = [e for e in tally.events if e.first_2xx_at is not None]
    delivered = [e for e in accepted if e.id in seen]
    duplicates = redeliveries = 0
    for event_id, publications in seen.items():
        event = events.get(event_id)
        if event is None or event.first_2xx_at is None:
            continue  # unknown ids are reported below; unaccepted ones may still land (at-least-once)
        distinct = {t for t, _ in publications}
        late = {t for t in distinct if receivedtime(t) > event.first_2xx_at}
        duplicates += len(late)
        redeliveries += len(distinct - late) - 1 + len(publications) - len(distinct)
    strangers = [i for i in seen if i not in events]
    replacements = server.log_path.read_text().count("replacing a failed Kafka producer")
    note(f"requests sent={tally.sent} broker_restarts={args.cycles} webhookbus_kills={args.cycles} "
         f"producer_replacements={replacements} bad_accepted={tally.bad_accepted} unknown_ids={len(strangers)}")
    lost = len(accepted) - len(delivered)
    print(f"accepted={len(accepted)} delivered={len(delivered)} lost={lost} duplicates_published={duplicates} "
          f"crash_redeliveries={redeliveries} rejected_bad={tally.rejected_bad} errors_5xx_unexpected={tally.errors_5xx}")
    if lost:
        note("lost: " + ", ".join(sorted(e.id for e in accepted if e.id not in seen)[:20]))
    failed = lost or duplicates or tally.errors_5xx or tally.bad_accepted or strangers
    if not failed:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        note(f"webhookbus's log and spool are kept in {workdir}")
    return 1 if failed else 0


def wait_for(condition, clients: list[Client]) -> None:
    while not condition() and any(c.is_alive() for c in clients):
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
