"""The configuration file: typed settings, secret references, and errors that point at a YAML line.

Loading is all-or-nothing and happens before the listener binds a socket: the YAML is
validated, every provider's verifier plugin is loaded and its ``options`` validated by the
plugin's own model, and every secret reference is resolved.  Any problem is a
:class:`ConfigError` naming the file, the YAML path and line of the bad key, and what was
expected.  Environment variables ``WEBHOOKBUS_<SECTION>__<KEY>`` override the file.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from webhookbus.delivery.options import CONFLUENT, kafka_client, untranslatable
from webhookbus.events import EVENT_FIELDS
from webhookbus.pii import PiiRules
from webhookbus.plugin import (Decides, Verifier, VerifierOptions, accepted_methods, installed_verifiers,
                               verifier_name_clashes)

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


class Secret(bytes):
    """Secret bytes whose ``repr`` never shows the value (it may end up in a traceback or log)."""

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def resolve_secret(reference: str) -> Secret:
    """Read ``env:NAME``, ``file:/path`` or ``literal:value``; errors never echo a value.

    An empty (or blank) secret is refused whatever its source: an HMAC under the empty key
    is one anybody can compute, so one empty file in a rotation would accept forgeries.
    """
    secret = _read_secret(reference)
    if not secret.strip():
        scheme, _, name = reference.partition(":")
        raise ValueError(f"the secret {scheme}:{'...' if scheme == 'literal' else name} is empty")
    return secret


def _read_secret(reference: str) -> Secret:
    scheme, _, rest = reference.partition(":")
    if scheme == "env":
        value = os.environ.get(rest)
        if value is None:
            raise ValueError(f"environment variable {rest} is not set")
        return Secret(value.encode())
    if scheme == "file":
        try:
            data = Path(rest).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {rest}: {exc.strerror}") from None
        return Secret(data.rstrip(b"\r\n") if not data.startswith(b"-----BEGIN") else data)
    if scheme == "literal":
        return Secret(rest.encode())
    raise ValueError("a secret must be a reference: 'env:NAME', 'file:/path' (or 'literal:value' in tests)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _seconds(value: Any) -> Any:
    """``90``, ``"90s"``, ``"30m"``, ``"72h"`` or ``"3d"`` -> seconds."""
    if not isinstance(value, str):
        return value
    match = _DURATION.match(value)
    if match is None:
        raise ValueError("expected seconds or a duration such as '30m', '72h', '3d'")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


Duration = Annotated[float, BeforeValidator(_seconds)]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _kafka_topic(value: str) -> str:
    """Kafka's own rule, checked here: kafka-python refuses a bad name only in send(), after
    the 2xx, and the producer process then dies on every restart."""
    if not _TOPIC.match(value) or value in {".", ".."}:
        raise ValueError(f"{value!r} is not a Kafka topic name: 1-249 of A-Z a-z 0-9 . _ -, and not '.' or '..'")
    return value


Topic = Annotated[str, AfterValidator(_kafka_topic)]


def _public_url(value: str) -> str:
    """An absolute http(s) URL with a host and nothing after the path: requests' paths go after it."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment or " " in value:
        raise ValueError("must be an absolute http:// or https:// URL without ?query or #fragment")
    return value.rstrip("/")


PublicUrl = Annotated[str, AfterValidator(_public_url)]


def _address_or_network(value: str) -> str:
    ipaddress.ip_network(value, strict=False)  # ValueError names the bad value
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsSettings(_Section):
    """TLS terminated by webhookbus itself, on whichever engine serves (see docs in README, "TLS")."""

    certfile: str
    keyfile: str
    ca_certs: str | None = Field(None, description="CA bundle that client certificates must chain to (mutual TLS).")
    client_auth: Literal["none", "optional", "required"] = Field(
        "none", description="Ask clients for a certificate: required refuses the handshake without one."
    )
    require_client_cert: bool | None = Field(None, description="Deprecated: client_auth: required.")

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if self.require_client_cert is not None:  # the setting before client_auth existed
            wanted = "required" if self.require_client_cert else "none"
            if "client_auth" in self.model_fields_set and self.client_auth != wanted:
                raise ValueError("require_client_cert contradicts client_auth: keep client_auth only")
            self.client_auth = wanted
        if self.client_auth != "none" and self.ca_certs is None:
            raise ValueError(f"client_auth: {self.client_auth} needs ca_certs (the CA client certificates chain to)")
        from webhookbus.http.tls import server_context

        try:  # here, so a missing or mismatched file is a config error naming the line, not a failed start
            server_context(self)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the certificate, key or CA bundle: {exc}") from None
        return self


class ClientCertHeaderSettings(_Section):
    """Mutual TLS terminated by a proxy in front of webhookbus (nginx ``$ssl_client_s_dn``,
    an AWS ALB's ``X-Amzn-Mtls-Clientcert-Subject``): the verified subject arrives in a header,
    believed only from the listed proxy addresses."""

    header: str = "x-ssl-client-s-dn"
    trusted_proxies: list[str] = Field(description="Client IP addresses allowed to set the header.")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Larger bodies get 413 before being read whole.")
    request_timeout: float = Field(10.0, gt=0, description="Seconds to read a request body.")
    max_in_flight: int = Field(1024, gt=0, description="Concurrent requests whose body is in beyond this get 503.")
    graceful_timeout: float = Field(10.0, ge=0, description="Seconds in-flight requests get after SIGTERM.")
    workers: int = Field(1, ge=1)
    instance: int = Field(
        0, ge=0, description="This instance's number when several run one config: its processes read reply "
                             "partitions instance*workers to instance*workers+workers-1 (routes' reply)."
    )
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="Event loop; auto: uvloop when installed (pip install 'webhookbus[fast]'), else asyncio's."
    )
    engine: Literal["auto", "hypercorn", "uvicorn"] = Field(
        "auto", description="HTTP engine; auto: uvicorn (httptools) when installed (pip install 'webhookbus[fast]'), "
                            "else hypercorn."
    )
    tls: TlsSettings | None = None
    client_cert_header: ClientCertHeaderSettings | None = None
    public_url: PublicUrl | None = Field(
        None, description="The listener's public base URL (https://hooks.example.com): InboundRequest.url is it + the path."
    )
    trusted_proxies: list[Annotated[str, AfterValidator(_address_or_network)]] = Field(
        default_factory=list,
        description="Proxy addresses or networks whose X-Forwarded-Proto/X-Forwarded-Host give InboundRequest.url.",
    )

    @field_validator("loop")
    @classmethod
    def _loop_installed(cls, value: str) -> str:
        if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("uvloop is not installed: pip install 'webhookbus[fast]', or use loop: auto")
        return value

    @field_validator("engine")
    @classmethod
    def _engine_installed(cls, value: str) -> str:
        from webhookbus.http.engines import ENGINES, missing

        if value != "auto" and missing(value):
            raise ValueError(f"{value} needs {', '.join(missing(value))}: pip install 'webhookbus[fast]', "
                             f"or use engine: auto")
        assert value == "auto" or value in ENGINES
        return value

    @property
    def engine_name(self) -> str:
        """The engine that serves: ``engine`` with auto resolved."""
        from webhookbus.http.engines import resolve

        return resolve(self.engine)


class KafkaSettings(_Section):
    # NoDecode: WEBHOOKBUS_KAFKA__BOOTSTRAP_SERVERS=a:9092,b:9092 is split, not parsed as JSON.
    bootstrap_servers: Annotated[list[str], NoDecode] = ["127.0.0.1:9092"]
    client_id: str = "webhookbus"
    acks: Literal["all", 0, 1] = "all"
    publish_timeout: float = Field(
        2.5, gt=0, description="Seconds to wait for the broker's ack before spooling or 503 (UNLOQ waits only 3 s)."
    )
    producer: dict[str, Any] = Field(default_factory=dict, description="Extra kafka-python KafkaProducer options.")
    max_in_flight_records: int = Field(
        10_000, gt=0, description="Records handed to the Kafka client and not yet acked; beyond it requests wait (then spool/503)."
    )
    client: Literal["auto", "kafka-python", "confluent"] = Field(
        "auto", description="auto: confluent-kafka (in-process, librdkafka) when installed, else kafka-python (a producer process)."
    )

    @property
    def client_in_use(self) -> str:
        return kafka_client(self.client)

    @model_validator(mode="after")
    def _client_takes_the_options(self) -> KafkaSettings:
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("client confluent: confluent-kafka is not installed: pip install 'webhookbus[fast]', or use client: auto")
        if self.client_in_use != CONFLUENT:  # librdkafka has every codec built in
            _check_codec_installed(self.producer.get("compression_type"))
        elif refused := untranslatable(self.producer):
            raise ValueError(f"kafka.producer options the {self.client!r} client (confluent-kafka) cannot honour: "
                             f"{'; '.join(refused)}; remove them or set kafka.client: kafka-python")
        return self

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value

    @field_validator("producer")
    @classmethod
    def _known_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here: kafka-python refuses an unknown option or a bad value only when the
        # producer process builds its producer, long after startup, and then on every restart.
        from kafka import KafkaProducer

        unknown = sorted(set(value) - set(KafkaProducer.DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"not a kafka-python KafkaProducer option: {', '.join(unknown)}")
        objects = sorted(set(value) & _PRODUCER_OBJECTS)
        if objects:
            raise ValueError(f"{', '.join(objects)}: takes a Python object, which a config file cannot give")
        _check_compression(value.get("compression_type"))
        return {k: _flag(k, v) if isinstance(KafkaProducer.DEFAULT_CONFIG[k], bool) else v for k, v in value.items()}


# KafkaProducer options that must be callables, classes or objects (serializers are webhookbus's own).
_PRODUCER_OBJECTS = frozenset({"key_serializer", "value_serializer", "partitioner", "ssl_context", "selector",
                               "metric_reporters", "sasl_oauth_token_provider", "kafka_client"})


def _check_compression(codec: Any) -> None:
    """A codec kafka-python does not know kills the producer at start."""
    if codec not in (None, "gzip", "snappy", "lz4", "zstd"):
        raise ValueError(f"compression_type {codec!r} is not one of gzip, snappy, lz4, zstd")


def _check_codec_installed(codec: Any) -> None:
    """kafka-python compresses with Python libraries: one not installed kills its producer at start."""
    from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd

    available = {None: True, "gzip": has_gzip(), "snappy": has_snappy(), "lz4": has_lz4(), "zstd": has_zstd()}
    if not available[codec]:
        package = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}[codec]
        raise ValueError(f"compression_type {codec}: its library is not installed (pip install {package}), or use gzip")


def _flag(name: str, value: Any) -> bool:
    """A boolean producer option: YAML 1.2 leaves `no` a string, which kafka-python would take as true."""
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        raise ValueError(f"{name} must be true or false") from None


class ProviderSettings(_Section):
    verifier: str = Field(description="Name of an installed verifier plugin (see `webhookbus plugins`).")
    path: str = Field(pattern=r"^/", description="URL path; also serves sub-paths below it.")
    public_url: PublicUrl | None = Field(
        None, description="The public URL of this path as the provider calls it; overrides server.public_url."
    )
    secrets: list[str] = Field(default_factory=list, description="env:NAME, file:/path; several during rotation.")
    options: dict[str, Any] = Field(default_factory=dict)
    publish_timeout: float | None = Field(None, gt=0, description="Overrides kafka.publish_timeout.")
    ack: Literal["broker", "spool"] = Field(
        "broker", description="2xx once Kafka acked every message (broker) or once they are fsync'd locally (spool)."
    )
    on_broker_timeout: Literal["spool", "reject"] = Field(
        "spool", description="broker mode past the deadline: spool and answer 2xx, or answer 503 + Retry-After."
    )
    dedup_window: Duration = Field(
        72 * 3600.0, ge=0, description="How long a provider event id is remembered: seconds or '72h', '30m'; 0 is off."
    )
    on_dedup_unavailable: Literal["publish", "reject"] = Field(
        "publish", description="A Redis dedup store that does not answer: publish anyway (at least once) or 503 + Retry-After."
    )

    @field_validator("secrets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ReplySettings(_Section):
    """A Kafka consumer decides what a provider waiting for an answer gets (Authgear's blocking
    events): see :mod:`webhookbus.delivery.replies`."""

    topic: Topic = Field(description="Where the deciding consumer replies; each listener process reads a partition.")
    timeout: float = Field(
        2.0, gt=0, description="Seconds from the request's arrival to wait for a reply; below the provider's deadline."
    )
    fallback: Literal["static"] | dict[str, Any] = Field(
        "static", description="No valid reply in time: static (the provider's configured answer) or an answer, "
                              "e.g. {is_allowed: false, title: ..., reason: ...}."
    )


class RouteSettings(_Section):
    name: str | None = None
    provider: str = Field("*", description="Provider name (glob).")
    type: list[str] = Field(["*"], description="CloudEvents type glob(s), e.g. 'uip.*'.")
    where: dict[str, Any] = Field(default_factory=dict, description="Dotted field -> required value.")
    topic: Topic
    key: str = Field("subject", description="Message key: an attribute or a dotted 'data.' field.")
    mode: Literal["structured", "binary"] = "structured"
    include_raw_body: bool = False
    reply: ReplySettings | None = Field(None, description="Hold the request until a Kafka consumer replies.")
    pii: PiiRules | None = Field(None, description="Fields to drop, hash or mask before publishing (README, PII rules).")

    @field_validator("type", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _raw_body_keeps_pii(self) -> RouteSettings:
        if self.pii is not None and self.pii.changes and self.include_raw_body:
            raise ValueError("include_raw_body would publish the fields the pii rules remove: use one or the other")
        return self


class UnroutedSettings(_Section):
    action: Literal["drop", "topic"] = "drop"
    topic: Topic | None = None

    @model_validator(mode="after")
    def _topic_given(self) -> UnroutedSettings:
        if self.action == "topic" and not self.topic:
            raise ValueError("action 'topic' needs a topic")
        return self


class SpoolSettings(_Section):
    directory: str = Field("spool", description="Spool segments and the dedup store; one subdirectory per process.")
    max_bytes: int = Field(1 << 30, gt=0, description="Spool size on disk beyond which spooling requests get 503.")
    segment_bytes: int = Field(16 << 20, gt=0, description="Deleted once all its records are acked; at most max_bytes/8.")
    dedup_max_entries: int = Field(500_000, gt=0, description="Event ids remembered (about 100 bytes of memory each).")


class DedupSettings(_Section):
    """Where accepted event ids are remembered: this process's spool slot, or a Redis every
    worker and instance shares (README, "Running several instances")."""

    store: str = Field("local", description="local, or redis://host:port/db (rediss:// for TLS); no password in it.")
    password: str | None = Field(None, description="Redis password: env:NAME or file:/path.")
    username: str | None = Field(None, description="Redis ACL user name.")
    ca_certs: str | None = Field(None, description="CA bundle for rediss:// (default: the system's).")
    timeout: float = Field(0.25, gt=0, description="Seconds per Redis call (at most a quarter of publish_timeout).")
    claim_ttl: Duration = Field(
        30.0, gt=0, description="An id in flight is let go this long after its process stopped renewing it (died)."
    )

    @field_validator("store")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value == "local":
            return value
        from urllib.parse import parse_qsl, urlsplit

        url = urlsplit(value)
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ValueError("expected local, redis://host:port/db or rediss://host:port/db")
        # redis-py also reads any query parameter as a client option: ?password= and ?ssl_password=
        # would put the secret inline, and in every log line and `check` output that names the store.
        if url.password is not None or any("password" in name.lower() for name, _ in parse_qsl(url.query)):
            raise ValueError("the URL must not carry a password: put it in dedup.password as env:NAME or file:/path")
        if importlib.util.find_spec("redis") is None:
            raise ValueError("the redis package is not installed: pip install 'webhookbus[redis]'")
        return value


class AuditSettings(_Section):
    topic: Topic | None = Field(None, description="Topic for rejected (401) requests; unset turns the audit off.")
    max_per_second: float = Field(10.0, gt=0, description="Audit events per second; the rest are counted and dropped.")
    burst: int = Field(100, gt=0)


class AdminSettings(_Section):
    """The operators' listener: metrics, probes and the status page, never on the public port."""

    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    recent_rejections: int = Field(50, ge=0, le=1000, description="Refused requests the status page lists.")


PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Settings(BaseSettings):
    """The whole file.  Values from the environment win over the file."""

    model_config = SettingsConfigDict(env_prefix="WEBHOOKBUS_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = ServerSettings()
    kafka: KafkaSettings = KafkaSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    routes: list[RouteSettings] = Field(default_factory=list)
    unrouted: UnroutedSettings = UnroutedSettings()
    spool: SpoolSettings = SpoolSettings()
    dedup: DedupSettings = DedupSettings()
    audit: AuditSettings = AuditSettings()
    admin: AdminSettings | None = Field(None, description="Metrics, probes and the status page; unset: none of them.")

    @field_validator("providers")
    @classmethod
    def _names_and_paths(cls, providers: dict[str, ProviderSettings]) -> dict[str, ProviderSettings]:
        seen: dict[str, str] = {}
        for name, provider in providers.items():
            if not PROVIDER_NAME.match(name):
                raise ValueError(f"provider name {name!r} must be lower-case letters, digits, '-' or '_'")
            if provider.path.rstrip("/") in seen:
                raise ValueError(f"providers {seen[provider.path.rstrip('/')]} and {name} share path {provider.path}")
            seen[provider.path.rstrip("/")] = name
        return providers

    @model_validator(mode="after")
    def _admin_off_the_public_port(self) -> Settings:
        if self.admin is not None and self.admin.port == self.server.port != 0:
            raise ValueError(f"admin.port {self.admin.port} is server.port: the admin listener must be off the public port")
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


@dataclass(frozen=True)
class Provider:
    """A provider ready to serve: its settings and its verifier, built from validated
    options and resolved secrets (which stay inside the verifier)."""

    name: str
    settings: ProviderSettings
    verifier: Verifier
    options: VerifierOptions

    @property
    def path(self) -> str:
        return self.settings.path.rstrip("/") or "/"


@dataclass(frozen=True)
class Config:
    settings: Settings
    providers: dict[str, Provider]
    source: str = "<config>"
    warnings: list[str] = field(default_factory=list)
    dedup_password: Secret | None = None

    def publish_timeout(self, provider: str) -> float:
        own = self.providers[provider].settings.publish_timeout
        return own if own is not None else self.settings.kafka.publish_timeout


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 core schema booleans (true/false only) and no octal: with YAML 1.1's, a route's
    ``where: {data.country: NO}`` would compare with False and ``{data.zip: 0123}`` with 83."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(  # decimal (no leading zero) or 0x hex; 0123, 0b1, 1:20 stay strings
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"), list("-+0123456789"))


def _yaml_lines(node: yaml.Node, source: str, loc: Loc = (), inside: frozenset[int] = frozenset()) -> dict[Loc, int]:
    """Map every YAML path to its 1-based line, so errors can point at it; refuse an alias
    inside its own anchor (the structure would be infinite)."""
    if id(node) in inside:
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: {'.'.join(map(str, loc))}: an alias inside its own anchor")
    inside = inside | {id(node)}
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[loc + (key.value,)] = key.start_mark.line + 1
            lines.update({k: v for k, v in _yaml_lines(value, source, loc + (key.value,), inside).items()
                          if k != loc + (key.value,)})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_yaml_lines(item, source, loc + (index,), inside))
    return lines


class _Errors:
    """Collects problems as 'file:line: yaml.path: message' lines."""

    def __init__(self, source: str, lines: dict[Loc, int]) -> None:
        self.source, self.lines, self.messages = source, lines, []  # type: list[str]

    def add(self, loc: Loc, message: str) -> None:
        probe = loc
        while probe and probe not in self.lines:
            probe = probe[:-1]
        where = f"{self.source}:{self.lines[probe]}" if probe in self.lines else self.source
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        self.messages.append(f"{where}: {dotted}: {message}")

    def add_validation(self, prefix: Loc, error: ValidationError) -> None:
        for item in error.errors(include_url=False):
            loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "list"})))
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown key"
            elif item["type"] == "missing":
                message = "required key is missing"
            elif "input" in item and item["type"] not in {"value_error"} and not isinstance(item["input"], (dict, list)) \
                    and not _may_be_secret(loc):
                message += f" (got {item['input']!r:.60})"
            self.add(prefix + loc, message)

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(self.messages))


def _may_be_secret(loc: Loc) -> bool:
    """A value under ``secrets``, ``kafka.producer`` (SASL/SSL passwords), a PII ``hash_key``, or Redis's, is never echoed."""
    return "secrets" in loc or "hash_key" in loc or loc[:2] == ("kafka", "producer") \
        or loc[:2] in {("dedup", "password"), ("dedup", "store")}


def _read(path: str | os.PathLike[str]) -> str:
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve a config file; see the module docstring."""
    return parse_config(_read(path), str(path))


def load_settings(path: str | os.PathLike[str], sections: Sequence[str] | None = None) -> Settings:
    """Only the settings, of only ``sections`` when given (no plugins, no secrets resolved): for
    commands run where the providers' secrets are not, with the same errors as :func:`load_config`."""
    source = str(path)
    raw, errors = _parse_yaml(_read(path), source)
    if sections is not None:
        raw = {name: raw[name] for name in sections if name in raw}
    return _settings(raw, errors, source)


def parse_config(text: str, source: str = "<config>") -> Config:
    raw, errors = _parse_yaml(text, source)
    settings = _settings(raw, errors, source)
    providers, warnings = _load_providers(settings, errors)
    dedup_password = None
    if settings.dedup.password is not None:
        try:
            dedup_password = resolve_secret(settings.dedup.password)
        except ValueError as exc:
            errors.add(("dedup", "password"), str(exc))
    _check_replies(settings, providers, errors)
    _load_hash_keys(settings, errors)
    _check_client_subjects(settings.server, providers, errors)
    errors.raise_if_any()
    return Config(settings=settings, providers=providers, source=source, warnings=warnings, dedup_password=dedup_password)


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], _Errors]:
    """The YAML as a mapping of sections, and an error collector that knows its lines."""
    try:
        node = yaml.compose(text, Loader=_Yaml12Loader)
        raw = yaml.load(text, Loader=_Yaml12Loader) if node is not None else {}  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (server, kafka, providers, routes)")
    errors = _Errors(source, _yaml_lines(node, source) if node is not None else {})
    for key in raw:
        if not isinstance(key, str):
            errors.add((str(key),), "a section name must be text (server, kafka, providers, routes, ...)")
    errors.raise_if_any()
    return raw, errors


def _settings(raw: dict[str, Any], errors: _Errors, source: str) -> Settings:
    try:
        return Settings(**raw)
    except SettingsError as exc:
        raise ConfigError(f"{source}: a WEBHOOKBUS_* environment variable is invalid: {exc}") from None
    except ValidationError as exc:
        errors.add_validation((), exc)
        errors.raise_if_any()
        raise


def _load_providers(settings: Settings, errors: _Errors) -> tuple[dict[str, Provider], list[str]]:
    installed, clashes = installed_verifiers(), verifier_name_clashes()
    providers: dict[str, Provider] = {}
    warnings: list[str] = []
    for name, provider in settings.providers.items():
        loc: Loc = ("providers", name)
        entry = installed.get(provider.verifier)
        if entry is None:
            errors.add(loc + ("verifier",), f"unknown verifier {provider.verifier!r}; installed: {', '.join(sorted(installed))}")
            continue
        if provider.verifier in clashes:
            errors.add(loc + ("verifier",), f"verifier {provider.verifier!r} is registered by several distributions "
                                            f"({', '.join(clashes[provider.verifier])}): uninstall all but one")
            continue
        try:
            verifier_class = entry.load()
        except Exception as exc:  # a broken third-party plugin must not look like our bug
            errors.add(loc + ("verifier",), f"plugin {provider.verifier!r} failed to import: {type(exc).__name__}: {exc}")
            continue
        options_model = getattr(verifier_class, "Options", None)
        if not (isinstance(options_model, type) and issubclass(options_model, BaseModel)):
            errors.add(loc + ("verifier",), f"plugin {provider.verifier!r} has no Options model (a bug in the plugin)")
            continue
        try:
            options = options_model.model_validate(provider.options)
        except ValidationError as exc:
            errors.add_validation(loc + ("options",), exc)
            continue
        secrets: list[Secret] = []
        for index, reference in enumerate(provider.secrets):
            try:
                secrets.append(resolve_secret(reference))
            except ValueError as exc:
                errors.add(loc + ("secrets", index), str(exc))
            if reference.startswith("literal:"):
                warnings.append(f"providers.{name}.secrets[{index}] is a literal secret: use env: or file: outside tests")
        if len(secrets) < len(provider.secrets):
            continue
        try:
            verifier = verifier_class(options, tuple(secrets))
        except (ValueError, OSError) as exc:
            errors.add(loc, f"verifier {provider.verifier!r} cannot start: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a bug in the plugin; its message may quote a secret: only the type
            errors.add(loc, f"verifier {provider.verifier!r} cannot start: {type(exc).__name__} (a bug in the plugin)")
            continue
        try:
            accepted_methods(verifier)
        except ValueError as exc:
            errors.add(loc + ("verifier",), f"plugin {provider.verifier!r}: {exc} (a bug in the plugin)")
            continue
        providers[name] = Provider(name, provider, verifier, options)
    return providers, warnings


def _check_replies(settings: Settings, providers: dict[str, Provider], errors: _Errors) -> None:
    """A route's ``reply`` needs a provider that waits for a decision, a timeout below that
    provider's own deadline (past it the provider has given up: the answer would fail the user's
    operation), and a fallback the provider accepts for any of its events."""
    from fnmatch import fnmatchcase

    for index, route in enumerate(settings.routes):
        if route.reply is None:
            continue
        loc: Loc = ("routes", index, "reply")
        deciders = [p for p in providers.values()
                    if fnmatchcase(p.name, route.provider) and isinstance(p.verifier, Decides)]
        if not deciders:
            if len(providers) == len(settings.providers):  # else a provider that failed to load may be one
                errors.add(loc, f"no provider matching {route.provider!r} waits for a decision "
                                "(a verifier such as authgear does, for its blocking events)")
            continue
        for provider in deciders:
            verifier: Decides = provider.verifier  # type: ignore[assignment]
            if route.reply.timeout >= verifier.decision_deadline:
                errors.add(loc + ("timeout",), f"{route.reply.timeout:g} s is not below {provider.name}'s own deadline "
                                               f"({verifier.decision_deadline:g} s): it would have given up by then")
            if isinstance(route.reply.fallback, dict):
                try:
                    verifier.decide(None, route.reply.fallback)
                except ValueError as exc:
                    errors.add(loc + ("fallback",),
                               f"not an answer {provider.name} takes for every event: {validation_reason(exc)}")


def validation_reason(error: ValueError) -> str:
    """A validation error's messages without the values (an answer may carry personal data)."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, item['loc'])) or 'answer'}: {item['msg']}"
                         for item in error.errors(include_url=False, include_input=False))
    return str(error)


def _load_hash_keys(settings: Settings, errors: _Errors) -> None:
    """Resolve each route's PII hash key, as a provider's secrets are: at load, errors by line."""
    for index, route in enumerate(settings.routes):
        if route.pii is not None and route.pii.hash_key is not None:
            try:
                route.pii.use_key(resolve_secret(route.pii.hash_key))
            except ValueError as exc:
                errors.add(("routes", index, "pii", "hash_key"), str(exc))


def _check_client_subjects(server: ServerSettings, providers: dict[str, Provider], errors: _Errors) -> None:
    """A provider pinning its client certificate's subject (``options.client_subject``) must get
    that certificate from somewhere, or every one of its requests would be refused at run time."""
    if server.client_cert_header is not None:
        return  # a TLS-terminating proxy passes the subject
    for name, provider in providers.items():
        if getattr(provider.options, "client_subject", None) is None:
            continue
        loc: Loc = ("providers", name, "options", "client_subject")
        if server.tls is None or server.tls.client_auth == "none":
            errors.add(loc, "needs the client certificate: set server.tls with client_auth: optional or required "
                            "(or server.client_cert_header behind a TLS-terminating proxy)")
        elif not _engine_passes_certificates(server.engine_name):
            errors.add(loc, f"server.engine {server.engine_name} cannot hand the verified client certificate to "
                            "webhookbus: use engine: uvicorn (pip install 'webhookbus[fast]'), or terminate TLS in a "
                            "proxy and set server.client_cert_header")


def _engine_passes_certificates(name: str) -> bool:
    from webhookbus.http.engines import ENGINES

    return ENGINES[name].client_certificate


def route_warnings(settings: Settings) -> Sequence[str]:
    """Routes that are probably typos: a provider glob matching no provider, a key or a where
    field naming neither an attribute nor a ``data.`` field."""
    from fnmatch import fnmatchcase

    warnings = [
        f"routes[{i}] matches no configured provider ({route.provider!r})"
        for i, route in enumerate(settings.routes)
        if not any(fnmatchcase(name, route.provider) for name in settings.providers)
    ]
    # Any other name is a plugin extension or, more likely, a typo: its value is then always
    # missing (a null key, a where clause that never matches).
    for i, route in enumerate(settings.routes):
        for where, reference in [("key", route.key), *(("where", name) for name in route.where)]:
            if reference not in EVENT_FIELDS and not reference.startswith("data."):
                warnings.append(f"routes[{i}].{where} {reference!r} is neither an attribute nor a data. field: "
                                "only a plugin extension of that name would match")
    return warnings
