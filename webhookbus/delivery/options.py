"""Which Kafka client publishes, and its options from the one vocabulary the config speaks.

``kafka.producer`` takes kafka-python's option names (the base client's, documented for
years).  For confluent-kafka each is translated to its librdkafka property here, or
refused: :func:`untranslatable` runs when the config loads, so an option the chosen client
cannot honour is a config error at startup, never silently dropped.  Nothing here imports
either client.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webhookbus.config import KafkaSettings

CONFLUENT, KAFKA_PYTHON = "confluent", "kafka-python"


def kafka_client(choice: str) -> str:
    """``auto`` is confluent-kafka when installed (``pip install 'webhookbus[fast]'``), else kafka-python."""
    if choice == "auto":
        return CONFLUENT if importlib.util.find_spec("confluent_kafka") is not None else KAFKA_PYTHON
    return choice


def kafka_python_options(settings: KafkaSettings) -> dict[str, Any]:
    """KafkaProducer keyword arguments: our defaults, then the operator's pass-through options."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": settings.acks,
        "enable_idempotence": settings.acks == "all",
        # A send() must not sit on the producer's thread much longer than a request may wait.
        "max_block_ms": int(max(1.0, settings.publish_timeout) * 1000),
        "linger_ms": 0,
        "request_timeout_ms": 10_000,
    }
    options.update(settings.producer)
    # kafka-python retries a record for delivery_timeout_ms (default 2 minutes), and after a
    # broker restart an idempotent producer can spend all of it in an UnknownProducerId
    # "resetting sequence" loop: give up sooner, and the failure replaces the producer.
    options.setdefault("delivery_timeout_ms", max(15_000, options["request_timeout_ms"] + options["linger_ms"]))
    return options


def _same(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {name: value}


# kafka-python option -> the librdkafka properties it means.
_LIBRDKAFKA: dict[str, Callable[[Any], dict[str, Any]]] = {
    "compression_type": lambda codec: {"compression.type": codec or "none"},
    "linger_ms": _same("linger.ms"),
    "batch_size": _same("batch.size"),
    "max_request_size": _same("message.max.bytes"),
    "request_timeout_ms": _same("request.timeout.ms"),
    "delivery_timeout_ms": _same("message.timeout.ms"),
    "retries": _same("retries"),
    "retry_backoff_ms": _same("retry.backoff.ms"),
    "max_in_flight_requests_per_connection": _same("max.in.flight.requests.per.connection"),
    "enable_idempotence": _same("enable.idempotence"),
    "metadata_max_age_ms": _same("metadata.max.age.ms"),
    "reconnect_backoff_ms": _same("reconnect.backoff.ms"),
    "reconnect_backoff_max_ms": _same("reconnect.backoff.max.ms"),
    "connections_max_idle_ms": _same("connections.max.idle.ms"),
    "send_buffer_bytes": _same("socket.send.buffer.bytes"),
    "receive_buffer_bytes": _same("socket.receive.buffer.bytes"),
    "receive_message_max_bytes": _same("receive.message.max.bytes"),
    "security_protocol": lambda protocol: {"security.protocol": str(protocol).lower()},
    "ssl_cafile": _same("ssl.ca.location"),
    "ssl_certfile": _same("ssl.certificate.location"),
    "ssl_keyfile": _same("ssl.key.location"),
    "ssl_password": _same("ssl.key.password"),
    "ssl_crlfile": _same("ssl.crl.location"),
    "ssl_ciphers": _same("ssl.cipher.suites"),
    "ssl_check_hostname": lambda check: {"ssl.endpoint.identification.algorithm": "https" if check else "none"},
    "sasl_mechanism": _same("sasl.mechanism"),
    "sasl_plain_username": _same("sasl.username"),
    "sasl_plain_password": _same("sasl.password"),
    "sasl_kerberos_service_name": _same("sasl.kerberos.service.name"),
    "client_dns_lookup": lambda lookup: {"client.dns.lookup": lookup},
    "allow_auto_create_topics": _same("allow.auto.create.topics"),
}

# Options with a reason instead of a translation.
_NO_EQUIVALENT = {
    "max_block_ms": "confluent-kafka never blocks a send (a request waits at most publish_timeout)",
}


def untranslatable(producer: dict[str, Any]) -> list[str]:
    """The ``kafka.producer`` options confluent-kafka has no equivalent for, each with why."""
    return [f"{name}: {_NO_EQUIVALENT.get(name, 'confluent-kafka (librdkafka) has no equivalent')}"
            for name in sorted(producer) if name not in _LIBRDKAFKA]


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """confluent-kafka Producer properties: the same guarantees as :func:`kafka_python_options`."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": settings.client_id,
        "acks": str(settings.acks),
        "enable.idempotence": settings.acks == "all",
        # 1 ms gathers the records of one loop iteration into one request: 6.8k req/s against
        # 5.8k at 0 and 3.9k at 5 (issue 12's probe; bench/README.md).
        "linger.ms": 1,
        "request.timeout.ms": 10_000,
        # A broker's local socket: Nagle would hold small produce requests for the peer's delayed ACK.
        "socket.nagle.disable": True,
        # kafka-python's (and Java's) partitioner: a key lands on the same partition whichever
        # client published it (librdkafka's default hashes with CRC32), so per-key order holds
        # while workers or instances move from one client to the other.
        "partitioner": "murmur2_random",
        # librdkafka logs each failed connection attempt as an error; its error callback already
        # tells webhookbus (one warning per change, ConfluentPublisher): keep only its critical lines.
        "log_level": 2,
        "log.connection.close": False,
        # kafka-python's max_request_size default, which Delivery checks records against (413).
        "message.max.bytes": 1_048_576,
        # The bound is webhookbus's own (max_in_flight_records, which lets a batch in alone
        # when nothing is in flight); librdkafka's, twice as high, is only a backstop.
        "queue.buffering.max.messages": 2 * settings.max_in_flight_records,
    }
    for name, value in settings.producer.items():
        config.update(_LIBRDKAFKA[name](value))
    config.setdefault("message.timeout.ms", max(15_000, config["request.timeout.ms"] + config["linger.ms"]))
    return config
