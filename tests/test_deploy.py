"""deploy/: the example config passes ``webhookbus check``, and the compose file and the
Kubernetes manifests agree with it (paths, port, probes), so none of them rots unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIG = DEPLOY / "webhookbus.yaml"
MOUNTED_AT = "/etc/webhookbus/webhookbus.yaml"


def example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DEPLOY / "example.env").read_text().splitlines()
             if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_the_deploy_config_passes_check_with_the_example_env():
    result = subprocess.run([sys.executable, "-m", "webhookbus.cli", "check", "--config", str(CONFIG)],
                            env={**os.environ, **example_env()}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "dedup: redis://redis:6379/0 (password env:...)" in result.stdout
    assert "change-me" not in result.stdout, "no secret value is printed"
    warnings = [line for line in result.stdout.splitlines() if "warning" in line]
    assert all("sends PII" in line for line in warnings), "PII rules are the operator's choice; nothing else is off"


def test_compose_and_kubernetes_agree_with_the_config():
    settings = yaml.safe_load(CONFIG.read_text())
    spool, port = settings["spool"]["directory"], settings["server"]["port"]

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    instances = [service for name, service in compose["services"].items() if name.startswith("webhookbus")]
    assert len(instances) == 2
    for service in instances:
        assert f"./webhookbus.yaml:{MOUNTED_AT}:ro" in service["volumes"]
        assert any(volume.endswith(f":{spool}") for volume in service["volumes"]), "a spool volume of its own"
        assert service["ports"][0].endswith(f":{port}") and "/readyz" in " ".join(service["healthcheck"]["test"])
    assert {"redis", "kafka"} <= set(compose["services"])
    assert set(example_env()) >= {"REDIS_PASSWORD", "UIP_WEBHOOK_SECRET", "ZIGNSEC_WEBHOOK_SECRET"}

    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "webhookbus.yaml").read_text())}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["spool"] == spool and f"{mounts['config']}/webhookbus.yaml" == MOUNTED_AT
    assert container["args"][-1] == MOUNTED_AT
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > settings["server"]["graceful_timeout"]
    claim = next(v for v in pod["volumes"] if v["name"] == "spool")["persistentVolumeClaim"]["claimName"]
    assert claim == documents["PersistentVolumeClaim"]["metadata"]["name"]
    assert documents["Service"]["spec"]["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
