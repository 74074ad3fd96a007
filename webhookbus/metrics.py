"""Prometheus metrics of one listener process, and the registry a scrape reads.

Each process's :class:`Metrics` is built with its application (never at import), so one
test process can run several listeners without their counts mixing.  With
``server.workers`` above one, :func:`share_between_processes` first switches
prometheus-client to its multiprocess mode on a directory made for this run: every worker
writes its values to its own memory-mapped file there and the admin listener, in the
parent, sums them (:func:`scrape_registry`), so one scrape sees every worker.

The hot path pays one method call per event worth counting: label children are bound
once per provider, status and topic and kept in plain dicts, so a request builds no label
tuples.  Without an ``admin:`` section nothing is counted (every method returns at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from webhookbus.config import Config
from webhookbus.delivery.spool import spool_status
from webhookbus.delivery.records import KafkaMessage

ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a millisecond (a spooled or refused request) to the 10 s request_timeout.
MAX_REASONS = 200  # (provider, error code) pairs; beyond, refusals count as reason="other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# prometheus-client picked its value store from the environment when it was imported.  A
# PROMETHEUS_MULTIPROC_DIR the environment already carries (images built for gunicorn set one)
# is not this run's: its files outlive the processes that wrote them, so after a restart a
# scrape summed the previous run's counts with this one's and kept the dead process's
# webhookbus_producer_connected 0 (the admin /readyz never ready again).  Each process counts
# for itself until share_between_processes names this run's own directory; forked workers
# inherit that, and nothing imports this module afresh after it.
os.environ.pop(ENV, None)
values.ValueClass = values.get_value_class()


def shared_run_directory() -> str:
    """A fresh directory for this run's multiprocess files, in memory (``/dev/shm``) where there is
    one: every counted event writes a memory-mapped page, which on a disk-backed filesystem the
    kernel keeps writing back (and faulting in again) for nothing."""
    memory = "/dev/shm"
    where = memory if os.path.isdir(memory) and os.access(memory, os.W_OK) else tempfile.gettempdir()
    for left in Path(where).glob("webhookbus-metrics-*-*"):  # a run killed with SIGKILL cannot remove its own
        pid = left.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"webhookbus-metrics-{os.getpid()}-", dir=where)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def share_between_processes(directory: str | os.PathLike[str]) -> None:
    """Metrics built from now on, here and in forked children, live in ``directory`` (empty, this run's).

    prometheus-client picks its value store when it is first imported, from the
    environment; it is picked again here because it was imported with webhookbus.
    """
    os.environ[ENV] = str(directory)
    values.ValueClass = values.get_value_class()


def shared_directory() -> str | None:
    """The multiprocess directory when metrics are shared between processes, else None."""
    return os.environ.get(ENV) if getattr(values.ValueClass, "_multiprocess", False) else None


def config_version(config: Config) -> str:
    """A short digest of the settings, to tell which config a process serves (no secret in it:
    secret references are replaced by their position, producer options by their names)."""
    settings = config.settings.model_dump(mode="json")
    for provider in settings["providers"].values():
        provider["secrets"] = len(provider["secrets"])
    settings["kafka"]["producer"] = sorted(settings["kafka"]["producer"])
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class Metrics:
    """The counters one listener process updates; see the README's metrics table."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("webhookbus_requests", "Webhook requests answered, by provider and HTTP status.",
                                ["provider", "status"], registry=registry)
        self.request_seconds = Histogram("webhookbus_request_duration_seconds",
                                         "Time from a webhook request's start to its answer.", ["provider"],
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.verification_failures = Counter("webhookbus_verification_failures",
                                             "Requests the verifier refused, by provider and error code.",
                                             ["provider", "reason"], registry=registry)
        self.events_published = Counter("webhookbus_events_published", "Kafka records the broker acknowledged, by topic.",
                                        ["topic"], registry=registry)
        self.duplicates = Counter("webhookbus_duplicates_suppressed",
                                  "Events answered 2xx without publishing: their id was already accepted.",
                                  ["provider"], registry=registry)
        self.dedup_unavailable_requests = Counter(
            "webhookbus_dedup_unavailable",
            "Requests the Redis dedup store could not answer in time, by provider and on_dedup_unavailable policy.",
            ["provider", "policy"], registry=registry)
        self.publish_seconds = Histogram("webhookbus_publish_duration_seconds",
                                         "Time from handing a request's records to the producer to the broker's answer.",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("webhookbus_requests_in_flight", "Webhook requests being handled now.",
                               registry=registry, multiprocess_mode="livesum")
        self.producer_replacements = Counter(
            "webhookbus_producer_replacements",
            "Kafka producers replaced: a failed producer in its process (producer), or the producer process (process).",
            ["kind"], registry=registry)
        self.producer_connected = Gauge("webhookbus_producer_connected",
                                        "1 while the process's Kafka producer is connected.",
                                        registry=registry, multiprocess_mode="liveall")
        self.audit_dropped = Counter("webhookbus_audit_dropped", "Audit events dropped by audit.max_per_second.",
                                     registry=registry)
        self.held_requests = Counter("webhookbus_held_requests",
                                     "Requests held for a Kafka consumer's decision (route reply), by provider and "
                                     "outcome: reply, or the fallback after invalid, timed_out, not_ready, duplicate.",
                                     ["provider", "outcome"], registry=registry)
        self.handshakes = Counter("webhookbus_handshakes",
                                  "Requests a verifier answered with a Reply (a handshake or challenge: no events), "
                                  "by provider.", ["provider"], registry=registry)
        self.replies_dropped = Counter("webhookbus_replies_dropped",
                                       "Replies no request waited for: late, or not meant for this process.",
                                       registry=registry)
        self.config_reloads = Counter("webhookbus_config_reloads", "Config reloads, by result (ok, refused).",
                                      ["result"], registry=registry)
        self.config_loaded = Gauge("webhookbus_config_loaded_timestamp_seconds",
                                   "When the process loaded the config it serves, by config version.",
                                   ["version"], registry=registry, multiprocess_mode="liveall")
        self._providers: dict[str, tuple[Any, dict[int, Any]]] = {}
        self._topics: dict[str, Any] = {}
        self._reasons: dict[tuple[str, str], Any] = {}
        self._in_flight = self.in_flight if enabled else None
        self._version: str | None = None

    # -- the request path: cheap, and nothing at all when disabled ----------------------

    def request_started(self) -> None:
        if self._in_flight is not None:
            self._in_flight.inc()

    def request_ended(self) -> None:
        if self._in_flight is not None:
            self._in_flight.dec()

    def answered(self, provider: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        bound = self._providers.get(provider)
        if bound is None:
            bound = self._providers[provider] = (self.request_seconds.labels(provider), {})
        counter = bound[1].get(status)
        if counter is None:
            counter = bound[1][status] = self.requests.labels(provider, str(status))
        counter.inc()
        bound[0].observe(seconds)

    def verification_failed(self, provider: str, reason: str) -> None:
        if not self.enabled:
            return
        child = self._reasons.get((provider, reason))
        if child is None:
            # A plugin building its error code from the request would add a series per forgery.
            if len(self._reasons) >= MAX_REASONS:
                reason = "other"
            child = self._reasons[(provider, reason)] = self.verification_failures.labels(provider, reason)
        child.inc()

    def published(self, messages: Sequence[KafkaMessage], failed: Sequence[int]) -> None:
        if not self.enabled:
            return
        topics = self._topics
        for index, message in enumerate(messages):
            if failed and index in failed:
                continue
            child = topics.get(message.topic)
            if child is None:
                child = topics[message.topic] = self.events_published.labels(message.topic)
            child.inc()

    def publish_took(self, seconds: float) -> None:
        if self.enabled:
            self.publish_seconds.observe(seconds)

    def duplicates_suppressed(self, provider: str, count: int) -> None:
        if self.enabled:
            self.duplicates.labels(provider).inc(count)

    # -- rarer events ------------------------------------------------------------------

    def dedup_unavailable(self, provider: str, policy: str) -> None:
        if self.enabled:
            self.dedup_unavailable_requests.labels(provider, policy).inc()

    def producer_status(self, connected: bool, replaced: str | None = None) -> None:
        if self.enabled:
            self.producer_connected.set(1 if connected else 0)
            if replaced is not None:
                self.producer_replacements.labels(replaced).inc()

    def audit_drop(self) -> None:
        if self.enabled:
            self.audit_dropped.inc()

    def held_request(self, provider: str, outcome: str) -> None:
        if self.enabled:
            self.held_requests.labels(provider, outcome).inc()

    def handshake(self, provider: str) -> None:
        if self.enabled:
            self.handshakes.labels(provider).inc()

    def reply_dropped(self) -> None:
        if self.enabled:
            self.replies_dropped.inc()

    def config_reload(self, ok: bool) -> None:
        """For the reload: count its result (``webhookbus_config_reloads_total{result}``)."""
        if self.enabled:
            self.config_reloads.labels("ok" if ok else "refused").inc()

    def serving(self, config: Config, loaded_at: float | None = None) -> None:
        """The process serves ``config`` from now on (at start, and after a reload)."""
        if not self.enabled:
            return
        version = config_version(config)
        if self._version is not None and self._version != version:
            # A multiprocess file keeps every label set it saw: zero the old one, then forget it.
            self.config_loaded.labels(self._version).set(0)
            self.config_loaded.remove(self._version)
        self._version = version
        self.config_loaded.labels(version).set(loaded_at or time.time())


class SpoolCollector:
    """Spool depth, size and oldest record's age per slot, read from disk at scrape time:
    what every process (and one that died) left, without a worker having to report it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        records = GaugeMetricFamily("webhookbus_spool_records", "Records in a spool slot not yet acked by Kafka.",
                                    labels=["slot"])
        size = GaugeMetricFamily("webhookbus_spool_bytes", "Bytes a spool slot holds on disk.", labels=["slot"])
        age = GaugeMetricFamily("webhookbus_spool_oldest_age_seconds",
                                "Age of a spool slot's oldest record not yet acked (0: none).", labels=["slot"])
        now = time.time()
        for slot in spool_status(self.directory):
            records.add_metric([slot.slot], slot.records)
            size.add_metric([slot.slot], slot.bytes)
            age.add_metric([slot.slot], max(0.0, now - slot.oldest) if slot.oldest is not None else 0.0)
        yield from (records, size, age)


def scrape_registry(config: Config, metrics: Metrics | None = None) -> CollectorRegistry:
    """What ``/metrics`` serves: ``metrics`` of this process, or every process's from the
    shared directory; and the spool's slots."""
    registry = CollectorRegistry()
    directory = shared_directory()
    if directory is not None:
        MultiProcessCollector(registry, path=directory)
    elif metrics is not None:
        registry.register(metrics.registry)
    registry.register(SpoolCollector(config.settings.spool.directory))
    return registry


def samples(source: CollectorRegistry | Sequence[Metric], name: str) -> Iterable[tuple[dict[str, str], float]]:
    """Label sets and values of one metric's samples (``name`` as exposed, e.g. ``..._total``), from a
    registry or from families it already collected (a collection reads every worker's files)."""
    for family in source.collect() if isinstance(source, CollectorRegistry) else source:
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def remove_directory(directory: str | os.PathLike[str]) -> None:
    for path in Path(directory).iterdir():  # the workers' metric files and activity (webhookbus.activity)
        path.unlink(missing_ok=True)
    Path(directory).rmdir()
