"""The parts of bench/ that need no load generator: signed requests the real verifier
accepts, the request file wrk replays, wrk's report, and the delivered-events counter."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from measure import WrkRun, delivered_events, parse_wrk, surely_answered  # noqa: E402
from run import MINIMAL, Result, median_of, ratios  # noqa: E402
from signed import SECRET, event_ids, signed_requests, write_wrk_file  # noqa: E402

from webhookbus.plugin import InboundRequest, VerificationFailed  # noqa: E402
from webhookbus.verifiers.uip import UipOptions, UipVerifier  # noqa: E402


@pytest.mark.parametrize("size", [600, 10_000])
def test_signed_requests_are_distinct_events_the_uip_verifier_accepts(size):
    requests = signed_requests(["/a", "/b"], size, 4, start=7)
    verifier = UipVerifier(UipOptions(), (SECRET.encode(),))
    for index, request in enumerate(requests):
        assert len(request.body) == size
        assert request.path == ["/a", "/b"][index % 2]
        inbound = InboundRequest("uip", "POST", request.path, "", request.headers(), request.body,
                                 datetime.now(timezone.utc))
        [event] = verifier.verify(inbound).events
        assert event.id == f"audit_{7 + index:010d}"
    assert event_ids(r.body for r in requests + requests) == {f"audit_{i:010d}".encode() for i in range(7, 11)}
    assert not event_ids([b"no id here"])
    tampered = requests[0].body.replace(b"John", b"Jane")
    with pytest.raises(VerificationFailed):
        verifier.verify(InboundRequest("uip", "POST", "/a", "", requests[0].headers(), tampered,
                                       datetime.now(timezone.utc)))


def test_request_file_has_the_lines_presigned_lua_parses(tmp_path):
    requests = signed_requests(["/webhooks/uip"], 600, 3)
    lines = write_wrk_file(requests, tmp_path / "requests.txt").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    for line, request in zip(lines, requests):
        path, signature, body = re.fullmatch(rb"([^\t]*)\t([^\t]*)\t(.*)", line).groups()  # presigned.lua's pattern
        assert (path.decode(), signature.decode(), body) == (request.path, request.signature, request.body)


def test_wrk_report_line():
    output = ("Running 1s test\n  1 threads and 32 connections\n"
              'WRK {"requests":2000,"duration_us":1000000,"status_errors":5,"connect":0,"read":1,"write":0,'
              '"timeout":2,"p50_us":1500,"p99_us":9000,"p999_us":12000,"max_us":15000,"next":2040,'
              '"late":3,"late_ms_sum":6.000,"late_ms_max":4.000}\n')
    run = parse_wrk(output)
    assert (run.rps, run.accepted, run.errors, run.next, run.low) == (2000, 1995, 8, 2040, 2040)
    assert parse_wrk(output.replace('"next":2040,', '"next":2040,"low":2031,')).low == 2031
    assert (run.p50_ms, run.p99_ms, run.p999_ms, run.late, run.late_ms_max) == (1.5, 9.0, 12.0, 3, 4.0)


def test_a_wrapped_run_expects_only_the_lines_it_certainly_had_answered():
    def run(next_line: int, low: int) -> WrkRun:
        return WrkRun(requests=0, seconds=1, status_errors=0, socket_errors=0, p50_ms=0, p99_ms=0, p999_ms=0,
                      max_ms=0, next=next_line, low=low)

    # 100 lines, 4 connections.  Phase one took lines 0-59 (its slowest thread was at 58), so
    # 0-53 were answered; phase two took 60-139 and wrapped onto lines 0-39: 60-135 answered.
    # Lines 54-59 may never have been sent: at most 100 - 6 lines can be expected on the topic.
    assert surely_answered([run(60, 58), run(140, 140)], 0, 100, 4) == 94
    # Had phase two wrapped past them, they were sent again and answered.
    assert surely_answered([run(60, 58), run(170, 170)], 0, 100, 4) == 100
    assert surely_answered([run(3, 3)], 0, 100, 4) == 0


def test_delivered_events_counts_records_and_distinct_event_ids(kafka_broker, topic_name):
    topic = topic_name("bench")
    bodies = [r.body for r in signed_requests(["/a"], 600, 3)]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for body in bodies + bodies[:1]:  # one event twice, as a provider's retry would
        producer.send(topic, body)
    producer.flush()
    producer.close()
    assert delivered_events(kafka_broker.bootstrap, topic, timeout=20) == (4, 3)


def test_targets_are_read_from_one_run():
    results = [Result("webhookbus, 1 worker, ack=broker", rps=5000, p99_ms=5, peak_rss_mb=60, cpu_per_1k=0.25),
               Result("Express + kafkajs", rps=2000, p99_ms=6, cpu_per_1k=0.4),
               Result(MINIMAL, rps=9000),
               Result("bare hypercorn, answers 200", rps=9000)]
    targets = ratios(results)["targets"]
    assert targets["throughput vs Express+kafkajs (>= 2.0x)"]["met"]  # 2.5x
    assert not targets["CPU per request vs Express+kafkajs (<= 0.5x)"]["met"]  # 0.625x
    assert not targets["throughput vs the minimal pipeline (>= 0.6x)"]["met"]  # 0.56x
    assert targets["p99 at the fixed rate vs Express+kafkajs (<= 1x)"]["met"]
    assert not targets["best 1-worker mode vs bare hypercorn (>= 0.75x)"]["met"]  # 0.56x
    assert targets["peak RSS of one worker (< 120 MB)"]["met"]


def test_rounds_merge_into_medians_and_keep_every_loss():
    rounds = (Result("w", rps=2000, p99_ms=9, accepted=10, delivered=10, peak_rss_mb=80, cpu_per_1k=0.5),
              Result("w", rps=3000, p99_ms=5, accepted=10, delivered=9, lost=1, peak_rss_mb=85, cpu_per_1k=0.4),
              Result("w", rps=2500, p99_ms=7, accepted=10, delivered=10, peak_rss_mb=82, cpu_per_1k=0.45))
    merged = median_of(rounds)
    assert (merged.rps, merged.p99_ms, merged.cpu_per_1k) == (2500, 7, 0.45)
    assert (merged.accepted, merged.delivered, merged.lost, merged.peak_rss_mb) == (30, 29, 1, 85)
    assert merged.extra["rounds_rps"] == [2000, 3000, 2500]


def test_blocking_hook_requests_are_user_pre_create_events_the_authgear_verifier_accepts():
    from blocking_hook import PATH, SECRET as HOOK_SECRET, request

    from webhookbus.verifiers.authgear import AuthgearOptions, AuthgearVerifier

    verifier = AuthgearVerifier(AuthgearOptions(), (HOOK_SECRET,))
    for index in (0, 1):
        body, headers = request(index)
        inbound = InboundRequest("authgear", "POST", PATH, "", {k.lower(): v for k, v in headers.items()}, body,
                                 datetime.now(timezone.utc))
        accepted = verifier.verify(inbound)
        assert accepted.events[0].name == "user.pre_create" and accepted.response is not None
        email = accepted.events[0].data["payload"]["user"]["standard_attributes"]["email"]
        assert email.endswith("@blocked.test") is (index == 0), "one in ten is for the policy to deny"


def test_stages_times_every_step_of_a_request_that_is_accepted():
    import subprocess

    result = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "stages.py"),
                             "--count", "300"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = dict(re.fullmatch(r"(.+?)\s+([\d.]+) us", line).groups() for line in result.stdout.splitlines())
    assert len(figures) == 8 and all(float(us) > 0 for us in figures.values())
    assert "Traceback" not in result.stderr
