"""PII rules of a route: fields dropped, hashed or masked before an event becomes a record.

Identity webhooks carry names, dates of birth, national ids, e-mail and IP addresses.  A
route that feeds a wide-audience topic can strip them while a restricted topic keeps the
whole event: the rules belong to the route, not the provider, and are applied to a copy
(fan-out shares one event between routes).  ``hash`` is a keyed HMAC-SHA256, so a value
stays joinable across topics and providers without being readable or guessable from a list
of e-mail addresses; the key is a secret reference (``env:``/``file:``) resolved when the
config loads, like a provider's secrets.

Pure functions over :class:`~webhookbus.events.CloudEvent`: no I/O, no server, no producer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from webhookbus.events import CloudEvent

if TYPE_CHECKING:
    from webhookbus.config import Config, RouteSettings

MASK = "***"
_DROPPED = object()


def _path(value: str) -> str:
    parts = value.split(".")
    if value != "subject" and (parts[0] != "data" or len(parts) < 2 or not all(parts)):
        raise ValueError(f"{value!r}: a PII rule names 'subject' or a dotted data field such as 'data.user.email' "
                         "('*' for every element of an array: 'data.users.*.email')")
    return value


Path = Annotated[str, AfterValidator(_path)]


class PiiRules(BaseModel):
    """``routes[].pii``: dotted paths (``data.user.email``, ``data.users.*.email``, ``subject``)."""

    model_config = ConfigDict(extra="forbid")

    drop: list[Path] = Field(default_factory=list, description="Fields removed from the data.")
    hash: list[Path] = Field(default_factory=list, description="Fields replaced by the hex HMAC-SHA256 of their value.")
    mask: list[Path] = Field(default_factory=list, description=f"Fields replaced by {MASK!r}.")
    keep: list[Path] = Field(default_factory=list, description="Fields published as they are on purpose (a "
                             "restricted topic): silences `webhookbus check`'s warning about them.")
    hash_key: str | None = Field(None, description="The HMAC key for 'hash': env:NAME or file:/path, never inline.")
    _key: bytes | None = PrivateAttr(None)  # resolved by the config loader; never in the settings' repr

    @field_validator("hash_key")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("env:", "file:")):
            raise ValueError("the hash key must be a reference: 'env:NAME' or 'file:/path'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PiiRules:
        named = self.paths
        twice = sorted({path for path in named if named.count(path) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)}: one rule per field (drop, hash, mask or keep)")
        if self.hash and self.hash_key is None:
            raise ValueError("hash needs a hash_key (env:NAME or file:/path)")
        return self

    def use_key(self, key: bytes) -> None:
        self._key = key

    @property
    def paths(self) -> list[str]:
        return [*self.drop, *self.hash, *self.mask, *self.keep]

    @property
    def changes(self) -> bool:
        """Whether the rules change events (``keep`` alone does not)."""
        return bool(self.drop or self.hash or self.mask)


def apply(rules: PiiRules, event: CloudEvent) -> CloudEvent:
    """``event`` with the rules applied: a new event whose data is re-serialised (``data_json``
    dropped), sharing every part of the data no rule touched."""
    data, subject = event.data, event.subject
    for paths, change in ((rules.drop, _drop), (rules.hash, _hasher(rules)), (rules.mask, _mask)):
        for path in paths:
            if path == "subject":
                subject = None if subject is None or change is _drop else change(subject)
            else:
                data = _rewrite(data, path.split(".")[1:], change)
    return replace(event, data=data, subject=subject, data_json=None)


def _drop(_: Any) -> Any:
    return _DROPPED


def _mask(value: Any) -> Any:
    return None if value is None else MASK


def _hasher(rules: PiiRules) -> Callable[[Any], Any]:
    def digest(value: Any) -> Any:
        if value is None:
            return None
        assert rules._key is not None, "PiiRules.use_key() was not called"
        return hmac.new(rules._key, _canonical(value), hashlib.sha256).hexdigest()

    return digest


def _canonical(value: Any) -> bytes:
    """Text as its UTF-8, anything else as sorted compact JSON, so ``"42"`` and ``42`` differ
    but the same object hashes alike whatever order its keys came in."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _rewrite(node: Any, parts: Sequence[str], change: Callable[[Any], Any]) -> Any:
    """``node`` with ``change`` applied at ``parts``, copying only the containers on the way."""
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(node, list):
            return node
        items = [_rewrite(item, rest, change) if rest else change(item) for item in node]
        return [item for item in items if item is not _DROPPED]
    if not isinstance(node, dict) or head not in node:
        return node
    value = _rewrite(node[head], rest, change) if rest else change(node[head])
    copy = dict(node)
    if value is _DROPPED:
        del copy[head]
    else:
        copy[head] = value
    return copy


def covers(rule: str, field: str) -> bool:
    """Whether a rule on ``rule`` also removes ``field`` (the same path, or a parent of it)."""
    rule_parts, field_parts = rule.split("."), field.split(".")
    return len(rule_parts) <= len(field_parts) and all(
        r == f or r == "*" for r, f in zip(rule_parts, field_parts))


def unprotected(pii_fields: Iterable[str], rules: PiiRules | None) -> list[str]:
    paths = rules.paths if rules is not None else []
    return [field for field in pii_fields if not any(covers(rule, field) for rule in paths)]


def pii_fields(verifier: object) -> Sequence[str]:
    """What a verifier declares personal data in its events (``pii_fields``, see docs/plugins.md)."""
    return tuple(getattr(type(verifier), "pii_fields", ()))


def pii_warnings(config: Config) -> list[str]:
    """Routes (and the unrouted topic) that send a field their provider's verifier lists as
    PII to a topic without a rule dropping, hashing or masking it; one line per route."""
    targets: list[tuple[str, RouteSettings]] = [
        (f"routes[{index}]" + (f" ({route.name})" if route.name else ""), route)
        for index, route in enumerate(config.settings.routes)]
    unrouted = config.settings.unrouted
    if unrouted.action == "topic" and unrouted.topic:
        from webhookbus.config import RouteSettings

        targets.append(("unrouted", RouteSettings(topic=unrouted.topic)))
    warnings = []
    for where, route in targets:
        missing = [f"{name}: {', '.join(fields)}" for name, provider in config.providers.items()
                   if _may_send(route, name) and (fields := unprotected(pii_fields(provider.verifier), route.pii))]
        if missing:
            warnings.append(f"{where} sends PII to topic {route.topic} without a pii rule (drop, hash, mask or keep): "
                            f"{'; '.join(missing)}")
    return warnings


def _may_send(route: RouteSettings, provider: str) -> bool:
    """Whether the route's provider and type globs can match an event of ``provider`` (types are
    ``<provider>.<name>``: ``uip.*`` cannot match unloq's; ``*identify`` can match anybody's)."""
    if not fnmatchcase(provider, route.provider):
        return False
    return any(fnmatchcase(provider, pattern.split(".")[0]) or ("*" in pattern and "." not in pattern)
               for pattern in route.type)
