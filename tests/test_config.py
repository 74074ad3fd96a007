"""Config errors name the file, the YAML path and line, and what was expected."""

from __future__ import annotations

import importlib.util

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from webhookbus.config import ConfigError, parse_config

GOOD = textwrap.dedent("""\
    kafka:
      bootstrap_servers: ["127.0.0.1:9092"]
    providers:
      demo:
        verifier: hmac
        path: /webhooks/demo
        secrets: [env:TEST_DEMO_SECRET]
        options:
          header: X-Sig
    routes:
      - topic: demo.events
""")


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cfg.yaml")
    return str(caught.value)


@pytest.fixture(autouse=True)
def demo_secret(monkeypatch):
    monkeypatch.setenv("TEST_DEMO_SECRET", "s3cr3t-value-never-printed")


def test_good_config_resolves_secrets_and_builds_verifiers():
    config = parse_config(GOOD)
    provider = config.providers["demo"]
    assert provider.verifier.secrets == (b"s3cr3t-value-never-printed",)
    assert "s3cr3t" not in repr(provider.verifier.secrets)
    assert provider.options.header == "X-Sig"
    assert config.publish_timeout("demo") == 2.5


def test_bad_yaml_names_the_line():
    message = problem("server:\n  port: [1,\n")
    assert "cfg.yaml:" in message and "not valid YAML" in message


def test_unknown_key_names_path_and_line():
    message = problem(GOOD.replace("  bootstrap_servers", "  bootstrap_server"))
    assert "cfg.yaml:2: kafka.bootstrap_server: unknown key" in message


def test_unknown_plugin_lists_installed_ones():
    message = problem(GOOD.replace("verifier: hmac", "verifier: hmacc"))
    assert "cfg.yaml:5: providers.demo.verifier: unknown verifier 'hmacc'" in message
    assert "installed: " in message and "hmac" in message.split("installed: ")[1]


def test_missing_secret_env_var(monkeypatch):
    monkeypatch.delenv("TEST_DEMO_SECRET")
    message = problem(GOOD)
    assert "cfg.yaml:7: providers.demo.secrets.0: environment variable TEST_DEMO_SECRET is not set" in message


def test_inline_secret_is_refused_and_file_secret_is_read(tmp_path: Path):
    assert "a secret must be a reference" in problem(GOOD.replace("env:TEST_DEMO_SECRET", "hunter2"))
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    config = parse_config(GOOD.replace("env:TEST_DEMO_SECRET", f"file:{secret_file}"))
    assert config.providers["demo"].verifier.secrets == (b"from-a-file",)
    assert "cannot read secret file" in problem(GOOD.replace("env:TEST_DEMO_SECRET", "file:/no/such/file"))


def test_bad_plugin_option_is_reported_like_any_other():
    message = problem(GOOD.replace("header: X-Sig", "header: X-Sig\n      encoding: base65"))
    assert "cfg.yaml:10: providers.demo.options.encoding:" in message and "'hex' or 'base64'" in message
    assert "providers.demo.options.colour: unknown key" in problem(GOOD.replace("header: X-Sig", "colour: red"))


def test_route_and_provider_checks():
    assert "routes.0.topic: required key is missing" in problem(GOOD.replace("- topic: demo.events", "- key: id"))
    assert "action 'topic' needs a topic" in problem(GOOD + "unrouted: {action: topic}\n")
    assert "must be lower-case" in problem(GOOD.replace("  demo:", "  Demo:"))


def test_environment_overrides_the_file(monkeypatch):
    monkeypatch.setenv("WEBHOOKBUS_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("WEBHOOKBUS_SERVER__PORT", "9999")
    config = parse_config(GOOD)
    assert config.settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert config.settings.server.port == 9999


def test_literal_secret_is_a_warning():
    config = parse_config(GOOD.replace("env:TEST_DEMO_SECRET", "literal:test-only"))
    assert any("literal secret" in warning for warning in config.warnings)


def run_cli(*args: str, env_secret: bool = True) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "TEST_DEMO_SECRET"}
    if env_secret:
        env["TEST_DEMO_SECRET"] = "s3cr3t-value-never-printed"
    return subprocess.run([sys.executable, "-m", "webhookbus.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_check_prints_a_summary_and_never_the_secret(tmp_path: Path):
    path = tmp_path / "webhookbus.yaml"
    path.write_text(GOOD)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "/webhooks/demo" in result.stdout and "demo.events" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr
    from webhookbus.http.engines import resolve

    assert f"({resolve('auto')})" in result.stdout, "the engine auto chose"


def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path):
    path = tmp_path / "webhookbus.yaml"
    path.write_text(GOOD)
    result = run_cli("serve", "--config", str(path), env_secret=False)
    assert result.returncode == 2
    assert "TEST_DEMO_SECRET is not set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("config").rglob("*.yaml")), ids=str)
def test_example_configs_load(path: Path, monkeypatch, tmp_path: Path):
    """Every example under config/ really loads, with the sample secrets `make run` uses and,
    where an example names key files an operator provides, freshly generated keys in their place."""
    from webhookbus.testing.samples import DEV_SECRETS, dev_platform_public_pem, new_private_pem

    for name, value in DEV_SECRETS.items():
        monkeypatch.setenv(name, value)
    text = path.read_text()
    for key_dir in ("/etc/webhookbus/truvalidate/", ".dev/truvalidate/"):
        if key_dir in text:
            private = new_private_pem()
            public = dev_platform_public_pem(private)
            (tmp_path / "service.pem").write_bytes(private)
            for name in ("platform-current.pem", "platform.pem"):
                (tmp_path / name).write_bytes(public)
            text = text.replace(key_dir, f"{tmp_path}/")
    config = parse_config(text, str(path))
    assert config.providers and config.settings.routes


def test_an_unknown_producer_option_is_a_config_error_not_a_producer_that_never_starts():
    message = problem(GOOD.replace("  bootstrap_servers", "  producer: {linger_ms: 1, lingerms: 2}\n  bootstrap_servers"))
    assert "kafka.producer" in message and "not a kafka-python KafkaProducer option: lingerms" in message


@pytest.mark.parametrize(("where", "snippet"), [
    ("routes:\n  - topic: demo.events", "- topic: 'orders events'"),
    ("routes:\n  - topic: demo.events", '- topic: ""'),
    ("routes:\n  - topic: demo.events", "- topic: .."),
    ("routes:\n  - topic: demo.events", "- topic: " + "t" * 250),
])
def test_an_invalid_topic_name_is_a_config_error(where, snippet):
    message = problem(GOOD.replace("- topic: demo.events", snippet))
    assert "cfg.yaml:11: routes.0.topic:" in message and "not a Kafka topic name" in message


def test_invalid_unrouted_and_audit_topics_are_config_errors():
    assert "cfg.yaml:12: unrouted.topic:" in problem(GOOD + "unrouted: {action: topic, topic: 'a/b'}\n")
    assert "cfg.yaml:12: audit.topic:" in problem(GOOD + 'audit: {topic: ""}\n')
    assert parse_config(GOOD + "audit: {topic: webhookbus.audit_v1-x}\n").settings.audit.topic == "webhookbus.audit_v1-x"


def test_where_values_are_read_as_yaml_1_2_so_no_and_zip_codes_stay_strings():
    text = GOOD.replace("- topic: demo.events", "- topic: demo.events\n    where: {data.country: NO, data.zip: 0123, "
                        "data.a: yes, data.b: off, data.c: 1:20, data.d: true, data.e: FALSE, data.f: 42, data.g: 0x1f}")
    where = parse_config(text).settings.routes[0].where
    assert where == {"data.country": "NO", "data.zip": "0123", "data.a": "yes", "data.b": "off", "data.c": "1:20",
                     "data.d": True, "data.e": False, "data.f": 42, "data.g": 31}


def test_typed_booleans_still_take_yes_and_no_and_errors_still_name_the_line():
    settings = parse_config(GOOD.replace("- topic: demo.events", "- {topic: t, include_raw_body: yes}\n"
                                         "  - {topic: u, include_raw_body: off}")).settings
    assert [route.include_raw_body for route in settings.routes] == [True, False]
    assert "cfg.yaml:11: routes.0.include_raw_body:" in problem(
        GOOD.replace("- topic: demo.events", "- {topic: t, include_raw_body: maybe}"))
    producer = parse_config(GOOD.replace("  bootstrap_servers", "  producer: {enable_idempotence: no}\n  bootstrap_servers"))
    assert producer.settings.kafka.producer == {"enable_idempotence": False}


@pytest.mark.parametrize(("options", "expected"), [
    ("compression_type: lz5", "compression_type 'lz5' is not one of"),
    ("value_serializer: str", "value_serializer: takes a Python object"),
    ("partitioner: murmur2", "partitioner: takes a Python object"),
    ("enable_idempotence: perhaps", "enable_idempotence must be true or false"),
])
def test_producer_option_values_are_checked(options, expected):
    message = problem(GOOD.replace("  bootstrap_servers", f"  producer: {{{options}}}\n  bootstrap_servers"))
    assert "cfg.yaml:2: kafka.producer:" in message and expected in message


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_codec_whose_library_is_missing_is_a_config_error_for_kafka_python(codec, monkeypatch):
    import kafka.codec

    def config(client: str) -> str:
        return GOOD.replace("  bootstrap_servers", f"  client: {client}\n  producer: {{compression_type: {codec}}}\n"
                                                   "  bootstrap_servers")

    monkeypatch.setattr(kafka.codec, f"has_{codec}", lambda: False)
    assert f"compression_type {codec}: its library is not installed" in problem(config("kafka-python"))
    if importlib.util.find_spec("confluent_kafka"):  # librdkafka compresses with its own, built in
        assert parse_config(config("confluent")).settings.kafka.producer == {"compression_type": codec}
    monkeypatch.setattr(kafka.codec, f"has_{codec}", lambda: True)
    assert parse_config(config("kafka-python"))


def test_a_value_under_secrets_or_kafka_producer_is_never_echoed(monkeypatch):
    message = problem(GOOD.replace("[env:TEST_DEMO_SECRET]", "[8394729384729384729347]"))
    assert "providers.demo.secrets.0" in message and "8394729384729384729347" not in message
    message = problem(GOOD.replace("  bootstrap_servers",
                                   "  producer: {sasl_plain_password: pw-never-printed, lingerms: 1}\n  bootstrap_servers"))
    assert "lingerms" in message and "pw-never-printed" not in message
    monkeypatch.setenv("WEBHOOKBUS_KAFKA__PRODUCER", '{"sasl_plain_password": "env-pw-never-printed", "bogus": 1}')
    message = problem(GOOD)
    assert "bogus" in message and "env-pw-never-printed" not in message


def test_hypercorn_read_timeout_is_whole_seconds_past_the_apps_body_deadline():
    from webhookbus.config import ServerSettings
    from webhookbus.http.deadlines import BodyDeadlines
    from webhookbus.http.engines.hypercorn_engine import hypercorn_config

    for timeout in (0.5, 1, 1.9, 10):
        read_timeout = hypercorn_config(ServerSettings(request_timeout=timeout)).read_timeout
        assert isinstance(read_timeout, int) and read_timeout > timeout + BodyDeadlines(timeout).interval


def test_a_non_utf8_file_is_a_config_error(tmp_path: Path):
    from webhookbus.config import load_config

    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("demo.events", "d\xe9mo").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_a_non_text_top_level_key_is_a_config_error():
    assert "cfg.yaml:12: 1: a section name must be text" in problem(GOOD + "1: x\n")


def test_a_recursive_alias_is_a_config_error():
    assert "an alias inside its own anchor" in problem(GOOD.replace("- topic: demo.events", "- &r {topic: t, where: {a: *r}}"))
    assert "an alias inside its own anchor" in problem(GOOD + "x: &a [*a]\n")


class _Plugin:
    """A third-party verifier with bugs, set up by the tests below."""

    from webhookbus.plugin import VerifierOptions as Options

    def __init__(self, options, secrets) -> None:
        raise KeyError(secrets[0].decode())  # a bug whose message quotes the secret


class _NoOptions:
    def __init__(self, options, secrets) -> None: ...


@pytest.mark.parametrize(("plugin", "expected"), [
    (_Plugin, "verifier 'hmac' cannot start: KeyError (a bug in the plugin)"),
    (_NoOptions, "plugin 'hmac' has no Options model"),
])
def test_a_broken_plugin_is_a_config_error_without_the_secret(monkeypatch, plugin, expected):
    from webhookbus import config as config_module

    class Entry:
        def load(self):
            return plugin

    monkeypatch.setattr(config_module, "installed_verifiers", lambda: {"hmac": Entry()})
    message = problem(GOOD.replace("    options:\n      header: X-Sig\n", ""))
    assert expected in message and "s3cr3t" not in message


@pytest.mark.parametrize("source", ["file-empty", "file-newline", "env-blank", "literal"])
def test_an_empty_secret_is_refused_from_every_source(monkeypatch, tmp_path: Path, source):
    """One empty file in a rotation would accept an HMAC anybody can compute."""
    secret_file = tmp_path / "next"
    secret_file.write_bytes(b"\n" if source == "file-newline" else b"")
    monkeypatch.setenv("TEST_BLANK_SECRET", "  ")
    reference = {"file-empty": f"file:{secret_file}", "file-newline": f"file:{secret_file}",
                 "env-blank": "env:TEST_BLANK_SECRET", "literal": "'literal:'"}[source]
    message = problem(GOOD.replace("[env:TEST_DEMO_SECRET]", f"[env:TEST_DEMO_SECRET, {reference}]"))
    assert "cfg.yaml:7: providers.demo.secrets.1: the secret" in message and "is empty" in message


def test_no_verifier_matches_an_hmac_under_the_empty_key():
    import hashlib
    import hmac

    from webhookbus.plugin import VerificationFailed
    from webhookbus.signing import require_match

    forged = hmac.new(b"", b"body", hashlib.sha256).digest()
    with pytest.raises(VerificationFailed):
        require_match([b"", b"real-secret"], b"body", [forged])


def test_route_keys_and_where_fields_that_name_nothing_are_warned_about():
    from webhookbus.config import route_warnings

    config = parse_config(GOOD.replace("  - topic: demo.events\n", textwrap.dedent("""\
          - topic: demo.events
            key: subjct
            where: {country_of_origin: SE, data.country: SE, time: x}
        """)), "cfg.yaml")
    assert route_warnings(config.settings) == [
        "routes[0].key 'subjct' is neither an attribute nor a data. field: only a plugin extension of that name would match",
        "routes[0].where 'country_of_origin' is neither an attribute nor a data. field: "
        "only a plugin extension of that name would match",
    ]


def test_a_verifier_name_two_distributions_register_is_a_config_error(monkeypatch):
    import webhookbus.config as config_module

    monkeypatch.setattr(config_module, "verifier_name_clashes", lambda: {"hmac": ["webhookbus", "webhookbus-acme"]})
    message = problem(GOOD)
    assert "cfg.yaml:5: providers.demo.verifier: verifier 'hmac' is registered by several distributions" in message
    assert "(webhookbus, webhookbus-acme)" in message


def test_verifier_name_clashes_names_the_distributions(monkeypatch):
    from types import SimpleNamespace

    import webhookbus.plugin as plugin

    def entry(name: str, dist: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, dist=SimpleNamespace(name=dist), value=f"{dist}:V")

    found = [entry("hmac", "webhookbus"), entry("hmac", "webhookbus-acme"), entry("uip", "webhookbus"),
             entry("uip", "webhookbus")]  # one distribution seen twice (an editable install) is no clash
    monkeypatch.setattr(plugin, "entry_points", lambda group: found)
    assert plugin.verifier_name_clashes() == {"hmac": ["webhookbus", "webhookbus-acme"]}
