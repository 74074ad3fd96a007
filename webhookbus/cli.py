"""``webhookbus`` command line: serve, reload, check, dev, sign, tail, plugins, schema, spool status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from webhookbus import log
from webhookbus.config import AdminSettings, Config, ConfigError, Provider, ServerSettings, Settings, load_config, load_settings, route_warnings
from webhookbus.pii import pii_warnings
from webhookbus.plugin import accepted_methods, installed_verifiers

DEFAULT_CONFIG = "config/webhookbus.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"webhookbus: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from webhookbus.http.reload import PidFile
    from webhookbus.http.server import ListenError, StartupFailed, run

    config = _load(args.config)
    log.configure(args.log_level)
    try:
        with PidFile(config.settings):  # where `webhookbus reload` finds this process
            return run(config)
    except (StartupFailed, ListenError) as exc:  # e.g. the spool directory cannot be written, the port is taken
        return _fail(str(exc))


def cmd_reload(args: argparse.Namespace) -> int:
    """Make the running listener re-read its config (SIGHUP) and print each process's outcome."""
    from webhookbus.http.reload import NotRunning, outcomes_since, signal_reload

    settings = _settings(args.config)  # a file with errors is refused here, nothing signalled
    since = time.time()
    try:
        pid = signal_reload(settings)
    except NotRunning as exc:
        return _fail(str(exc), code=1)
    print(f"sent SIGHUP to webhookbus (pid {pid})")
    deadline = time.monotonic() + args.timeout
    while len(outcomes := outcomes_since(settings, since)) < settings.server.workers and time.monotonic() < deadline:
        time.sleep(0.1)
    for outcome in outcomes:
        print(f"  process {outcome['pid']}: {outcome['result']}")
        if outcome.get("reason"):
            print(textwrap.indent(outcome["reason"], "    "), file=sys.stderr)
    if len(outcomes) < settings.server.workers:
        return _fail(f"{settings.server.workers - len(outcomes)} process(es) did not report within {args.timeout:g} s: "
                     "see the listener's log", code=1)
    return 0 if all(outcome["result"] == "applied" for outcome in outcomes) else 1


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    settings = config.settings
    print(f"{config.source}: OK")
    server = settings.server
    tls = f", tls (client_auth {server.tls.client_auth})" if server.tls else ""
    print(f"  listen  {server.host}:{server.port} ({server.engine_name}{tls})   "
          f"kafka {','.join(settings.kafka.bootstrap_servers)}")
    print(f"  providers ({len(config.providers)}):")
    for provider in config.providers.values():
        print(f"    {provider.name:<14} {provider.settings.verifier:<12} {provider.path:<28} "
              f"{len(provider.settings.secrets)} secret(s), ack deadline {config.publish_timeout(provider.name):g} s")
    print(f"  routes ({len(settings.routes)}):")
    for index, route in enumerate(settings.routes):
        where = "".join(f" {k}={v!r}" for k, v in route.where.items())
        print(f"    {route.name or f'routes[{index}]':<20} {route.provider}/{','.join(route.type)}{where}"
              f" -> {route.topic} (key {route.key}, {route.mode})")
        if route.pii is not None:
            rules = [f"{kind} {', '.join(paths)}" for kind, paths in
                     (("drop", route.pii.drop), ("hash", route.pii.hash), ("mask", route.pii.mask),
                      ("keep", route.pii.keep)) if paths]
            print(f"      pii: {'; '.join(rules) or 'no fields'}")
        if route.reply is not None:
            fallback = route.reply.fallback if route.reply.fallback == "static" else json.dumps(route.reply.fallback)
            print(f"      decided by a Kafka consumer: reply on {route.reply.topic} within {route.reply.timeout:g} s, "
                  f"else {fallback}")
    unrouted = settings.unrouted
    print(f"  unrouted: {unrouted.action}{' -> ' + unrouted.topic if unrouted.topic else ''}")
    dedup = settings.dedup
    print("  dedup: local (this process's spool slot)" if dedup.store == "local" else
          f"  dedup: {dedup.store}{' (password ' + dedup.password.split(':')[0] + ':...)' if dedup.password else ''}, "
          f"{dedup.timeout:g} s per call; unavailable: " + ", ".join(
              f"{p.name} {p.settings.on_dedup_unavailable}" for p in config.providers.values()))
    for warning in [*config.warnings, *route_warnings(settings), *pii_warnings(config)]:
        print(f"  warning: {warning}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from webhookbus.schema import options_schema, options_table

    installed = installed_verifiers()
    if args.schema is not None:
        if args.schema not in installed:
            return _fail(f"no verifier plugin {args.schema!r}; installed: {', '.join(sorted(installed))}")
        schema = options_schema(installed[args.schema])
        print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}, indent=2))
        return 0
    for name, entry in sorted(installed.items()):
        dist = entry.dist.name if entry.dist else "?"
        try:
            dist_version = version(dist)
        except PackageNotFoundError:
            dist_version = "?"
        print(f"{name:<16} {dist} {dist_version}  ({entry.value})")
        try:
            rows = options_table(entry)
            methods = accepted_methods(entry.load())
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            print(f"    cannot load: {type(exc).__name__}: {exc}\n")
            continue
        if methods != {"POST"}:  # a plugin that answers handshakes on other methods
            print(f"    methods: {', '.join(sorted(methods))}")
        for option, kind, default, description in rows or [("(no options)", "", "", "")]:
            print(f"    {option:<20} {kind:<28} {default:<16} {description}".rstrip())
        print()
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from webhookbus.schema import config_schema

    warnings: list[str] = []
    print(json.dumps(config_schema(warnings), indent=2))
    for warning in warnings:
        print(f"webhookbus: warning: {warning} (its options are not in the schema)", file=sys.stderr)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Print (or send) a correctly signed sample request for one configured provider."""
    from webhookbus.testing.samples import install_dev_secrets, sample_request, signers_for

    if args.dev_secrets:
        install_dev_secrets()
    config = _load(args.config)
    provider = config.providers.get(args.provider)
    if provider is None:
        return _fail(f"no provider {args.provider!r} in {args.config}; configured: {', '.join(config.providers)}")
    variants = signers_for(provider.settings.verifier)
    if not variants:
        return _fail(f"no signer for verifier {provider.settings.verifier!r} "
                     "(a plugin offers one through the webhookbus.signers entry point)")
    if args.variant is not None and args.variant not in variants:
        return _fail(f"verifier {provider.settings.verifier!r} has variants: {', '.join(variants)}")
    url = (args.url or base_url(config.settings.server)).rstrip("/")
    try:
        data = _read_data(args.data)
        signed = sample_request(provider, data, args.variant, public_url(config, provider, url))
    except ValueError as exc:
        return _fail(str(exc))
    assert signed is not None
    print(f"# {provider.name}: {provider.settings.verifier}, variant {args.variant or next(iter(variants))} "
          f"of {', '.join(variants)}", file=sys.stderr)
    if not args.send:
        print(signed.curl(url))
        return 0
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + signed.path, signed.body, signed.headers, method=signed.method)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as reply:
            status, headers, body = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    except (urllib.error.URLError, OSError) as error:
        return _fail(f"cannot reach {url}: {getattr(error, 'reason', error)}", code=1)
    print(f"HTTP {status}")
    print("".join(f"{name}: {value}\n" for name, value in headers.items()))
    print(body.decode("utf-8", "replace"))
    return 0 if 200 <= status < 300 else 1


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the CloudEvents on a topic; ``assign()``-based, so it joins no consumer group."""
    from kafka import KafkaConsumer, TopicPartition

    from webhookbus.events import decode_kafka

    kafka = _settings(args.config).kafka
    extra = {k: v for k, v in kafka.producer.items() if k in KafkaConsumer.DEFAULT_CONFIG}  # TLS/SASL settings
    consumer = KafkaConsumer(**{**extra, "bootstrap_servers": args.bootstrap or kafka.bootstrap_servers,
                                "client_id": f"{kafka.client_id}-tail", "enable_auto_commit": False})
    idle_since, seen = time.monotonic(), 0

    def idle() -> bool:
        return args.timeout is not None and time.monotonic() - idle_since > args.timeout

    try:
        while not (partitions := consumer.partitions_for_topic(args.topic)):
            if idle():
                return _fail(f"topic {args.topic} does not exist (waited {args.timeout:g} s)", code=1)
            time.sleep(0.5)
        consumer.assign([TopicPartition(args.topic, p) for p in sorted(partitions)])
        (consumer.seek_to_beginning if args.from_beginning else consumer.seek_to_end)()
        while (args.max is None or seen < args.max) and not idle():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records[: None if args.max is None else args.max - seen]:
                    document = decode_kafka(record.value, record.headers or [])
                    print(json.dumps(document, ensure_ascii=False) if args.json else _pretty(record, document),
                          flush=True)
                    seen, idle_since = seen + 1, time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _pretty(record: Any, document: dict[str, Any]) -> str:
    key = f"  key {record.key.decode('utf-8', 'replace')}" if record.key else ""
    lines = [f"── {record.topic} [{record.partition}] offset {record.offset}{key}"]
    lines += [f"   {name:<16} {value}" for name, value in document.items() if name not in ("data", "data_base64")]
    data = json.dumps(document.get("data"), indent=2, ensure_ascii=False)
    lines += ["   data", *(f"     {line}" for line in data.splitlines()), ""]
    return "\n".join(lines)


def _settings(path: str, sections: list[str] | None = None) -> Settings:
    """Only the settings (no plugins, no secrets): what a topic subscriber's machine can load.
    Errors are load_config's: file:line, and never a value from ``secrets`` or ``kafka.producer``."""
    try:
        return load_settings(path, sections)
    except ConfigError as exc:
        print(f"webhookbus: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _read_data(value: str | None) -> Any:
    """``--data``: JSON text, or ``@file`` holding JSON; ``None`` asks the signer for its sample."""
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
    except OSError as exc:
        raise ValueError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--data is not JSON: {exc}") from None


def base_url(server: ServerSettings | AdminSettings) -> str:
    """Where a local client reaches the listener (or the admin listener): a wildcard bind address becomes loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    scheme = "https" if isinstance(server, ServerSettings) and server.tls else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{server.port}"


def public_url(config: Config, provider: Provider, sent_to: str) -> str:
    """The URL the listener will see a request to ``provider`` as (``InboundRequest.url``), sent to
    base URL ``sent_to``: the configured public URL when there is one, else ``sent_to`` itself."""
    from webhookbus.http.urls import configured_base

    base = configured_base(config.settings.server, provider)
    return base[0] + provider.path[len(base[1]):] if base is not None else sent_to + provider.path


def _fail(message: str, code: int = 2) -> int:
    print(f"webhookbus: {message}", file=sys.stderr)
    return code


def cmd_dev(args: argparse.Namespace) -> int:
    """Start a local broker and the listener, with sample secrets, and print signed curls."""
    from webhookbus.http.reload import PidFile
    from webhookbus.http.server import ListenError, StartupFailed, bind, close, serve
    from webhookbus.testing.broker import Broker, BrokerError
    from webhookbus.testing.samples import install_dev_secrets, sample_request

    from webhookbus.reply import answer_in_threads, load_policy

    for created in install_dev_secrets():
        print(f"created development key {created}")
    try:
        policy = load_policy(args.policy) if args.policy else None
    except ValueError as exc:
        return _fail(f"--policy: {exc}")
    try:
        broker = Broker(port=args.broker_port)
    except BrokerError as exc:
        return _fail(str(exc))
    stop_policy = threading.Event()
    os.environ["WEBHOOKBUS_KAFKA__BOOTSTRAP_SERVERS"] = broker.bootstrap
    config = _load(args.config)
    try:  # the listener's address first: a second `make run` stops here, before it starts a broker
        sockets = bind(config.settings.server)
    except ListenError as exc:
        return _fail(str(exc))
    try:
        broker.start()
        url = base_url(config.settings.server)
        exe = os.path.relpath(sys.argv[0]) if os.path.sep in sys.argv[0] else "webhookbus"
        print(f"broker on {broker.bootstrap}; listener on {url}")
        if config.settings.admin is not None:
            print(f"admin on {base_url(config.settings.admin)}/ (status page); /metrics, /healthz, /readyz")
        print()
        for provider in config.providers.values():
            sample = sample_request(provider, url=public_url(config, provider, url))
            if sample is not None:
                print(f"# {provider.name}; a freshly signed one (some schemes expire in seconds): "
                      f"{exe} sign --config {args.config} --provider {provider.name} --dev-secrets --send")
                print(f"{sample.curl(url)}\n")
        print(f"read the events: WEBHOOKBUS_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap} "
              f"{exe} tail --config {args.config} --topic <topic> --from-beginning\n", flush=True)
        decided = sorted({route.topic for route in config.settings.routes if route.reply is not None})
        if policy is not None and decided:
            answer_in_threads(decided, policy, broker.bootstrap, stop_policy)
            print(f"{args.policy} answers the events of {', '.join(decided)} (routes with reply)")
            for name in [p.name for p in config.providers.values() if p.settings.verifier == "authgear"]:
                print(f"# a sign-up it decides: {exe} sign --config {args.config} --provider {name} "
                      "--variant user.pre_create --dev-secrets --send")
            print(flush=True)
        log.configure(args.log_level)
        with PidFile(config.settings):
            asyncio.run(serve(config, sockets=sockets))
    except (BrokerError, StartupFailed, ListenError) as exc:
        return _fail(str(exc))
    finally:
        stop_policy.set()
        close(sockets)
        broker.stop()
    return 0


def cmd_spool_status(args: argparse.Namespace) -> int:
    """Depth and age of each spool slot; reads only the ``spool`` section (no secrets needed)."""
    from webhookbus.delivery.spool import spool_status

    directory = args.directory
    if directory is None:
        directory = _settings(args.config, ["spool"]).spool.directory
    slots = spool_status(directory)
    print(f"spool {Path(directory).resolve()}: {sum(s.records for s in slots)} record(s) to forward")
    for slot in slots:
        owner = f"in use by pid {slot.owner}" if slot.owner else "idle (no process)"
        age = f", oldest {time.time() - slot.oldest:.1f} s old" if slot.oldest is not None else ""
        print(f"  slot {slot.slot:<3} {owner:<24} {slot.records} record(s), {slot.bytes} bytes on disk{age}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhookbus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        return sub

    serve = command("serve", cmd_serve, "run the listener")
    reload = command("reload", cmd_reload, "make the running listener re-read its config (SIGHUP), print the outcome")
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for every process's outcome")
    check = command("check", cmd_check, "validate a config, load plugins, resolve secrets, print a summary")
    dev = command("dev", cmd_dev, "run a local broker and the listener, print signed sample requests")
    for sub in (serve, check, dev, reload):
        sub.add_argument("--config", default=DEFAULT_CONFIG)
    for sub in (serve, dev):
        sub.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    dev.add_argument("--broker-port", type=int, default=9092, help="the local broker's port; 0 for any free one")
    dev.add_argument("--policy", help="path/file.py:function answering the routes with reply (webhookbus.reply)")
    sign = command("sign", cmd_sign, "print (or --send) a correctly signed sample request for a provider")
    tail = command("tail", cmd_tail, "print the CloudEvents published on a topic")
    for sub in (sign, tail):
        sub.add_argument("--config", default=DEFAULT_CONFIG)
    sign.add_argument("--provider", required=True, help="a provider name from the config")
    sign.add_argument("--data", help="the payload as JSON, or @file holding JSON (default: a realistic sample)")
    sign.add_argument("--variant", help="a signing variant, e.g. uip: v1 or v2 (default: the first)")
    sign.add_argument("--url", help="base URL of the listener (default: from the config's server section)")
    sign.add_argument("--send", action="store_true", help="send it and print the reply instead of a curl command")
    sign.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the reply with --send")
    sign.add_argument("--dev-secrets", action="store_true", help="use make run's sample secrets where none are set")
    tail.add_argument("--topic", required=True)
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the next one")
    tail.add_argument("--max", type=int, help="stop after this many messages")
    tail.add_argument("--timeout", type=float, help="stop after this many seconds without a message")
    tail.add_argument("--bootstrap", help="host:port of a broker (default: kafka.bootstrap_servers)")
    tail.add_argument("--json", action="store_true", help="one structured-mode JSON document per line")
    plugins = command("plugins", cmd_plugins, "list installed verifier plugins and their options")
    plugins.add_argument("--schema", metavar="NAME", help="print the JSON Schema of one plugin's options")
    command("schema", cmd_schema, "print the JSON Schema of the config file, installed plugins' options included")
    spool = commands.add_parser("spool", help="inspect the local spool").add_subparsers(dest="spool_command", required=True)
    status = spool.add_parser("status", help="records waiting to be forwarded, per slot, and the oldest one's age")
    status.set_defaults(handler=cmd_spool_status)
    status.add_argument("--config", default=DEFAULT_CONFIG)
    status.add_argument("--directory", help="the spool directory (default: spool.directory from the config)")
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader left (`webhookbus tail ... | head`): that is how such a pipe ends, not an
        # error worth a traceback.  Point stdout at /dev/null so the flush at exit fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
