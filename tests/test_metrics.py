"""The admin listener: Prometheus metrics (one worker and forked workers), probes, off the public port.

Counts are checked against the requests each test sent, read back with prometheus-client's
own parser from a real scrape of a real listener publishing to the real broker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from webhookbus.config import ConfigError, parse_config
from webhookbus.testing import free_port, post
from webhookbus.testing.broker import wait_for_port

SECRET = "metrics-test-secret"
PATH = "/webhooks/demo"


def signed(event_id: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": event_id}).encode()
    return body, {"x-signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def settings(topic: str, admin_port: int) -> dict:
    return {
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "providers": {"demo": {"verifier": "hmac", "path": PATH, "secrets": [f"literal:{SECRET}"],
                               "options": {"id_field": "id"}}},
        "routes": [{"topic": topic}],
    }


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value; a pid label (multiprocess) is kept."""
    status, body = get(port, "/metrics")
    assert status == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode()) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def send_mix(port: int, prefix: str, accepted: int, forged: int) -> None:
    """``accepted`` valid events, one retried copy of the first, ``forged`` bad signatures, one unknown path."""
    for index in range(accepted):
        assert post(port, PATH, *signed(f"{prefix}-{index}")).status == 200
    assert post(port, PATH, *signed(f"{prefix}-0")).status == 200  # a provider's retry: a duplicate
    for index in range(forged):
        reply = post(port, PATH, *signed(f"{prefix}-forged-{index}", "not-the-secret"))
        assert reply.status == 401 and reply.json()["error"] == "verification_failed"
    assert post(port, "/nowhere", b"{}").status == 404


def check_counts(samples: dict, topic: str, accepted: int, forged: int, one_process: bool = True) -> None:
    assert value(samples, "webhookbus_requests_total", provider="demo", status="200") == accepted + 1
    assert value(samples, "webhookbus_requests_total", provider="demo", status="401") == forged
    assert value(samples, "webhookbus_requests_total", provider="", status="404") == 1
    assert value(samples, "webhookbus_verification_failures_total", provider="demo",
                 reason="verification_failed") == forged
    published = value(samples, "webhookbus_events_published_total", topic=topic)
    duplicates = value(samples, "webhookbus_duplicates_suppressed_total", provider="demo")
    if one_process:
        assert (published, duplicates) == (accepted, 1)
    else:  # dedup is per process (README): the retry may have reached the other worker
        assert published + duplicates == accepted + 1 and duplicates in (0, 1)
    assert value(samples, "webhookbus_request_duration_seconds_count", provider="demo") == accepted + 1 + forged
    assert value(samples, "webhookbus_request_duration_seconds_bucket", provider="demo", le="+Inf") == accepted + 1 + forged
    assert value(samples, "webhookbus_publish_duration_seconds_count") == published
    assert value(samples, "webhookbus_requests_in_flight") == 0
    assert value(samples, "webhookbus_audit_dropped_total") == 0
    assert ("webhookbus_spool_records", frozenset({("slot", "0")})) in samples


def test_one_worker_counts_what_it_was_sent_on_the_admin_port_only(webhookbus_listener, topic_name):
    admin, topic = free_port(), topic_name("metrics")
    listener = webhookbus_listener(settings(topic, admin))
    send_mix(listener.port, "one", accepted=7, forged=3)
    samples = scrape(admin)
    check_counts(samples, topic, accepted=7, forged=3)
    assert value(samples, "webhookbus_producer_connected") == 1
    assert value(samples, "webhookbus_producer_replacements_total") == 0
    loaded = [labels for (name, labels), v in samples.items() if name == "webhookbus_config_loaded_timestamp_seconds"]
    assert len(loaded) == 1 and abs(samples[("webhookbus_config_loaded_timestamp_seconds", loaded[0])] - time.time()) < 600

    assert get(admin, "/healthz") == (200, b'{"status":"ok"}')
    assert get(admin, "/readyz") == (200, b'{"status":"ready"}')
    assert get(admin, "/nothing")[0] == 404
    assert post(listener.port, "/metrics").status == 404, "metrics are never served on the public port"
    assert b"webhookbus_requests_total" not in post(listener.port, "/metrics", method="GET").body


def test_without_an_admin_section_nothing_is_counted():
    from webhookbus.metrics import Metrics, samples

    for enabled, expected in ((True, [1.0]), (False, [])):
        metrics = Metrics(enabled=enabled)
        metrics.request_started()
        metrics.answered("demo", 200, 0.01)
        assert [v for _, v in samples(metrics.registry, "webhookbus_requests_total")] == expected
        assert [v for _, v in samples(metrics.registry, "webhookbus_requests_in_flight")] == [expected and 1.0 or 0.0]


def test_admin_on_the_public_port_is_a_config_error():
    with pytest.raises(ConfigError, match=r"admin\.port 8080 is server\.port"):
        parse_config("server: {port: 8080}\nadmin: {port: 8080}\n")


@pytest.fixture
def workers(tmp_path: Path, kafka_broker, topic_name) -> Iterator[tuple[int, int, str, subprocess.Popen[bytes]]]:
    port, admin, topic = free_port(), free_port(), topic_name("metrics-workers")
    config = {**settings(topic, admin),
              "server": {"host": "127.0.0.1", "port": port, "workers": 2, "graceful_timeout": 2},
              "kafka": {"bootstrap_servers": [kafka_broker.bootstrap]},
              "spool": {"directory": str(tmp_path / "spool")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "webhookbus.log").open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "serve", "--config",
                                    str(tmp_path / "config.yaml")], stderr=stderr)
    try:
        wait_for_port(port, timeout=20, process=process)
        wait_for_port(admin, timeout=20, process=process)
        yield port, admin, topic, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def test_a_multiproc_dir_in_the_environment_is_not_summed_across_restarts(tmp_path: Path, kafka_broker, topic_name):
    """An image built for gunicorn may set PROMETHEUS_MULTIPROC_DIR: one worker, started twice on it,
    must count each run's requests once and report only its own producer (a dead run's 0 kept
    the admin /readyz at 503)."""
    port, admin, topic = free_port(), free_port(), topic_name("metrics-env-dir")
    config = {**settings(topic, admin), "server": {"host": "127.0.0.1", "port": port, "graceful_timeout": 2},
              "kafka": {"bootstrap_servers": [kafka_broker.bootstrap]}, "spool": {"directory": str(tmp_path / "spool")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    stale = tmp_path / "operator-multiproc-dir"
    stale.mkdir()
    for run in ("first", "second"):
        with (tmp_path / f"{run}.log").open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "serve", "--config",
                                        str(tmp_path / "config.yaml")], stderr=stderr,
                                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(stale)})
        try:
            wait_for_port(admin, timeout=20, process=process)
            deadline = time.monotonic() + 20
            while get(admin, "/readyz")[0] != 200:
                assert time.monotonic() < deadline, (run, get(admin, "/readyz"))
                time.sleep(0.2)
            for index in range(3):
                assert post(port, PATH, *signed(f"{run}-{index}")).status == 200
            samples = scrape(admin)
            assert value(samples, "webhookbus_requests_total", provider="demo", status="200") == 3, run
            assert [v for (name, _), v in samples.items() if name == "webhookbus_producer_connected"] == [1.0], run
        finally:
            process.terminate()
            assert process.wait(30) == 0
    assert list(stale.iterdir()) == [], "nothing written to a directory webhookbus did not make"


def test_one_scrape_sees_every_worker(workers):
    port, admin, topic, process = workers
    deadline = time.monotonic() + 20
    while get(admin, "/readyz")[0] != 200:  # every worker's producer connected
        assert time.monotonic() < deadline, get(admin, "/readyz")
        time.sleep(0.2)
    send_mix(port, "two", accepted=20, forged=6)  # a fresh connection each: spread over both workers
    samples = scrape(admin)
    check_counts(samples, topic, accepted=20, forged=6, one_process=False)
    pids = {dict(labels).get("pid") for (name, labels) in samples if name == "webhookbus_producer_connected"}
    assert len(pids) == 2 and None not in pids, "one producer_connected sample per worker"
    served = {dict(labels)["pid"] for (name, labels), v in samples.items()
              if name == "webhookbus_config_loaded_timestamp_seconds" and v > 0}
    assert served == pids
    assert get(admin, "/healthz")[0] == 200

    process.terminate()
    assert process.wait(30) == 0
    with pytest.raises(OSError):
        get(admin, "/healthz")


def test_a_taken_admin_port_names_the_admin_setting():
    import socket

    from webhookbus.http.server import ListenError, admin_server
    from webhookbus.activity import Snapshot
    from webhookbus.metrics import Metrics, scrape_registry

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = parse_config(f"admin: {{port: {taken.getsockname()[1]}}}\n")
        with pytest.raises(ListenError, match=r"address already in use .*set admin\.port or WEBHOOKBUS_ADMIN__PORT"):
            admin_server(config, scrape_registry(config, Metrics()), Snapshot)


def test_error_codes_beyond_the_bound_count_as_other():
    from webhookbus.metrics import MAX_REASONS, Metrics, samples

    metrics = Metrics()
    for index in range(MAX_REASONS + 5):
        metrics.verification_failed("demo", f"code-{index}")
    metrics.verification_failed("demo", "code-0")
    counted = {labels["reason"]: v for labels, v in samples(metrics.registry, "webhookbus_verification_failures_total")}
    assert len(counted) == MAX_REASONS + 1 and counted["other"] == 5 and counted["code-0"] == 2


def test_a_killed_runs_metrics_directory_is_removed_by_the_next_run():
    import os
    from pathlib import Path

    from webhookbus.metrics import remove_directory, shared_run_directory

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now a dead process's
    first = Path(shared_run_directory())
    remove_directory(first)
    dead = first.with_name(f"webhookbus-metrics-{child.pid}-left")
    dead.mkdir()
    (dead / "counter_1.db").write_bytes(b"\0" * 16)
    ours = Path(shared_run_directory())
    try:
        assert not dead.exists(), "the killed run's directory is gone"
        assert ours.name.startswith(f"webhookbus-metrics-{os.getpid()}-") and ours.is_dir()
    finally:
        remove_directory(ours)


def test_a_listener_whose_admin_port_is_taken_fails_with_the_reason_not_a_timeout(kafka_broker, topic_name):
    """The test listener raises the startup error itself: it used to wait 10 s for the port and
    then report only 'nothing listens' (how a taken 9090 looked like a slow start)."""
    import socket

    from webhookbus.http.server import ListenError
    from webhookbus.testing.listener import Listener

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listener = Listener(settings(topic_name("admin-taken"), taken.getsockname()[1]), kafka_broker.bootstrap, free_port())
        with pytest.raises(ListenError, match="admin.port"):
            listener.__enter__()
        listener.stop()
