"""Several webhookbus processes, one Redis: a provider's retry is published once whichever
process it reaches, and a Redis outage costs what ``on_dedup_unavailable`` says, never an
event answered 2xx.  Real processes (separate spools), a real broker, a real redis-server."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from webhookbus.delivery.dedup import dedup_key
from webhookbus.plugin import installed_verifiers
from webhookbus.testing import free_port, post, read_topic, to_cloudevent
from webhookbus.testing.process import ServerProcess
from webhookbus.testing.samples import SignedRequest, signers_for

SECRETS = {"uip": "uip-redis-test-secret", "zignsec": "zignsec-redis-test-secret", "authgear": "authgear-redis-test-secret"}


def settings(topic: str, store: str, **provider: Any) -> dict[str, Any]:
    return {
        # A deadline a loaded 2-core CI machine keeps: a late answer would publish a retry (policy
        # publish), which these tests count as a failure.  An outage here is a refused connection.
        "kafka": {"publish_timeout": 4.0},
        "dedup": {"store": store, "timeout": 1.0},
        "providers": {name: {"verifier": name, "path": f"/webhooks/{name}", "secrets": [f"literal:{secret}"], **provider}
                      for name, secret in SECRETS.items()},
        "routes": [{"topic": topic}],
    }


def sign(provider: str, data: dict[str, Any]) -> SignedRequest:
    """A fresh signature each call (a retry is signed again: new timestamps), the same event."""
    options = installed_verifiers()[provider].load().Options()
    signer = next(iter(signers_for(provider).values()))
    return signer(options, SECRETS[provider].encode(), f"/webhooks/{provider}", data)


def uip(audit_id: str) -> tuple[str, dict[str, Any], str]:
    return "uip", {"event": "identify", "data": {"uip_id": "uip_7", "audit_id": audit_id}}, audit_id


def zignsec(session: str, status: str) -> tuple[str, dict[str, Any], str]:
    data = {"event": "session_updated", "id": session, "result": {"status": status, "errors": []}}
    return "zignsec", data, f"{session}:{status}"


def authgear(event_id: str) -> tuple[str, dict[str, Any], str]:
    data = {"id": event_id, "seq": 1, "type": "user.created", "payload": {"user": {"id": "user-1"}},
            "context": {"timestamp": int(time.time()), "user_id": "user-1"}}
    return "authgear", data, event_id


def send(instance: ServerProcess, provider: str, data: dict[str, Any]) -> int:
    request = sign(provider, data)
    return post(instance.port, request.path, request.body, request.headers).status


def published(bootstrap: str, topic: str, at_least: int, timeout: float = 30.0) -> Counter[str]:
    """Event ids on ``topic`` with how often each arrived: waits for ``at_least`` records, then
    reads the whole topic for two seconds more (copies published twice, and what came after)."""
    read_topic(bootstrap, topic, at_least, timeout)
    records = read_topic(bootstrap, topic, 1 << 30, 2.0)
    return Counter(to_cloudevent(record).get_id() for record in records)


@pytest.fixture
def instances(tmp_path: Path, kafka_broker, redis_server, topic_name):  # type: ignore[no-untyped-def]
    started: list[ServerProcess] = []

    def start(count: int, store: str | None = None, **provider: Any) -> tuple[str, list[ServerProcess]]:
        topic = topic_name("multi")
        for n in range(count):
            instance = ServerProcess(settings(topic, store or redis_server.url, **provider), kafka_broker.bootstrap,
                                     tmp_path / f"instance-{len(started)}")
            started.append(instance.start())
        return topic, started[-count:]

    yield start
    for instance in started:
        instance.stop()


def test_a_retry_sent_to_the_other_instance_is_published_once(instances, kafka_broker, redis_server):
    topic, (a, b) = instances(2)
    assert {a.directory / "spool"} != {b.directory / "spool"}
    run = uuid.uuid4().hex[:8]
    events = [uip(f"aud-{run}"), zignsec(f"ses-{run}", "Pending"), zignsec(f"ses-{run}", "Finished"),
              authgear(f"ag-{run}")]
    store = redis.Redis.from_url(redis_server.url)
    for provider, data, event_id in events:
        assert send(a, provider, data) == 200
        assert store.get(f"webhookbus:dedup:{provider}:{dedup_key(provider, event_id).hex()}") == b"a", \
            "remembered before the 2xx"
        assert send(b, provider, data) == 200, "the retry reached the other instance"
        assert send(a, provider, data) == 200
    counts = published(kafka_broker.bootstrap, topic, len(events))
    assert counts == Counter({event_id: 1 for _, _, event_id in events}), \
        "each event once: UIP's audit_id, ZignSec's id:status (two statuses, two events), Authgear's id"
    log = b.log_path.read_text()
    assert '"duplicates"' in log and '"dedup_store": "redis"' in log


def test_copies_racing_on_both_instances_are_published_once(instances, kafka_broker):
    topic, (a, b) = instances(2)
    run = uuid.uuid4().hex[:8]
    events = [uip(f"race-{run}-{n}") for n in range(10)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda job: send(job[0], "uip", job[1][1]),
                                 [(instance, event) for event in events for instance in (a, b, a, b)]))
    assert statuses == [200] * len(statuses)
    assert published(kafka_broker.bootstrap, topic, len(events)) == Counter({e[2]: 1 for e in events})


def test_the_local_store_publishes_a_retry_that_reached_another_instance_again(instances, kafka_broker):
    """Why the Redis store exists: what the README's "Running several instances" warns about."""
    topic, (a, b) = instances(2, store="local")
    provider, data, event_id = uip(f"local-{uuid.uuid4().hex[:8]}")
    assert send(a, provider, data) == 200 and send(b, provider, data) == 200
    assert published(kafka_broker.bootstrap, topic, 2) == Counter({event_id: 2})


def test_two_workers_share_the_redis_store(tmp_path, kafka_broker, redis_server, topic_name):
    topic = topic_name("workers")
    config = settings(topic, redis_server.url)
    config["server"] = {"workers": 2}
    server = ServerProcess(config, kafka_broker.bootstrap, tmp_path).start()
    try:
        run = uuid.uuid4().hex[:8]
        events = [uip(f"w-{run}-{n}") for n in range(10)] + [authgear(f"wag-{run}-{n}") for n in range(5)]
        for provider, data, _ in events * 3:  # a fresh connection each: spread over both workers
            assert send(server, provider, data) == 200
        assert published(kafka_broker.bootstrap, topic, len(events)) == Counter({e[2]: 1 for e in events})
        lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if '"request"' in line]
        # A request id starts with 20 hex digits of its process: duplicates were found by both workers.
        assert len({line["request_id"][:20] for line in lines if "duplicates" in line}) == 2
        slots = [path for path in (tmp_path / "spool").iterdir() if path.name.isdigit()]
        assert len(slots) == 2, "two workers, two spool slots, one dedup store"
    finally:
        server.stop()


@pytest.mark.parametrize("layout", ["two instances", "two workers"])
def test_killing_redis_under_load_keeps_each_providers_policy_and_loses_nothing_answered_2xx(
        tmp_path, kafka_broker, own_redis, topic_name, layout):
    """uip publishes without dedup while Redis is down (at least once), authgear answers 503 +
    Retry-After; never a 500; every event answered 2xx is on Kafka; once Redis is back (empty:
    it keeps nothing on disk here) retries are deduplicated again without a restart.  Each
    event's retry goes to the other instance, or with ``server.workers: 2`` on a new connection
    (the kernel spreads them over the workers)."""
    topic = topic_name("outage")
    config = settings(topic, own_redis.url)
    config["providers"]["authgear"]["on_dedup_unavailable"] = "reject"
    if layout == "two workers":
        config["server"] = {"workers": 2}
    names = "ab" if layout == "two instances" else "a"
    admin_ports = {name: free_port() for name in names}
    servers = [ServerProcess({**config, "admin": {"host": "127.0.0.1", "port": admin_ports[name]}},
                             kafka_broker.bootstrap, tmp_path / name).start() for name in names]
    a, b = servers if len(servers) == 2 else servers * 2
    replies: list[tuple[str, str, int, dict[str, str], bytes]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            for provider, data, event_id in (uip(f"load-{worker}-{n}"), authgear(f"load-ag-{worker}-{n}")):
                for instance in (a, b):  # the event, then its retry at the other instance
                    request = sign(provider, data)
                    reply = post(instance.port, request.path, request.body, request.headers)
                    replies.append((provider, event_id, reply.status, reply.headers, reply.body))

    try:
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(load, worker) for worker in range(4)]
            time.sleep(1.5)
            own_redis.stop()
            time.sleep(2.5)
            own_redis.start()
            time.sleep(2.0)
            stop.set()
            for future in running:
                future.result()

        statuses = Counter((provider, status) for provider, _, status, _, _ in replies)
        assert set(statuses) <= {("uip", 200), ("authgear", 200), ("authgear", 503)}, statuses
        assert statuses[("authgear", 503)] > 0, "reject: the outage was answered 503"
        refused = [(headers, body) for provider, _, status, headers, body in replies if status == 503]
        assert all(headers["retry-after"] == "4" and json.loads(body)["error"] == "dedup_unavailable"
                   for headers, body in refused)

        answered = {event_id for _, event_id, status, _, _ in replies if status == 200}
        counts = published(kafka_broker.bootstrap, topic, len(answered), timeout=60)
        assert answered <= set(counts), f"answered 2xx but not on Kafka: {sorted(answered - set(counts))[:5]}"
        assert max(counts.values()) <= 2, "at worst a retry is published a second time"
        assert any(count == 2 for count in counts.values()), "publish: the outage let retries through"

        # Back without a restart: deduplicated again.
        provider, data, event_id = uip(f"after-{uuid.uuid4().hex[:8]}")
        assert send(a, provider, data) == 200 and send(b, provider, data) == 200
        assert published(kafka_broker.bootstrap, topic, len(counts) + 1)[event_id] == 1
        for instance in servers:
            log = instance.log_path.read_text()
            processes = 2 if layout == "two workers" else 1
            assert log.count('"dedup store unavailable"') == log.count('"dedup store reachable again"') == processes, \
                "one line each way per process (each instance, or each worker)"
        counted = Counter()
        for port in admin_ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                for family in text_string_to_metric_families(response.read().decode()):
                    for sample in family.samples:
                        if sample.name == "webhookbus_dedup_unavailable_total":
                            counted[sample.labels["provider"], sample.labels["policy"]] += sample.value
        assert counted[("authgear", "reject")] == statuses[("authgear", 503)], "each refusal counted"
        assert counted[("uip", "publish")] > 0
    finally:
        stop.set()
        for server in servers:
            server.stop()


def test_a_copy_given_up_at_the_deadline_stays_claimed_across_instances(tmp_path, own_broker, redis_server, topic_name):
    """on_broker_timeout: reject answers 503 while the messages may still land: the id stays
    claimed (in Redis) until they are answered for, so the retry at the other instance is
    answered 503 again instead of publishing a second copy; in the end the event is on Kafka once."""
    topic = topic_name("late")
    config = settings(topic, redis_server.url, on_broker_timeout="reject", publish_timeout=1.0)
    a, b = (ServerProcess(config, own_broker.bootstrap, tmp_path / name).start() for name in "ab")
    try:
        provider, data, event_id = uip(f"late-{uuid.uuid4().hex[:8]}")
        assert send(a, provider, data) == 200  # the producers are connected
        own_broker.stop()
        provider, data, event_id = uip(f"late-{uuid.uuid4().hex[:8]}")
        assert send(a, provider, data) == 503
        request = sign(provider, data)
        retry = post(b.port, request.path, request.body, request.headers)
        assert retry.status == 503 and retry.json()["error"] == "broker_unavailable", \
            "the other instance waits for the first copy's outcome, then refuses: it does not publish"
        assert "earlier copy" in retry.json()["detail"]
        own_broker.start()  # memory storage: the topic starts empty
        deadline = time.monotonic() + 60
        while (status := send((a, b)[int(time.monotonic()) % 2], provider, data)) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert published(own_broker.bootstrap, topic, 1)[event_id] == 1
    finally:
        a.stop()
        b.stop()


def test_a_claim_of_an_instance_killed_mid_request_expires_after_claim_ttl(tmp_path, own_broker, redis_server, topic_name):
    """SIGKILL while a request waits for the broker: nothing settles its claim, and nothing
    renews it; the retry at the other instance waits, and publishes once ``claim_ttl`` has passed."""
    topic = topic_name("killed")
    config = settings(topic, redis_server.url, publish_timeout=8.0)
    config["dedup"]["claim_ttl"] = 2
    a, b = (ServerProcess(config, own_broker.bootstrap, tmp_path / name).start() for name in "ab")
    try:
        assert send(a, *uip(f"warm-{uuid.uuid4().hex[:8]}")[:2]) == 200
        assert send(b, *uip(f"warm-{uuid.uuid4().hex[:8]}")[:2]) == 200
        own_broker.stop()
        provider, data, event_id = uip(f"killed-{uuid.uuid4().hex[:8]}")
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(send, a, provider, data)
            time.sleep(1.0)  # a has claimed the id and waits for the broker
            a.signal_all(signal.SIGKILL)
            a.process.wait()  # type: ignore[union-attr]
            a.process = None
            assert first.exception() is not None, "the provider never got an answer"
        store = redis.Redis.from_url(redis_server.url)
        key = f"webhookbus:dedup:uip:{dedup_key('uip', event_id).hex()}"
        assert store.get(key) not in (None, b"a") and 0 < store.pttl(key) <= 2000, "the dead instance's claim"
        own_broker.start()
        assert send(b, provider, data) == 200, "b waited for the claim to expire, then published"
        deadline = time.monotonic() + 5  # the settle follows the answer
        while store.get(key) != b"a":
            assert time.monotonic() < deadline, store.get(key)
            time.sleep(0.05)
        store.close()
        assert published(own_broker.bootstrap, topic, 1)[event_id] == 1
    finally:
        a.stop()
        b.stop()
