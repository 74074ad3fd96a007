"""Routes with ``reply``: a Kafka consumer decides Authgear's blocking hooks, on the real broker.

The requests are signed by the test kit (webhookbus.testing.samples), the decisions taken by a
policy running under ``webhookbus.reply.serve``, and everything travels through the broker.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhookbus.config import ConfigError, parse_config
from webhookbus.reply import serve
from webhookbus.testing import free_port, post, read_topic
from webhookbus.testing.broker import wait_for_port
from webhookbus.testing.process import terminate
from webhookbus.testing.samples import DEV_SECRETS as SECRETS_OF_MAKE_RUN
from webhookbus.testing.samples import SIGNERS

SECRET = b"authgear-reply-test-secret"
PATH = "/webhooks/authgear"
ALLOW = {"is_allowed": True}
STATIC = {"is_allowed": False, "title": "Static", "reason": "the configured answer"}


def authgear_request(event: str = "user.pre_create", email: str = "ada@example.com") -> tuple[bytes, dict[str, str]]:
    """A body signed as Authgear signs it (the test kit's signer), for a user with ``email``."""
    body = {"id": str(uuid.uuid4()), "seq": 1, "type": event,
            "payload": {"user": {"id": f"user-{uuid.uuid4().hex[:8]}", "standard_attributes": {"email": email}}},
            "context": {"timestamp": int(time.time()), "user_id": "user-1"}}
    signed = SIGNERS["authgear"][event](None, SECRET, PATH, body)
    return signed.body, signed.headers


def email_of(event: Any) -> str:
    """From the responder's event (webhookbus's CloudEvent) or one read with the SDK."""
    data = event.get_data() if hasattr(event, "get_data") else event.data
    return data["payload"]["user"]["standard_attributes"]["email"]


def deny_test_domain(event: Any) -> dict[str, Any]:
    """The demo policy: sign-ups from blocked.test are refused, naming the address."""
    email = email_of(event)
    if email.endswith("@blocked.test"):
        return {"is_allowed": False, "title": "Sign-up closed", "reason": f"{email} may not sign up"}
    return ALLOW


def config(topic: str, reply_topic: str, **reply: Any) -> dict[str, Any]:
    return {
        "providers": {"authgear": {"verifier": "authgear", "path": PATH, "secrets": [f"literal:{SECRET.decode()}"],
                                   "options": {"blocking_response": STATIC}}},
        "routes": [{"provider": "authgear", "type": "authgear.user.*", "topic": topic,
                    "reply": {"topic": reply_topic, "timeout": 1.5, **reply}}],
    }


@pytest.fixture
def responder(kafka_broker) -> Iterator[Callable[[str, Callable[[Any], Any]], None]]:
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(topic: str, handler: Callable[[Any], Any]) -> None:
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=serve, args=(topic, handler, kafka_broker.bootstrap),
                                  kwargs={"stop": stop, "ready": ready}, daemon=True)
        thread.start()
        assert ready.wait(20), "the responder did not start"
        running.append((stop, thread))

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(10)


def wait_ready(port: int, timeout: float = 20.0) -> None:
    """/readyz answers 200 once the reply consumer is assigned."""
    deadline = time.monotonic() + timeout
    while post(port, "/readyz", method="GET").status != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)


def counted(admin_port: int) -> dict[str, float]:
    """The reply metrics of a scrape of the admin listener: name{labels} -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.endswith("_total") and ("held_requests" in sample.name or "replies_dropped" in sample.name)}


@pytest.fixture
def listener(webhookbus_listener, responder, topic_name):
    def start(handler: Callable[[Any], Any] | None = deny_test_domain, admin: int | None = None, **reply: Any):
        topic, reply_topic = topic_name("hooks"), topic_name("replies")
        if handler is not None:
            responder(topic, handler)
        settings = config(topic, reply_topic, **reply)
        if admin is not None:
            settings["admin"] = {"host": "127.0.0.1", "port": admin}
        running = webhookbus_listener(settings)
        wait_ready(running.port)
        return running, topic, reply_topic

    return start


def decision_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "webhookbus.http" and getattr(r, "decision", None)]


def test_a_consumer_allows_and_denies_a_signed_user_pre_create_end_to_end(listener, read_events, caplog):
    """With the example policy the README and config/providers/authgear.yaml point at."""
    caplog.set_level(logging.INFO)
    example = runpy.run_path(str(Path(__file__).parents[1] / "config/authgear_policy.py"))["decide"]
    running, topic, reply_topic = listener(example)
    allowed = running.post(PATH, *authgear_request(email="ada@example.com"))
    denied = running.post(PATH, *authgear_request(email="mallory@Blocked.test"))
    assert allowed.status == 200 and allowed.json() == ALLOW
    assert denied.status == 200 and denied.json() == {
        "is_allowed": False, "title": "Sign-up closed", "reason": "Addresses at blocked.test cannot sign up."}
    assert [r.decision for r in decision_lines(caplog)] == ["reply", "reply"]
    events = read_events(topic, 2)  # the request events stay on Kafka, naming where to reply
    assert {email_of(e) for e in events} == {"ada@example.com", "mallory@Blocked.test"}
    for event in events:
        assert event.get_extension("replytopic") == reply_topic
        assert event.get_extension("replypartition") == "0"
        assert event.get_extension("correlationid")


def test_correlation_ids_are_random_per_request_so_one_seen_tells_nothing_of_the_next(listener, read_events):
    """A reply is trusted for its correlation id alone: an id made of a per-process prefix and a
    counter let a reader of any topic the event fans out to predict the next request's id, and
    answer it first from any producer allowed on the reply topic."""
    running, topic, _ = listener(lambda event: ALLOW)
    for _ in range(3):
        assert running.post(PATH, *authgear_request()).json() == ALLOW
    ids = [event.get_extension("correlationid") for event in read_events(topic, 3)]
    assert len(set(ids)) == 3
    for first, second in zip(ids, ids[1:]):
        assert len(os.path.commonprefix([first, second])) < 8, ids  # random: 8 shared hex digits is 2**-32
    assert all(len(bytes.fromhex(i)) >= 16 for i in ids), ids  # 128 bits at least


def test_an_allow_with_a_user_mutation_is_passed_through(listener):
    answer = {"is_allowed": True, "mutations": {"user": {"custom_attributes": {"plan": "trial"}, "roles": ["beta"]}}}
    running, _, _ = listener(lambda event: answer)
    reply = running.post(PATH, *authgear_request())
    assert reply.status == 200 and reply.json() == answer


def test_an_invalid_reply_is_refused_logged_and_the_fallback_applies(listener, caplog):
    caplog.set_level(logging.INFO)
    fallback = {"is_allowed": False, "title": "Try later", "reason": "the policy service misbehaves"}
    # constraints are for authentication.* events: Authgear would reject this answer to user.pre_create
    admin = free_port()
    running, _, _ = listener(lambda event: {"is_allowed": True, "constraints": {"amr": ["mfa"]}}, admin=admin,
                             fallback=fallback)
    reply = running.post(PATH, *authgear_request())
    assert reply.status == 200 and reply.json() == fallback
    [refused] = [r for r in caplog.records
                 if r.name == "webhookbus.replies" and r.getMessage().startswith("reply refused")]
    assert "constraints is only for authentication.* events" in refused.reason and refused.refused_replies == 1
    [line] = decision_lines(caplog)
    assert (line.decision, line.fallback_reason) == ("fallback", "the reply was refused")
    assert counted(admin)['webhookbus_held_requests_total{"outcome": "invalid", "provider": "authgear"}'] == 1


def test_no_reply_in_time_gets_the_static_answer_and_a_late_reply_is_dropped_and_counted(listener, caplog):
    caplog.set_level(logging.INFO)
    release = threading.Event()

    def slow_once(event: Any) -> dict[str, Any]:
        release.wait(10)  # the first answer comes only once its request was answered
        return ALLOW

    admin = free_port()
    running, topic, _ = listener(slow_once, admin=admin, timeout=0.5)
    reply = running.post(PATH, *authgear_request())
    assert reply.status == 200 and reply.json() == STATIC  # fallback: static, the provider's configured answer
    [line] = decision_lines(caplog)
    assert (line.decision, line.fallback_reason) == ("fallback", "no reply within 0.5 s")
    release.set()
    # The late reply precedes the next one on the reply partition: read (with the next request) and dropped.
    assert running.post(PATH, *authgear_request()).json() == ALLOW
    assert [r.decision for r in decision_lines(caplog)] == ["fallback", "reply"]
    [dropped] = [r for r in caplog.records if r.getMessage().startswith("reply dropped")]
    assert dropped.dropped_replies == 1
    assert counted(admin) == {
        'webhookbus_held_requests_total{"outcome": "timed_out", "provider": "authgear"}': 1.0,
        'webhookbus_held_requests_total{"outcome": "reply", "provider": "authgear"}': 1.0,
        'webhookbus_replies_dropped_total{}': 1.0}
    assert len(read_topic(running.bootstrap, topic, 2)) == 2, "the request events stay on Kafka"


def test_a_policy_that_does_not_answer_leaves_the_fallback(listener, caplog):
    caplog.set_level(logging.INFO)
    running, _, _ = listener(lambda event: None, fallback=ALLOW, timeout=0.3)
    reply = running.post(PATH, *authgear_request(email="mallory@blocked.test"))
    assert reply.status == 200 and reply.json() == ALLOW
    assert decision_lines(caplog)[0].fallback_reason == "no reply within 0.3 s"


def test_a_non_blocking_event_on_a_reply_route_is_not_held(listener, read_events):
    running, topic, _ = listener(lambda event: pytest.fail("asked about a non-blocking event"))
    reply = running.post(PATH, *authgear_request("user.created"))
    assert reply.status == 200 and reply.body == b""
    [event] = read_events(topic, 1)
    assert event.get_extension("correlationid") is None


def test_fifty_concurrent_blocking_requests_each_get_their_own_decision(listener):
    running, _, _ = listener()
    emails = [f"user{i}@{'blocked.test' if i % 2 else 'example.com'}" for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda email: running.post(PATH, *authgear_request(email=email)), emails))
    for email, reply in zip(emails, replies):
        expected = ALLOW if email.endswith("example.com") else {
            "is_allowed": False, "title": "Sign-up closed", "reason": f"{email} may not sign up"}
        assert reply.status == 200 and reply.json() == expected, email


def test_two_worker_processes_each_read_only_their_own_replies(tmp_path: Path, kafka_broker, responder, topic_name):
    port, topic, reply_topic = free_port(), topic_name("hooks"), topic_name("replies")
    settings = config(topic, reply_topic) | {
        "server": {"host": "127.0.0.1", "port": port, "workers": 2, "graceful_timeout": 2},
        "kafka": {"bootstrap_servers": [kafka_broker.bootstrap]},
        "spool": {"directory": str(tmp_path / "spool")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    responder(topic, deny_test_domain)
    log = tmp_path / "webhookbus.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "serve", "--config",
                                    str(tmp_path / "config.yaml"), "--log-level", "info"], stderr=stderr)
    try:
        wait_for_port(port, timeout=20, process=process)
        deadline = time.monotonic() + 20
        while log.read_text().count('"reply consumer assigned"') < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        emails = [f"user{i}@{'blocked.test' if i % 3 == 0 else 'example.com'}" for i in range(30)]
        for email in emails:  # a fresh connection each: the kernel spreads them over both workers
            reply = post(port, PATH, *authgear_request(email=email))
            assert reply.status == 200
            assert reply.json()["is_allowed"] is email.endswith("example.com"), email
    finally:
        process.terminate()
        process.wait(30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assigned = sorted(line["partition"] for line in lines if line["msg"] == "reply consumer assigned")
    assert assigned == [0, 1], "each worker reads a partition of its own"
    assert [line["decision"] for line in lines if line.get("decision")] == ["reply"] * 30
    assert not [line for line in lines if line["msg"].startswith("reply dropped")], "no process saw another's reply"
    partitions = {record.partition for record in read_topic(kafka_broker.bootstrap, reply_topic, 30)}
    assert partitions == {0, 1}, "both workers were asked, each answered on its own partition"


@pytest.mark.parametrize(("reply", "message"), [
    ({"timeout": 5}, r"5 s is not below authgear's own deadline \(5 s\)"),
    ({"fallback": {"is_allowed": True, "mutations": {"user": {"roles": ["x"]}}}},
     "not an answer authgear takes for every event: .*mutations is only for user.* and oidc.* events"),
    ({"fallback": {"is_allowed": False}}, "not an answer authgear takes for every event: .*needs a title and a reason"),
])
def test_check_refuses_a_reply_the_provider_cannot_take(reply, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(yaml.safe_dump(config("t", "r", **reply)))


def test_check_refuses_a_reply_on_a_provider_that_waits_for_no_decision():
    settings = {"providers": {"demo": {"verifier": "hmac", "path": "/d", "secrets": ["literal:x"]}},
                "routes": [{"provider": "demo", "topic": "t", "reply": {"topic": "r"}}]}
    with pytest.raises(ConfigError, match=r"routes.0.reply: no provider matching 'demo' waits for a decision"):
        parse_config(yaml.safe_dump(settings))


def test_make_run_answers_sign_ups_with_the_example_policy(tmp_path: Path):
    """`make run` (webhookbus dev --policy config/authgear_policy.py:decide): a sign-up from the
    blocked test domain is denied by the policy, on the broker dev starts."""
    root = Path(__file__).parents[1]
    port = free_port()
    env = {**os.environ, "WEBHOOKBUS_SERVER__PORT": str(port), "WEBHOOKBUS_ADMIN__PORT": str(free_port())}
    env = {name: value for name, value in env.items() if not name.endswith(("_SECRET", "_SECRET_OLD"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhookbus.cli", "dev", "--config", str(root / "config/webhookbus.yaml"),
         "--broker-port", str(free_port()), "--policy", f"{root / 'config/authgear_policy.py'}:decide"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_port(port, timeout=60, process=process)
        wait_ready(port, timeout=30)
        dev_secret = SECRETS_OF_MAKE_RUN["AUTHGEAR_WEBHOOK_SECRET"].encode()
        answers = {}
        for email in ("ada@example.com", "eve@blocked.test"):
            body = {"id": str(uuid.uuid4()), "seq": 1, "type": "user.pre_create",
                    "payload": {"user": {"id": "u1", "standard_attributes": {"email": email}}},
                    "context": {"timestamp": int(time.time()), "user_id": "u1"}}
            signed = SIGNERS["authgear"]["user.pre_create"](None, dev_secret, PATH, body)
            answers[email] = post(port, PATH, signed.body, signed.headers).json()
        assert answers == {"ada@example.com": ALLOW, "eve@blocked.test": {
            "is_allowed": False, "title": "Sign-up closed", "reason": "Addresses at blocked.test cannot sign up."}}
    finally:
        terminate(process)


def test_a_process_whose_reply_partition_is_missing_is_not_ready_and_answers_with_the_fallback(
        webhookbus_listener, kafka_broker, topic_name, read_events, caplog):
    """server.instance 1 of workers 1 reads partition 1: a one-partition reply topic lacks it."""
    from kafka.admin import KafkaAdminClient, NewTopic

    caplog.set_level(logging.INFO)
    topic, reply_topic = topic_name("hooks"), topic_name("replies")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    admin.create_topics([NewTopic(reply_topic, num_partitions=1, replication_factor=-1)])
    admin.close()
    settings = config(topic, reply_topic) | {"server": {"instance": 1}}
    running = webhookbus_listener(settings)
    deadline = time.monotonic() + 20
    while not [r for r in caplog.records if r.getMessage().startswith("reply topic lacks")]:
        assert time.monotonic() < deadline, "no error about the missing partition"
        time.sleep(0.05)
    [missing] = [r for r in caplog.records if r.getMessage().startswith("reply topic lacks")][:1]
    assert (missing.topic, missing.partition, missing.partitions) == (reply_topic, 1, 1)
    while (probe := running.post("/readyz", method="GET")).json().get("detail", "").startswith("producer"):
        assert time.monotonic() < deadline, "the producer never connected"
        time.sleep(0.05)
    assert probe.status == 503 and probe.json()["detail"] == "the reply consumer is not assigned yet"
    reply = running.post(PATH, *authgear_request())
    assert reply.status == 200 and reply.json() == STATIC
    [line] = decision_lines(caplog)
    assert line.fallback_reason == "the reply consumer is not assigned yet"
    [event] = read_events(topic, 1)
    assert event.get_extension("correlationid") is None, "nobody is asked a question nobody waits the answer of"


def test_a_plugin_cannot_set_where_a_decision_goes():
    """A deciding service replies wherever replytopic and replypartition say: only the listener sets them."""
    from datetime import datetime, timezone

    from webhookbus.events import normalize
    from webhookbus.plugin import InboundRequest, ProviderEvent

    request = InboundRequest("demo", "POST", "/hooks/demo", "", {}, b"{}", datetime.now(timezone.utc))
    forged = {"replytopic": "elsewhere", "replypartition": "7", "correlationid": "c", "tenant": "acme"}
    event = normalize(request, "hmac", ProviderEvent("x", {}, extensions=forged))
    assert {name: event.extensions.get(name) for name in forged} == {
        "replytopic": None, "replypartition": None, "correlationid": None, "tenant": "acme"}


def test_a_decision_that_is_not_json_costs_its_request_the_reply_not_the_responder(listener, caplog):
    caplog.set_level(logging.INFO)
    decisions = iter([{"is_allowed": {1, 2}}, ALLOW])  # a set: no JSON for it
    running, _, _ = listener(lambda event: next(decisions), timeout=0.5)
    assert running.post(PATH, *authgear_request()).json() == STATIC
    assert running.post(PATH, *authgear_request()).json() == ALLOW
    assert [r.decision for r in decision_lines(caplog)] == ["fallback", "reply"]
    assert [r for r in caplog.records if r.name == "webhookbus.reply" and r.getMessage().startswith("no reply")]


def test_a_request_held_past_hypercorns_read_timeout_still_gets_its_status(webhookbus_listener, topic_name, caplog):
    """hypercorn's read_timeout also runs while the app works after the body's last byte; on a
    timeout hypercorn 0.18 only tells the app the client went (http.disconnect) and still
    writes the app's answer. Held longer than that timeout, on a raw socket: the status arrives."""
    from webhookbus.config import ServerSettings
    from webhookbus.http.engines.hypercorn_engine import hypercorn_config

    server = {"request_timeout": 0.5}
    read_timeout = hypercorn_config(ServerSettings(**server)).read_timeout
    held = read_timeout + 1.0
    running = webhookbus_listener({**config(topic_name("held"), topic_name("replies"), timeout=held), "server": server})
    wait_ready(running.port)
    body, headers = authgear_request()
    head = f"POST {PATH} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", running.port), timeout=held + 10) as client:
        client.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := client.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    # Answered by the fallback after the whole reply timeout (longer than read_timeout by
    # construction), not at once: the request really was held past hypercorn's read timeout.
    assert [r.fallback_reason for r in decision_lines(caplog)] == [f"no reply within {held:g} s"]
