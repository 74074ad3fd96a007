"""``webhookbus`` command line: serve, check, plugins, dev."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version

from webhookbus import log
from webhookbus.config import Config, ConfigError, load_config, route_warnings
from webhookbus.plugin import installed_verifiers

DEFAULT_CONFIG = "config/webhookbus.yaml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"webhookbus: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from webhookbus.server import serve

    config = _load(args.config)
    log.configure(args.log_level)
    asyncio.run(serve(config))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    settings = config.settings
    print(f"{config.source}: OK")
    print(f"  listen  {settings.server.host}:{settings.server.port}   kafka {','.join(settings.kafka.bootstrap_servers)}")
    print(f"  providers ({len(config.providers)}):")
    for provider in config.providers.values():
        print(f"    {provider.name:<14} {provider.settings.verifier:<12} {provider.path:<28} "
              f"{len(provider.settings.secrets)} secret(s), ack deadline {config.publish_timeout(provider.name):g} s")
    print(f"  routes ({len(settings.routes)}):")
    for index, route in enumerate(settings.routes):
        where = "".join(f" {k}={v!r}" for k, v in route.where.items())
        print(f"    {route.name or f'routes[{index}]':<20} {route.provider}/{','.join(route.type)}{where}"
              f" -> {route.topic} (key {route.key}, {route.mode})")
    unrouted = settings.unrouted
    print(f"  unrouted: {unrouted.action}{' -> ' + unrouted.topic if unrouted.topic else ''}")
    for warning in [*config.warnings, *route_warnings(settings)]:
        print(f"  warning: {warning}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    for name, entry in sorted(installed_verifiers().items()):
        dist = entry.dist.name if entry.dist else "?"
        try:
            dist_version = version(dist)
        except PackageNotFoundError:
            dist_version = "?"
        print(f"{name:<14} {dist} {dist_version:<10} {entry.value}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Start a local broker and the listener, with sample secrets, and print signed curls."""
    from webhookbus.testing.broker import Broker
    from webhookbus.testing.samples import DEV_SECRETS, sample_request

    for name, value in DEV_SECRETS.items():
        os.environ.setdefault(name, value)
    broker = Broker(port=args.broker_port).start()
    os.environ["WEBHOOKBUS_KAFKA__BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        config = _load(args.config)
        server = config.settings.server
        print(f"broker on {broker.bootstrap}; listener on http://{server.host}:{server.port}\n")
        for provider in config.providers.values():
            sample = sample_request(provider)
            if sample is None:
                continue
            method, path, headers, body = sample
            parts = ["curl", "-i", "-X", method, f"http://{server.host}:{server.port}{path}"]
            for key, value in headers.items():
                parts += ["-H", f"{key}: {value}"]
            parts += ["--data-binary", body.decode()]
            print(f"# {provider.name}\n{shlex.join(parts)}\n")
        print(f"read the events: webhookbus tail --config {args.config} --topic <topic> --from-beginning\n", flush=True)
        log.configure(args.log_level)
        from webhookbus.server import serve

        asyncio.run(serve(config))
    finally:
        broker.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhookbus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        return sub

    serve = command("serve", cmd_serve, "run the listener")
    check = command("check", cmd_check, "validate a config, load plugins, resolve secrets, print a summary")
    dev = command("dev", cmd_dev, "run a local broker and the listener, print signed sample requests")
    for sub in (serve, check, dev):
        sub.add_argument("--config", default=DEFAULT_CONFIG)
    for sub in (serve, dev):
        sub.add_argument("--log-level", default="INFO")
    dev.add_argument("--broker-port", type=int, default=9092)
    command("plugins", cmd_plugins, "list installed verifier plugins")
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
