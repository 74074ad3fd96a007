"""The integrator's commands: sign -> send -> tail on a real broker, `make run`'s curl lines for every
configured provider, plugins and their options schema, and the config file's JSON Schema."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from webhookbus.cli import main
from webhookbus.testing import free_port, post, read_topic
from webhookbus.testing.broker import wait_for_port
from webhookbus.testing.process import terminate

ROOT = Path(__file__).resolve().parent.parent
UIP_SECRET = "uip-secret-for-cli-tests"


def parse_curl(command: str) -> tuple[str, str, dict[str, str], bytes]:
    """method, URL, headers, body of a printed curl command, read back as a shell would split it."""
    words = shlex.split(command)
    assert words[0] == "curl"
    method, url, headers, body = "GET", "", {}, b""
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-X":
            method, index = words[index + 1], index + 1
        elif word == "-H":
            name, _, value = words[index + 1].partition(": ")
            headers[name], index = value, index + 1
        elif word == "--data-binary":
            body, index = words[index + 1].encode(), index + 1
        elif not word.startswith("-"):
            url = word
        index += 1
    return method, url, headers, body


def send_curl(command: str) -> int:
    method, url, headers, body = parse_curl(command)
    port, path = url.removeprefix("http://127.0.0.1:").split("/", 1)
    return post(int(port), "/" + path, body, headers, method).status


@pytest.fixture
def uip_setup(webhookbus_listener, kafka_broker, topic_name, tmp_path):
    """A listener with a uip provider, and the same config as a file for the CLI."""
    topic = topic_name("cli")
    settings = {
        "providers": {"uip": {"verifier": "uip", "path": "/webhooks/uip", "secrets": [f"literal:{UIP_SECRET}"]}},
        "routes": [{"provider": "uip", "topic": topic}],
    }
    listener = webhookbus_listener(settings)
    file = tmp_path / "webhookbus.yaml"
    file.write_text(yaml.safe_dump({**settings, "server": {"port": listener.port},
                                    "kafka": {"bootstrap_servers": [kafka_broker.bootstrap]}}))
    return str(file), topic


def test_sign_prints_a_curl_that_verifies_then_send_and_tail_round_trip(uip_setup, capsys, tmp_path):
    config, topic = uip_setup
    assert main(["sign", "--config", config, "--provider", "uip", "--variant", "v2"]) == 0
    printed = capsys.readouterr()
    assert "variant v2 of v1, v2" in printed.err
    assert send_curl(printed.out) == 200

    data = tmp_path / "identify.json"
    data.write_text(json.dumps({"event": "identify", "data": {"uip_id": "uip_cli", "audit_id": "aud_cli"}}))
    assert main(["sign", "--config", config, "--provider", "uip", "--data", f"@{data}", "--send"]) == 0
    assert capsys.readouterr().out.startswith("HTTP 200")

    assert main(["tail", "--config", config, "--topic", topic, "--from-beginning", "--max", "2", "--timeout", "10"]) == 0
    pretty = capsys.readouterr().out
    assert pretty.count(f"── {topic} [") == 2
    assert "uip.session.completed" in pretty and "uip.identify" in pretty and '"uip_id": "uip_cli"' in pretty

    assert main(["tail", "--config", config, "--topic", topic, "--from-beginning", "--json", "--timeout", "3"]) == 0
    documents = {d["type"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(documents) == {"uip.session.completed", "uip.identify"}  # partitions: no order between them
    assert documents["uip.identify"]["id"] == "aud_cli" and documents["uip.identify"]["subject"] == "uip_cli"

    # Without --from-beginning tail starts after the last message: nothing old is printed.
    assert main(["tail", "--config", config, "--topic", topic, "--timeout", "2"]) == 0
    assert capsys.readouterr().out == ""


def test_send_reports_a_refusal_and_exits_non_zero(uip_setup, capsys, tmp_path, kafka_broker):
    config, topic = uip_setup
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(Path(config).read_text().replace(UIP_SECRET, "not-the-secret"))
    assert main(["sign", "--config", str(wrong), "--provider", "uip", "--send"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("HTTP 401") and '"error":"verification_failed"' in out
    assert read_topic(kafka_broker.bootstrap, topic, 1, timeout=1.0) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--provider", "nope"], "no provider 'nope'"),
    (["--provider", "uip", "--variant", "v9"], "has variants: v1, v2"),
    (["--provider", "uip", "--data", "{not json"], "--data is not JSON"),
    (["--provider", "uip", "--data", "@/nonexistent/file.json"], "cannot read /nonexistent/file.json"),
])
def test_sign_usage_errors_exit_2_with_a_reason(uip_setup, capsys, argv, message):
    config, _ = uip_setup
    assert main(["sign", "--config", config, *argv]) == 2
    assert message in capsys.readouterr().err


def test_tail_gives_up_on_a_missing_topic_after_the_timeout(uip_setup, capsys):
    config, _ = uip_setup
    assert main(["tail", "--config", config, "--topic", "never-created-topic", "--timeout", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_make_run_prints_a_working_curl_for_every_configured_provider(tmp_path):
    """`webhookbus dev` on the example config: every provider's sample request is accepted."""
    config = ROOT / "config" / "webhookbus.yaml"
    providers = yaml.safe_load(config.read_text())["providers"]
    # The example's fixed ports (8080, its admin 9090) are `make run`'s, or another run's, on a shared machine.
    env = {**os.environ, "WEBHOOKBUS_SERVER__PORT": str(free_port()), "WEBHOOKBUS_ADMIN__PORT": str(free_port())}
    env = {name: value for name, value in env.items() if not name.endswith(("_SECRET", "_SECRET_OLD"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhookbus.cli", "dev", "--config", str(config), "--broker-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("read the events") for line in lines):
            line = process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
        curls = {previous.split()[1].rstrip(";"): line for previous, line in zip(lines, lines[1:]) if line.startswith("curl ")}
        assert set(curls) == set(providers), "one signed curl per configured provider"
        statuses = {}
        for name, command in curls.items():
            for _ in range(50):  # the listener starts right after the curls are printed
                try:
                    statuses[name] = send_curl(command)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.2)
        assert statuses == dict.fromkeys(providers, 200)
        assert (tmp_path / ".dev" / "truvalidate" / "service.pem").stat().st_mode & 0o077 == 0
    finally:
        terminate(process)


def test_plugins_lists_every_plugin_with_its_options(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("hmac", "unloq", "uip", "truvalidate", "zignsec", "authgear", "standardwebhooks", "stripe"):
        assert f"\n{name} " in f"\n{out}", name
    assert "webhookbus-plugin-template" in out and "tolerance_seconds" in out and "(required)" in out
    meta = out[out.index("\nmeta "):].split("\n\n")[0]
    assert "methods: GET, POST" in meta and "methods:" not in out[out.index("\nhmac "):].split("\n\n")[0]

    assert main(["plugins", "--schema", "standardwebhooks"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["header_prefix"]["default"] == "webhook-"
    assert schema["additionalProperties"] is False

    assert main(["plugins", "--schema", "nope"]) == 2
    assert "installed:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def config_validator():
    from webhookbus.schema import config_schema

    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_command_prints_the_config_schema(capsys, config_validator):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_validator.schema


@pytest.mark.parametrize("path", sorted((ROOT / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_is_valid_under_the_schema(config_validator, path):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in config_validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(("provider", "valid"), [
    ({"verifier": "standardwebhooks", "options": {"header_prefix": "svix-"}}, True),
    ({"verifier": "uip", "options": {"header_prefix": "svix-"}}, False),     # another plugin's option
    ({"verifier": "uip", "options": {"tolerance_seconds": "soon"}}, False),
    ({"verifier": "stripe", "options": {"tolerance_seconds": 60}}, True),    # an installed third-party plugin
    ({"verifier": "authgear", "options": {"blocking_response": {"is_allowed": "yes"}}}, False),  # nested model
    ({"verifier": "no-such-plugin"}, False),
    ({"verifier": "hmac", "secrets": "env:ONE"}, True),                      # one secret without a list
])
def test_options_are_checked_against_the_plugin_named_in_verifier(config_validator, provider, valid):
    document = {"providers": {"p": {"path": "/p", **provider}}, "routes": [{"topic": "t", "type": "p.*"}]}
    assert config_validator.is_valid(document) is valid


SECRET_NEXT_TO_A_TYPO = """\
kafka:
  producer: {sasl_plain_password: pw-never-printed, lingerms: 1}
spool:
  directory: 7
"""


@pytest.mark.parametrize("argv", [["tail", "--topic", "t"], ["spool", "status"]])
def test_config_errors_in_tail_and_spool_status_name_the_line_and_never_a_secret(argv, tmp_path, capsys, monkeypatch):
    file = tmp_path / "webhookbus.yaml"
    file.write_text(SECRET_NEXT_TO_A_TYPO)
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--config", str(file)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "pw-never-printed" not in err
    assert f"{file}:4: spool.directory:" in err
    if argv[0] == "tail":
        assert f"{file}:2: kafka.producer: " in err and "lingerms" in err

    file.write_text("spool: {directory: here}\n")
    monkeypatch.setenv("WEBHOOKBUS_KAFKA__PRODUCER", '{"sasl_plain_password": "env-pw-never-printed", "bogus": 1}')
    with pytest.raises(SystemExit):
        main([*argv, "--config", str(file)])
    err = capsys.readouterr().err
    assert "bogus" in err and "env-pw-never-printed" not in err and "Traceback" not in err


def test_tail_reports_an_unparsable_environment_variable_without_a_traceback(tmp_path, capsys, monkeypatch):
    file = tmp_path / "webhookbus.yaml"
    file.write_text("{}\n")
    monkeypatch.setenv("WEBHOOKBUS_KAFKA__PRODUCER", "{not json")
    with pytest.raises(SystemExit) as exited:
        main(["tail", "--topic", "t", "--config", str(file)])
    assert exited.value.code == 2
    assert "WEBHOOKBUS_* environment variable is invalid" in capsys.readouterr().err


def test_log_level_is_case_insensitive_and_checked(tmp_path, monkeypatch, capsys):
    import logging

    import webhookbus.http.server
    from webhookbus import log

    file = tmp_path / "webhookbus.yaml"
    file.write_text("{}\n")
    levels = []
    monkeypatch.setattr(log, "configure", levels.append)
    monkeypatch.setattr(webhookbus.http.server, "run", lambda config: 0)
    assert main(["serve", "--config", str(file), "--log-level", "debug"]) == 0
    assert levels == ["DEBUG"] and logging.getLevelName(levels[0]) == logging.DEBUG
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", str(file), "--log-level", "loud"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.fixture
def occupied_port():
    """A port someone else listens on, as the first `make run` does on 8080 and 9092."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_an_occupied_listener_port_is_one_line_and_exit_2_not_a_traceback(command, occupied_port, tmp_path):
    """A second `make run` (or serve) while the first runs: the reason and the setting to change;
    dev says it before starting a broker or printing curls that would reach the first instance."""
    config = tmp_path / "webhookbus.yaml"
    config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": occupied_port}}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEBHOOKBUS_")}
    broker_port = free_port()
    extra = ["--broker-port", str(broker_port)] if command == "dev" else []
    result = subprocess.run([sys.executable, "-m", "webhookbus.cli", command, "--config", str(config), *extra],
                            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"webhookbus: cannot listen on 127.0.0.1:{occupied_port}: address already in use "
                             "(another make run? set server.port or WEBHOOKBUS_SERVER__PORT)\n")
    assert "curl" not in result.stdout and "broker on" not in result.stdout
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir()), "no spool slot left behind"


def test_dev_on_an_occupied_broker_port_says_so(occupied_port, tmp_path):
    config = tmp_path / "webhookbus.yaml"
    config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": free_port()}}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEBHOOKBUS_")}
    result = subprocess.run([sys.executable, "-m", "webhookbus.cli", "dev", "--config", str(config),
                             "--broker-port", str(occupied_port)],
                            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot start the broker on 127.0.0.1:{occupied_port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr and "curl" not in result.stdout


def test_free_port_never_hands_out_the_same_port_twice(monkeypatch):
    # The kernel may give a just-closed port to the next bind(0): a listener and its admin
    # port picked one after the other then collided (a flaky test).  Here it always does.
    from webhookbus.testing import broker

    offered = iter([41001, 41001, 41001, 41002])

    class Kernel:
        def __init__(self) -> None:
            self.port = next(offered)

        def __enter__(self) -> "Kernel":
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, _address: object) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(broker, "_handed_out", set())
    monkeypatch.setattr(broker.socket, "socket", Kernel)
    assert [broker.free_port(), broker.free_port()] == [41001, 41002]


def test_dev_on_broker_port_0_starts_the_broker_on_a_free_port(tmp_path):
    config = tmp_path / "webhookbus.yaml"
    listener_port = free_port()
    config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": listener_port}}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEBHOOKBUS_")}
    process = subprocess.Popen([sys.executable, "-m", "webhookbus.cli", "dev", "--config", str(config), "--broker-port", "0"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = iter(process.stdout.readline, "")  # type: ignore[union-attr]
        first = next((line for line in lines if not line.startswith("created development key")), "")
        assert first.startswith("broker on 127.0.0.1:"), first
        port = int(first.split()[2].rstrip(";").rsplit(":", 1)[1])
        assert port != 0
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        wait_for_port(listener_port, 30)  # SIGTERM once the listener handles it
    finally:
        terminate(process)
    assert process.returncode == 0
    assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_dev_on_a_broker_port_out_of_range_is_one_line_and_exit_2(port, tmp_path):
    config = tmp_path / "webhookbus.yaml"
    config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": free_port()}}))
    env = {name: value for name, value in os.environ.items() if not name.startswith("WEBHOOKBUS_")}
    result = subprocess.run([sys.executable, "-m", "webhookbus.cli", "dev", "--config", str(config), "--broker-port", port],
                            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"webhookbus: cannot start the broker on port {port}: not a port (0-65535; 0 for any free one)\n"


def test_a_broker_on_an_occupied_port_is_refused_not_taken_for_ours(occupied_port):
    """tansu cannot bind and exits; whatever answers on the port must not pass for it."""
    from webhookbus.testing import Broker

    broker = Broker(port=occupied_port)
    try:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{occupied_port}: address already in use"):
            broker.start()
        assert broker.process is None
    finally:
        broker.stop()


def test_a_broker_whose_port_was_taken_after_the_check_is_refused_not_taken_for_ours(occupied_port, monkeypatch):
    """Two test sessions at once (make test runs two) may both pick the same free port: the port
    was free when checked, another broker took it before tansu bound it, and that other broker
    answers.  Only the process holding the listening socket counts as ours."""
    from webhookbus.testing import Broker, broker as broker_module
    from webhookbus.testing.broker import BrokerError

    monkeypatch.setattr(broker_module, "port_in_use", lambda port: False)  # taken after the check
    broker = Broker(port=occupied_port)
    try:
        with pytest.raises(BrokerError, match="while another process listened"):
            broker.start()
    finally:
        broker.stop()
