"""Which Kafka topics an event goes to: pure functions over the config's routes, no I/O.

Every matching route gets the event (fan-out).  An event no route matches follows the
``unrouted`` policy: dropped with a log line, or sent to a fallback topic.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from webhookbus.config import RouteSettings, Settings
from webhookbus.events import CloudEvent, canonical_text, encode_binary, encode_structured, record_key
from webhookbus.pii import apply as apply_pii
from webhookbus.delivery.records import KafkaMessage


def route_matches(route: RouteSettings, event: CloudEvent) -> bool:
    return _names_match(route, event.source, event.type) and _where_matches(route, event)


def _names_match(route: RouteSettings, source: str, type_: str) -> bool:
    return fnmatchcase(source, route.provider) and any(fnmatchcase(type_, pattern) for pattern in route.type)


def _where_matches(route: RouteSettings, event: CloudEvent) -> bool:
    return all(_equal(event.field(path), expected) for path, expected in route.where.items())


def _equal(actual: object, expected: object) -> bool:
    """YAML ``where: {data.count: 3}`` also matches a provider that sent ``"3"``.

    Booleans compare by their JSON spelling: ``true`` matches ``true`` and ``"true"``, never
    ``1`` (which Python holds equal to ``True``) nor Python's ``"True"``.
    """
    if actual is None:
        return expected is None
    if isinstance(actual, bool) or isinstance(expected, bool):
        return canonical_text(actual) == canonical_text(expected)
    return actual == expected or str(actual) == str(expected)


def message_for(route: RouteSettings, event: CloudEvent, name: str) -> KafkaMessage:
    """The route's record of ``event``; PII rules apply before the key is read, so a key on a
    hashed field is the hash."""
    if route.pii is not None and route.pii.changes:
        event = apply_pii(route.pii, event)
    encode = encode_binary if route.mode == "binary" else encode_structured
    value, headers = encode(event, route.include_raw_body)
    key = event.field(route.key)
    return KafkaMessage(route.topic, None if key is None else record_key(key), value, headers, name)


def messages_for(settings: Settings, event: CloudEvent) -> list[KafkaMessage]:
    """The records one event becomes; empty when it is unrouted and the policy is drop."""
    messages = [
        message_for(route, event, route.name or f"routes[{index}]")
        for index, route in _candidates(settings.routes, event.source, event.type)
        if _where_matches(route, event)
    ]
    if not messages and settings.unrouted.action == "topic":
        assert settings.unrouted.topic is not None
        fallback = RouteSettings(topic=settings.unrouted.topic)
        messages.append(message_for(fallback, event, "unrouted"))
    return messages


def reply_route(settings: Settings, event: CloudEvent) -> RouteSettings | None:
    """The first matching route with a ``reply``: a Kafka consumer decides this event's answer."""
    return next((route for _, route in _candidates(settings.routes, event.source, event.type)
                 if route.reply is not None and _where_matches(route, event)), None)


_CANDIDATES: dict[int, tuple[list[RouteSettings], dict[tuple[str, str], list[tuple[int, RouteSettings]]]]] = {}


def _candidates(routes: list[RouteSettings], source: str, type_: str) -> list[tuple[int, RouteSettings]]:
    """The routes whose provider and type globs match, worked out once per (source, type).

    One provider sends a handful of event types, so this turns matching every route's globs
    for every event (a cost that grew with the number of routes in the benchmark) into a
    dict lookup.  Keyed by the routes list, which the entry keeps alive so its id stays its
    own; a config is not edited in place once loaded.  Bounded: event types come from
    payloads (verified ones, but a provider may mint many).
    """
    entry = _CANDIDATES.get(id(routes))
    if entry is None:
        if len(_CANDIDATES) >= 64:
            _CANDIDATES.clear()
        entry = _CANDIDATES[id(routes)] = (routes, {})
    by_name = entry[1]
    found = by_name.get((source, type_))
    if found is None:
        if len(by_name) >= 4096:
            by_name.clear()
        found = by_name[(source, type_)] = [
            (index, route) for index, route in enumerate(routes) if _names_match(route, source, type_)
        ]
    return found
