"""JSON Schema of the config file and of each plugin's options, for editors and ``webhookbus plugins``.

The config models know every section but not what a provider's ``options`` may hold: that is
decided by the plugin named in ``verifier``.  So the file's schema is the settings' own schema
plus, per installed plugin, "if ``verifier`` is this plugin then ``options`` is its model" —
generated from the plugins installed where the command runs, so an editor completes and checks
exactly the options this environment will accept.
"""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from typing import Any

from webhookbus.config import Settings
from webhookbus.plugin import installed_verifiers

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Fields whose validator also accepts a single value for a list (``secrets: env:X``,
# ``type: "uip.*"``, ``bootstrap_servers: a:9092,b:9092``): the generated schema only says list.
_ONE_OR_MANY = {("ProviderSettings", "secrets"), ("RouteSettings", "type"), ("KafkaSettings", "bootstrap_servers")}


def options_schema(entry: EntryPoint, ref_prefix: str = "") -> dict[str, Any]:
    """The JSON Schema of a plugin's ``Options`` model; ``ref_prefix`` namespaces its ``$defs``."""
    model = entry.load().Options
    return model.model_json_schema(ref_template=f"#/$defs/{ref_prefix}{{model}}")  # type: ignore[no-any-return]


def config_schema(warnings: list[str] | None = None) -> dict[str, Any]:
    """The whole config file's JSON Schema; plugins that fail to load are named in ``warnings``."""
    schema = Settings.model_json_schema()
    definitions = schema.setdefault("$defs", {})
    for model, field in _ONE_OR_MANY:
        listed = definitions[model]["properties"][field]
        single = {key: value for key, value in listed.items() if key in ("title", "description", "default")}
        definitions[model]["properties"][field] = {**single, "anyOf": [listed["items"], listed]}

    provider = definitions["ProviderSettings"]
    conditions = []
    for name, entry in sorted(installed_verifiers().items()):
        prefix = f"plugin.{name}."
        try:
            options = options_schema(entry, prefix)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            if warnings is not None:
                warnings.append(f"plugin {name!r}: {type(exc).__name__}: {exc}")
            continue
        for nested, body in options.pop("$defs", {}).items():
            definitions[prefix + nested] = body
        definitions[f"plugin.{name}"] = options
        conditions.append({
            "if": {"properties": {"verifier": {"const": name}}, "required": ["verifier"]},
            "then": {"properties": {"options": {"$ref": f"#/$defs/plugin.{name}"}}},
        })
    verifier = provider["properties"]["verifier"]
    verifier["enum"] = sorted(installed_verifiers())
    verifier.pop("type", None)
    provider["allOf"] = conditions
    return {"$schema": DRAFT, "title": "webhookbus configuration", **schema}


def options_table(entry: EntryPoint) -> list[tuple[str, str, str, str]]:
    """(option, type, default, description) rows for ``webhookbus plugins``."""
    schema = options_schema(entry)
    required = set(schema.get("required", ()))
    rows = []
    for name, spec in schema.get("properties", {}).items():
        default = "(required)" if name in required else json.dumps(spec.get("default")) if "default" in spec else ""
        rows.append((name, _type_name(spec), default, spec.get("description", "")))
    return rows


def _type_name(spec: dict[str, Any]) -> str:
    if "anyOf" in spec:
        return " | ".join(_type_name(option) for option in spec["anyOf"])
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[-1]
    if "enum" in spec:
        return " | ".join(json.dumps(value) for value in spec["enum"])
    if "const" in spec:
        return json.dumps(spec["const"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(spec.get('items', {}))}]"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"dict[str, {_type_name(spec['additionalProperties'])}]"
    return str(kind)
