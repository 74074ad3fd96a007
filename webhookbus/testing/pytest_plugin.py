"""pytest fixtures for webhookbus and its plugins, registered through the ``pytest11`` entry point.

- ``kafka_broker``: one real broker for the whole session (a :class:`Broker`); ``pytest
  --webhookbus-broker-port N`` starts it on port N, ``--webhookbus-bootstrap HOST:PORT`` uses a
  Kafka that is already running instead (an :class:`ExternalBroker`).
- ``own_broker``: a broker for one test that may stop and restart it.
- ``webhookbus_listener``: a factory; ``webhookbus_listener(config_dict, bootstrap=None, port=None)``
  starts a listener with that config (the YAML file as a dict) on the session broker (or
  ``bootstrap``), on a free port (or ``port``), and stops it after the test.
- ``redis_server``: one real Redis (Debian's ``redis-server``) for the whole session; ``own_redis``:
  one for a test that may kill, pause or restart it (a :class:`RedisServer`).
- ``webhookbus_engine``: the ``server.engine`` listeners get (``auto``); override it in a
  conftest.py, parametrized with :func:`engines`, to run the same tests on every engine.
- ``kafka_client``: parametrizes a test over every Kafka client ``kafka.client: auto`` can
  choose here (kafka-python, and confluent when installed); a test that asks for it (or
  ``pytest.mark.usefixtures("kafka_client")``) gets listeners on that client, unless its
  config names one.
- ``topic_name``: a fresh topic name per call, so tests never read each other's records.
- ``read_events``: ``read_events(topic, count, timeout=10.0)`` waits for ``count`` messages on a
  topic of the session broker and returns them decoded as CloudEvents (fewer after ``timeout``).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# The contract suite's asserts explain a failure only when pytest rewrites them.  It rewrites an
# entry-point plugin's whole distribution only from its installed file list, which an editable
# install (pip install -e) does not have: the bare `pytest` command then failed with empty messages.
pytest.register_assert_rewrite("webhookbus.testing.contract")

from webhookbus.testing.broker import Broker, free_port, read_topic, to_cloudevent
from webhookbus.testing.listener import Listener
from webhookbus.testing.redis import RedisServer


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("webhookbus")
    group.addoption("--webhookbus-broker-port", type=int, help="port of the session's broker (default: a free one)")
    group.addoption("--webhookbus-bootstrap", metavar="HOST:PORT",
                    help="use this running Kafka as kafka_broker instead of starting one")


@dataclass(frozen=True)
class ExternalBroker:
    """A Kafka the tests did not start (``--webhookbus-bootstrap``): it is neither started nor stopped."""

    bootstrap: str


@pytest.fixture(scope="session")
def kafka_broker(pytestconfig: pytest.Config) -> Iterator[Broker | ExternalBroker]:
    external = pytestconfig.getoption("webhookbus_bootstrap")
    if external:
        yield ExternalBroker(external)
        return
    port = pytestconfig.getoption("webhookbus_broker_port")
    broker = (Broker() if port is None else Broker(port=port)).start()
    yield broker
    broker.stop()


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    broker = Broker().start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def engines() -> list[str]:
    """The engines ``server.engine: auto`` can choose, of those installed here."""
    from webhookbus.http.engines import ENGINES, missing

    return [name for name in ENGINES if not missing(name)]


@pytest.fixture
def webhookbus_engine() -> str:
    return "auto"


KAFKA_CLIENTS = ["kafka-python"] + (["confluent"] if importlib.util.find_spec("confluent_kafka") else [])


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    return request.param


def with_client(settings: dict[str, Any], client: str | None) -> dict[str, Any]:
    """``settings`` with ``kafka.client`` set to ``client``, unless they name one already."""
    if client is None:
        return settings
    return {**settings, "kafka": {"client": client, **settings.get("kafka", {})}}


@pytest.fixture
def webhookbus_listener(kafka_broker: Broker | ExternalBroker, webhookbus_engine: str,
                        request: pytest.FixtureRequest) -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []
    client = request.getfixturevalue("kafka_client") if "kafka_client" in request.fixturenames else None

    def start(settings: dict[str, Any], bootstrap: str | None = None, port: int | None = None) -> Listener:
        listener = Listener(with_client(settings, client), bootstrap or kafka_broker.bootstrap,
                            free_port() if port is None else port, engine=webhookbus_engine)
        listener.__enter__()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def topic_name() -> Callable[[str], str]:
    return lambda prefix="t": f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def read_events(kafka_broker: Broker | ExternalBroker) -> Callable[..., list[Any]]:
    def read(topic: str, count: int, timeout: float = 10.0) -> list[Any]:
        return [to_cloudevent(record) for record in read_topic(kafka_broker.bootstrap, topic, count, timeout)]

    return read
