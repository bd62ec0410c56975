"""Config documents as an editor sees them: decoded by the plain JSON/YAML/TOML parsers,
without the loader's own checks, for validating against the JSON Schema."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def schema() -> dict[str, Any]:
    """The schema as the installed package ships it."""
    text = resources.files("ratewall").joinpath("schema", "config.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validator() -> Any:
    return jsonschema.Draft202012Validator(schema())


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode(text: str, language: str) -> object:
    """``text`` decoded as ``language`` (json, yaml or toml); ValueError or the parser's own
    error if it is not such a document. JSON's NaN and Infinity are not JSON, so rejected."""
    if language == "json":
        return json.loads(text, parse_constant=_no_constants)
    if language in ("yaml", "yml"):
        return yaml.safe_load(text)
    if language == "toml":
        return tomllib.loads(text)
    raise ValueError(f"not a config language: {language}")


def schema_errors(data: object) -> list[str]:
    """Every schema violation of ``data``, as 'path: message' lines (empty when valid)."""
    found = sorted(validator().iter_errors(data), key=lambda error: list(error.path))
    return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in found]
