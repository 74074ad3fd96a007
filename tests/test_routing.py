"""Routing is pure: events in, Kafka messages out."""

from __future__ import annotations

import json
import dataclasses
from datetime import datetime, timezone

from webhookbus.config import RouteSettings, Settings
from webhookbus.events import CloudEvent
from webhookbus.routing import messages_for, route_matches

EVENT = CloudEvent(
    id="e1", source="uip", type="uip.identify", time=datetime(2026, 1, 2, tzinfo=timezone.utc),
    subject="user_1", data={"event": "identify", "data": {"country_of_origin": "US", "age": 30}},
)


def route(**fields) -> RouteSettings:
    return RouteSettings(topic="t", **fields)


def test_globs_on_provider_and_type():
    assert route_matches(route(), EVENT)
    assert route_matches(route(provider="ui*", type="uip.*"), EVENT)
    assert route_matches(route(type=["uip.sign", "uip.identify"]), EVENT)
    assert not route_matches(route(provider="unloq"), EVENT)
    assert not route_matches(route(type="uip.sign"), EVENT)
    assert not route_matches(route(type="UIP.*"), EVENT), "globs are case-sensitive"


def test_where_compares_dotted_fields():
    assert route_matches(route(where={"data.data.country_of_origin": "US"}), EVENT)
    assert route_matches(route(where={"data.data.age": "30"}), EVENT), "YAML scalars compare as text too"
    assert route_matches(route(where={"subject": "user_1", "data.event": "identify"}), EVENT)
    assert not route_matches(route(where={"data.data.country_of_origin": "SE"}), EVENT)
    assert not route_matches(route(where={"data.missing.field": "x"}), EVENT)


def test_fan_out_keys_and_fallback():
    settings = Settings(
        routes=[{"topic": "all"}, {"topic": "by-country", "key": "data.data.country_of_origin", "mode": "binary"},
                {"topic": "never", "provider": "zignsec"}],
        unrouted={"action": "topic", "topic": "fallback"},
    )
    messages = messages_for(settings, EVENT)
    assert [(m.topic, m.key) for m in messages] == [("all", b"user_1"), ("by-country", b"US")]
    structured, binary = messages
    assert json.loads(structured.value)["data"] == EVENT.data
    assert dict(binary.headers)["ce_id"] == b"e1" and json.loads(binary.value) == EVENT.data

    unrouted = CloudEvent(id="e2", source="other", type="other.x", time=EVENT.time, data={})
    only = Settings(routes=[{"topic": "uip-only", "provider": "uip"}], unrouted={"action": "topic", "topic": "fallback"})
    assert [m.topic for m in messages_for(only, unrouted)] == ["fallback"]
    assert messages_for(Settings(routes=[{"topic": "uip-only", "provider": "uip"}]), unrouted) == []


def test_remembered_matches_stay_per_event_type_where_clause_and_config():
    """messages_for remembers which routes' globs match a (source, type): check it never
    answers for the wrong type, skips a where clause, or serves one config's routes to another."""
    settings = Settings(routes=[{"topic": "ids", "type": "uip.identify"}, {"topic": "signs", "type": "uip.sign"},
                                {"topic": "us", "where": {"data.data.country_of_origin": "US"}}])
    sign = CloudEvent(id="e3", source="uip", type="uip.sign", time=EVENT.time, data={"data": {}})
    for _ in range(2):  # the second pass is served from what the first remembered
        assert [m.topic for m in messages_for(settings, EVENT)] == ["ids", "us"]
        assert [m.topic for m in messages_for(settings, sign)] == ["signs"]
    other = Settings(routes=[{"topic": "elsewhere"}])
    assert [m.topic for m in messages_for(other, EVENT)] == ["elsewhere"]
    assert [m.topic for m in messages_for(settings, EVENT)] == ["ids", "us"]


def test_where_compares_booleans_by_their_json_spelling_never_as_numbers():
    event = dataclasses.replace(EVENT, data={"admin": True, "count": 1, "flag": "true", "python": "True"})
    assert route_matches(route(where={"data.admin": True}), event)
    assert route_matches(route(where={"data.flag": True}), event), "a provider that sends the text"
    assert not route_matches(route(where={"data.count": True}), event), "1 is not true"
    assert not route_matches(route(where={"data.admin": 1}), event)
    assert not route_matches(route(where={"data.python": True}), event)


def test_a_key_from_a_field_is_its_utf8_text_or_its_json_never_a_python_repr():
    event = dataclasses.replace(EVENT, data={"user": {"id": 1}, "admin": True, "n": 7, "name": "b\ud800d"})
    settings = Settings(routes=[{"topic": "t", "key": f"data.{field}"} for field in ("user", "admin", "n", "name")])
    keys = [m.key for m in messages_for(settings, event)]
    assert keys == [b'{"id":1}', b"true", b"7", "b\ufffdd".encode()]


def test_a_route_can_key_on_the_time_attribute():
    [message] = messages_for(Settings(routes=[{"topic": "t", "key": "time"}]), EVENT)
    assert message.key == b"2026-01-02T00:00:00Z"
