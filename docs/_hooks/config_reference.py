"""MkDocs hooks for the ratewall site.

- The configuration reference (``configuration/reference.md``) is generated at build time
  from the JSON Schema the package ships, in place of its ``<!-- config-reference -->``
  marker: the schema is the one source, so the page cannot drift from it.
- The schema and the service's OpenAPI document are published with the site, so pages can
  link to them (``config.schema.json``, ``openapi.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "src" / "ratewall" / "schema" / "config.schema.json"
PUBLISHED = {
    "config.schema.json": SCHEMA,
    "openapi.yaml": ROOT / "src" / "ratewall" / "service" / "openapi.yaml",
}
MARKER = "<!-- config-reference -->"
REFERENCE_PAGE = "configuration/reference.md"

# The schema's sections, in reading order: ($defs name, heading, anchor, what it is).
SECTIONS = (
    ("longForm", "Settings (long form)", "settings", "The top level of a long-form file."),
    ("policy", "Policy fields", "policy", "Each entry of `policies` (or of a short-form file)."),
    ("variant", "Overrides and tiers", "variant", "Each entry of a policy's `overrides`/`tiers`."),
    ("route", "Routes", "route", "Each entry of `routes`."),
    (
        "routeLimit",
        "A route's policy as a mapping",
        "route-limit",
        "An entry of a route's `policies`.",
    ),
    (
        "tierHeader",
        "Tier selection (`tier`)",
        "tier",
        "A route's (or a route policy's) `tier` mapping.",
    ),
    ("clientIp", "Client address (`client_ip`)", "client-ip", "The `client_ip` section."),
    ("breaker", "Circuit breaker (`breaker`)", "breaker", "The `breaker` section."),
    ("batching", "Async batching (`batching`)", "batching", "The `batching` section."),
    (
        "descriptor",
        "Descriptor entries (`domains`)",
        "descriptor",
        "Each entry of a `domains` list.",
    ),
)
ANCHORS = {name: anchor for name, _, anchor, _ in SECTIONS}
LABELS = {
    "longForm": "settings",
    "policy": "policy",
    "variant": "limits",
    "route": "route",
    "routeLimit": "route policy",
    "clientIp": "client address settings",
    "tierHeader": "tier selection",
    "breaker": "breaker settings",
    "batching": "batching settings",
    "descriptor": "descriptor entry",
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, path in PUBLISHED.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != REFERENCE_PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{REFERENCE_PAGE} lost its {MARKER} marker")
    schema = json.loads(SCHEMA.read_text("utf-8"))
    return markdown.replace(MARKER, render(schema))


def render(schema: dict[str, Any]) -> str:
    defs: dict[str, Any] = schema["$defs"]
    # A section the reference would not show is an error of the build, not a silent gap.
    unlisted = [name for name, node in defs.items() if "properties" in node and name not in ANCHORS]
    inline = [
        f"{name}.{field}"
        for name, node in defs.items()
        for field, spec in node.get("properties", {}).items()
        if "properties" in spec
    ]
    if unlisted or inline:
        raise ValueError(
            f"config.schema.json: objects {unlisted + inline} have no section in the reference; "
            "define each in $defs and add it to SECTIONS in docs/_hooks/config_reference.py"
        )
    parts: list[str] = []
    for name, heading, anchor, intro in SECTIONS:
        node = defs[name]
        parts.append(f"## {heading} {{#{anchor}}}\n\n{intro} {node.get('description', '')}\n")
        required = set(node.get("required", ()))
        parts.append("| field | type | default | meaning |\n|---|---|---|---|")
        for field, spec in node["properties"].items():
            resolved = resolve(spec, defs)
            mark = " (required)" if field in required else ""
            meaning = spec.get("description") or resolved.get("description", "")
            parts.append(
                f"| `{field}`{mark} | {type_of(spec, defs)} | {default_of(spec, defs)} "
                f"| {one_line(meaning)} |"
            )
        parts.append("")
    parts.append("## Value types {#types}\n")
    for name in (
        "algorithm",
        "failureMode",
        "duration",
        "storeUrl",
        "identitySpec",
        "onMissingIdentity",
        "policyName",
    ):
        node = defs[name]
        heading = title(name)[0].upper() + title(name)[1:]
        parts.append(f"### {heading} {{#{name.lower()}}}\n\n{node['description']}\n")
    return "\n".join(parts) + "\n"


def resolve(spec: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref")
    if ref is None:
        return spec
    return {
        **resolve(defs[ref.rsplit("/", 1)[-1]], defs),
        **{k: v for k, v in spec.items() if k != "$ref"},
    }


def title(name: str) -> str:
    return {
        "algorithm": "algorithm",
        "failureMode": "failure mode",
        "duration": "duration",
        "storeUrl": "store URL",
        "identitySpec": "identity source",
        "onMissingIdentity": "missing identity",
        "policyName": "policy name",
    }[name]


def type_of(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    ref = spec.get("$ref")
    if ref is not None:
        target = ref.rsplit("/", 1)[-1]
        if target in ANCHORS:
            return f"[{LABELS[target]}](#{ANCHORS[target]})"
        if target == "durationString":
            return "a [duration](#duration) string"
        if target in (
            "algorithm",
            "failureMode",
            "duration",
            "storeUrl",
            "identitySpec",
            "onMissingIdentity",
            "policyName",
        ):
            return f"[{title(target)}](#{target.lower()})"
        return type_of(defs[target], defs)
    if "enum" in spec:
        return " \\| ".join("omitted" if value is None else f"`{value}`" for value in spec["enum"])
    if "oneOf" in spec:
        return " or ".join(type_of(option, defs) for option in spec["oneOf"])
    kind = spec.get("type", "any")
    if kind == "array":
        return f"list of {type_of(spec.get('items', {}), defs)}"
    if kind == "object" and "additionalProperties" in spec:
        values = spec["additionalProperties"]
        inner = type_of(values, defs) if isinstance(values, dict) else "any"
        return f"mapping of names to {inner}"
    if kind == "string" and "pattern" in spec and spec.get("format") is None:
        return "string"
    bounds = []
    if "minimum" in spec:
        bounds.append(f"≥ {spec['minimum']}")
    if "exclusiveMinimum" in spec:
        bounds.append(f"> {spec['exclusiveMinimum']}")
    if "maximum" in spec:
        bounds.append(f"≤ {spec['maximum']:,}".replace(",", " "))
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def default_of(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    resolved = resolve(spec, defs)
    if "default" not in resolved:
        return ""
    return f"`{json.dumps(resolved['default'])}`"


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
