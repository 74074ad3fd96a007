"""Fixtures shared by the tests that run the whole example configuration."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhookbus.testing.pytest_plugin import engines
from webhookbus.testing.samples import DEV_FILES, dev_platform_public_pem

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "webhookbus.yaml"


@pytest.fixture(scope="session")
def example_settings(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[bytes]]:
    """``config/webhookbus.yaml`` made runnable with fresh secrets; returns (settings, every secret value).

    Each ``env:`` secret becomes a random ``literal:`` value and each ``file:`` secret a new
    key file, so no environment variable or working directory changes; TruValidate's
    platform key is the public half of the published dev key, which the samples sign with.
    The admin listener takes a free port: the example's fixed 9090 is taken whenever a
    ``make run`` or another checkout's tests use it.
    """
    keys = tmp_path_factory.mktemp("example-keys")
    settings = yaml.safe_load(EXAMPLE.read_text())
    values: list[bytes] = []
    for name, provider in settings["providers"].items():
        references = []
        for reference in provider.get("secrets", []):
            if reference.startswith("file:"):
                path = keys / f"{name}-{Path(reference[5:]).name}"
                path.write_bytes(DEV_FILES[".dev/truvalidate/service.pem"]())
                references.append(f"file:{path}")
                values.append(path.read_bytes())
            else:
                value = f"{name}-secret-{secrets.token_hex(12)}"
                references.append(f"literal:{value}")
                values.append(value.encode())
        provider["secrets"] = references
        if "platform_keys" in provider.get("options", {}):
            platform = keys / f"{name}-platform.pem"
            platform.write_bytes(dev_platform_public_pem())
            provider["options"]["platform_keys"] = [str(platform)]
    for route in settings.get("routes", []):
        if route.get("pii", {}).get("hash_key"):
            value = f"pii-hash-key-{secrets.token_hex(12)}"
            (keys / "pii-hash-key").write_text(value)
            route["pii"]["hash_key"] = f"file:{keys / 'pii-hash-key'}"
            values.append(value.encode())
    settings.get("kafka", {}).pop("bootstrap_servers", None)
    if "admin" in settings:  # 9090 is `make run`'s (or another test run's) on a shared machine
        settings["admin"] = {**settings["admin"], "port": 0}
    return settings, values


@pytest.fixture(params=engines())
def webhookbus_engine(request: pytest.FixtureRequest) -> str:
    """Every listener test runs on each engine ``server.engine: auto`` can choose."""
    return str(request.param)
