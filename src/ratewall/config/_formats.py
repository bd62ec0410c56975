"""Reading a config file: JSON, YAML or TOML by extension, into plain data.

Each loader reports every key repeated in one mapping (JSON and PyYAML would keep one
silently), naming its field path as the parsed config would; TOML rejects them itself.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Final

import yaml

from ..errors import ConfigError
from ._fields import Problems, duplicate_key

__all__ = ["EXTENSIONS", "read_config_file"]

EXTENSIONS: Final = (".json", ".yaml", ".yml", ".toml")
_YAML_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

# --- JSON -----------------------------------------------------------------------------------


class _Pairs(list[tuple[str, object]]):
    """A JSON object's members in file order, duplicates kept, until their path is known."""


def _load_json(text: str, source: str, problems: Problems) -> object:
    def reject_constant(name: str) -> object:
        raise ConfigError(f"JSON does not allow {name}; write a finite number", source=source)

    try:
        data = json.loads(text, object_pairs_hook=_Pairs, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
        ) from None
    except ConfigError:
        raise
    except ValueError as exc:  # for example an integer with more digits than Python allows
        raise ConfigError(f"invalid JSON: {exc}", source=source) from None
    long_form = isinstance(data, _Pairs) and any(key == "policies" for key, _ in data)
    return _json_objects(data, (), long_form=long_form, source=source, problems=problems)


def _json_objects(
    value: object, path: tuple[object, ...], *, long_form: bool, source: str, problems: Problems
) -> object:
    if isinstance(value, _Pairs):
        result: dict[str, object] = {}
        for key, item in value:
            if key in result:
                problems.add(duplicate_key(key, (*path, key), long_form=long_form, source=source))
                continue
            result[key] = _json_objects(
                item, (*path, key), long_form=long_form, source=source, problems=problems
            )
        return result
    if isinstance(value, list):
        return [
            _json_objects(
                item, (*path, index), long_form=long_form, source=source, problems=problems
            )
            for index, item in enumerate(value)
        ]
    return value


# --- YAML -----------------------------------------------------------------------------------


def _load_yaml(text: str, source: str, problems: Problems) -> object:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_yaml_keys(loader, root, source, problems)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {what}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()


def _check_yaml_keys(
    loader: yaml.SafeLoader, root: yaml.Node, source: str, problems: Problems
) -> None:
    """Reject a key repeated in one mapping, naming its path (PyYAML keeps the last silently).

    Keys are compared as constructed values, so ``1`` and ``0x1`` are the same key. Keys
    brought in by a ``<<`` merge may be overridden; that is what merging is for.
    """
    long_form = isinstance(root, yaml.MappingNode) and any(
        isinstance(key, yaml.ScalarNode) and key.value == "policies" for key, _ in root.value
    )
    seen_nodes: set[int] = set()
    pending: list[tuple[yaml.Node, tuple[object, ...]]] = [(root, ())]
    while pending:
        node, path = pending.pop()
        if id(node) in seen_nodes:  # an alias of a node already checked (or a cycle)
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((child, (*path, index)) for index, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            keys: set[object] = set()
            for key_node, value_node in node.value:
                if key_node.tag == _YAML_MERGE_TAG:
                    pending.append((value_node, path))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a list or mapping as a key: construction rejects it as unhashable
                key = loader.construct_object(key_node)
                if key in keys:
                    problems.add(
                        duplicate_key(key, (*path, key), long_form=long_form, source=source)
                    )
                    continue
                keys.add(key)
                pending.append((value_node, (*path, key)))


# --- TOML -----------------------------------------------------------------------------------


def _load_toml(text: str, source: str, problems: Problems) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)"; TOML itself rejects duplicate keys.
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None


_LOADERS: Final[dict[str, Callable[[str, str, Problems], object]]] = {
    ".json": _load_json,
    ".yaml": _load_yaml,
    ".yml": _load_yaml,
    ".toml": _load_toml,
}


def read_config_file(path: str | os.PathLike[str]) -> tuple[str, object, Problems]:
    """The file at ``path`` as its name (for errors), its decoded data (format by extension)
    and the problems found reading it (keys repeated in a mapping), for the parse to add to."""
    source = os.fspath(path)
    suffix = os.path.splitext(source)[1].lower()
    loader = _LOADERS.get(suffix)
    if loader is None:
        found = f"extension {suffix!r}" if suffix else "no extension"
        raise ConfigError(
            f"unsupported file type ({found}); name the file *.json, *.yaml, *.yml or *.toml",
            source=source,
        )
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file; check the path", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory; pass the config file itself", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"is not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8",
            source=source,
        ) from None
    try:
        problems = Problems()
        data = loader(text, source, problems)
    except RecursionError:
        raise ConfigError("is nested too deeply to be a config file", source=source) from None
    return source, data, problems
