"""The config schema: loading it (with the registry's additions), validating a config, readable errors.

``workflow/schemas/config.schema.yaml`` documents every config section. At load time the stage registry
(:mod:`rvi.workflow.registry`) adds what follows from the stage list, so it is written down once: a
``resources.<stage>`` entry for every stage with resources of its own, the stages ``sweeps.stage`` may
name (the training stages) and the section schema of a stage that declares one in the registry.
Validation (``additionalProperties: false`` everywhere) fills the schema defaults, and every problem is
reported in one :class:`ConfigError` naming the key path and the offending value.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from rvi.workflow.registry import REGISTRY, STAGES, TRAINING_STAGES

__all__ = [
    "ConfigError",
    "canonical",
    "default_schema_path",
    "format_error",
    "load_schema",
    "validate_config",
    "validator_with_defaults",
]


class ConfigError(ValueError):
    """A study config or sample sheet is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"Invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def default_schema_path() -> Path:
    """The schema shipped with the workflow (source checkout / editable install layout)."""
    return Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def _with_registry(schema: dict) -> dict:
    """The schema file's schema plus what the stage registry declares (see the module docstring)."""
    props = schema.setdefault("properties", {})
    resources = props["resources"].setdefault("properties", {})
    for stage in STAGES:
        resources.setdefault(stage, {"$ref": "#/$defs/resourceSpec"})
    props["sweeps"]["properties"]["stage"]["enum"] = list(TRAINING_STAGES)
    for stage in REGISTRY:
        if stage.section_schema is not None:
            if stage.section in props:
                raise RuntimeError(
                    f"stage {stage.name}: section {stage.section!r} has a schema in the schema file and in the registry"
                )
            props[stage.section] = {"default": {}, **copy.deepcopy(dict(stage.section_schema))}
    return schema


@lru_cache(maxsize=4)
def _load_schema(path: str) -> dict:
    with open(path) as fh:
        return _with_registry(yaml.safe_load(fh))


def load_schema(path: str | os.PathLike | None = None) -> dict:
    """The effective schema (a shared, cached object: do not modify it)."""
    return _load_schema(str(path or default_schema_path()))


# --------------------------------------------------------------------------------------------------
# Schema validation with defaults
# --------------------------------------------------------------------------------------------------


def validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that fills ``default`` values of missing properties while validating."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    # Deep copy: schema defaults are shared objects and must never be aliased.
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _key(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _schema_at(schema: dict, root: dict, path) -> dict:
    """Resolve the sub-schema of an instance path (follows properties/$ref; best effort for messages)."""
    node = schema
    for part in path:
        while isinstance(node, dict) and "$ref" in node:
            node = _resolve_ref(root, node["$ref"])
        if not isinstance(node, dict):
            return {}
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    while isinstance(node, dict) and "$ref" in node:
        node = _resolve_ref(root, node["$ref"])
    return node if isinstance(node, dict) else {}


def _resolve_ref(root: dict, ref: str) -> dict:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def format_error(err, root: dict) -> list[str]:
    """One readable line per problem, naming the full key path and the offending value."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(_schema_at(root, root, path).get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        lines = []
        for name in extra:
            hint = difflib.get_close_matches(name, allowed, n=1)
            did = f"; did you mean '{hint[0]}'?" if hint else ""
            lines.append(f"unknown key '{_key([*path, name])}'{did} (allowed here: {', '.join(allowed)})")
        return lines or [f"'{_key(path)}': {err.message}"]
    if err.validator == "required":
        return [f"missing required key under '{_key(path)}': {err.message}"]
    value = err.instance
    shown = repr(value) if not isinstance(value, dict | list) or len(repr(value)) < 80 else type(value).__name__
    if err.validator in ("anyOf", "oneOf"):
        reasons = sorted({sub.message for sub in err.context}) if err.context else []
        detail = "; ".join(reasons[:3]) if reasons else err.message
        return [f"bad value for '{_key(path)}': {shown} ({detail})"]
    return [f"bad value for '{_key(path)}': {shown} ({err.message})"]


def validate_config(config: Mapping, schema_path: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` against the schema and return a deep copy with defaults filled in.

    Raises
    ------
    ConfigError
        Listing every unknown key and bad value, each named by its dotted path.
    """
    if not config:
        raise ConfigError("no configuration given: run with --configfile config/<study>.yaml (e.g. config/demo.yaml)")
    schema = load_schema(schema_path)
    cfg = copy.deepcopy(dict(config))
    validator = validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        problems: list[str] = []
        for err in errors:
            for line in format_error(err, schema):
                if line not in problems:
                    problems.append(line)
        raise ConfigError(problems)
    return cfg


def canonical(value):
    """Deep copy with dict keys sorted (lists keep their order)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return copy.deepcopy(value)
