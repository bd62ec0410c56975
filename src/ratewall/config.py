"""Config files: the policies, and the settings that say where and how they are enforced.

A file is JSON (``.json``), YAML (``.yaml``/``.yml``, always loaded safely) or TOML
(``.toml``), chosen by its extension. It comes in one of two forms.

The **short form** is a mapping of policy names to policies::

    {"login": {"limit": 5, "window": 60}}

The **long form** puts that mapping under ``policies`` and may add settings::

    {
      "policies": {"login": {"limit": 5, "window": "1m"}},
      "store": "redis://127.0.0.1:6379/0",
      "key_prefix": "ratelimit",
      "local_cache_size": 10000,
      "timeout": "50ms",
      "failure_mode": "open"
    }

How the form is decided, with no guessing: a file is in the long form exactly when its top
level has a ``policies`` key. Then every other top-level key must be one of :data:`SETTINGS`.
Otherwise every top-level key is a policy name. A policy may be *named* like a setting
(``store``, ``timeout``, ...) as long as its value is a policy mapping; a setting's value
written in the short form (``"timeout": 0.1``) is an error that says to use the long form.

Settings:

``store``
    A store URL whose scheme is one of :data:`STORE_SCHEMES`. Not set: the program decides
    (``RateLimiter.from_config`` uses ``memory://``).
``key_prefix``
    The first part of every Redis key (default ``ratelimit``).
``local_cache_size``
    How many identities' known denials the in-process cache remembers; ``0`` turns it off.
``timeout``
    How long one store call may take: seconds (any positive number) or a duration string
    such as ``"50ms"``. Default 50 ms.
``failure_mode``
    What policies without their own ``failure_mode`` do when the store fails: ``raise``
    (default), ``open`` or ``closed``.

Every error is a :class:`~ratewall.ConfigError` naming the file, the dotted path of the field
(``policies.login.limit``, in both forms) and what to do about it. The file is compiled once
into an immutable :class:`Config`; reloading means loading a new one.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from ._urls import STORE_SCHEMES, store_url_problem
from .errors import ConfigError
from .keys import DEFAULT_PREFIX, validate_name, validate_prefix
from .policy import FAILURE_MODES, Policy, parse_duration

__all__ = [
    "DEFAULT_LOCAL_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "EXTENSIONS",
    "SETTINGS",
    "STORE_SCHEMES",
    "Config",
    "load_config",
    "parse_config",
    "validate_store_url",
]

SETTINGS: Final = (
    "store",
    "key_prefix",
    "local_cache_size",
    "timeout",
    "failure_mode",
    "routes",
    "client_ip",
)
_CLIENT_IP_FIELDS: Final = ("trusted_proxies", "header", "ipv6_prefix", "ipv4_prefix")
EXTENSIONS: Final = (".json", ".yaml", ".yml", ".toml")
DEFAULT_LOCAL_CACHE_SIZE: Final = 10_000
DEFAULT_TIMEOUT: Final = 0.05
# A store call that may block for longer than this is a misconfiguration, not a timeout (and
# much larger values overflow the socket layer).
MAX_TIMEOUT: Final = 3600.0
_EXAMPLE: Final = '{"login": {"limit": 5, "window": 60}}'
_YAML_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config: policies by name plus the settings of the long form.

    ``policies`` is read-only and keeps the file's order. ``store`` is ``None`` when the file
    does not name one. ``source`` is the file the config came from.
    """

    policies: Mapping[str, Policy] = field(hash=False)
    store: str | None = None
    key_prefix: str = DEFAULT_PREFIX
    local_cache_size: int = DEFAULT_LOCAL_CACHE_SIZE
    timeout: float = DEFAULT_TIMEOUT
    source: str = "<config>"
    #: The raw ``routes`` section (validated at load; :mod:`ratewall.http` compiles it).
    routes: tuple[Any, ...] | None = field(default=None, hash=False)
    #: How the HTTP layer finds the client address (``client_ip`` section), if configured.
    client_ip: Any = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Copy, so that a caller keeping the dict it passed cannot change this config.
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))

    def policy(self, name: str) -> Policy:
        """The policy called ``name``; :class:`KeyError` naming the known ones if none is."""
        try:
            return self.policies[name]
        except KeyError:
            known = ", ".join(self.policies) or "(none)"
            raise KeyError(
                f"unknown policy {name!r} in {self.source}; known policies: {known}"
            ) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file at ``path`` (format by extension)."""
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
        data = loader(text, source)
    except RecursionError:
        raise ConfigError("is nested too deeply to be a config file", source=source) from None
    return parse_config(data, source=source)


def parse_config(data: object, *, source: str) -> Config:
    """Validate already-decoded config ``data`` (either form); ``source`` names it in errors."""
    try:
        return _parse(data, source)
    except RecursionError:  # repr() of a deeply nested value inside an error message
        raise ConfigError("is nested too deeply to be a config", source=source) from None


def _parse(data: object, source: str) -> Config:
    if data is None:
        raise ConfigError(f"is empty; define at least one policy, e.g. {_EXAMPLE}", source=source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping of policy names to policies, e.g. {_EXAMPLE}, "
            f"or a mapping with 'policies' and settings; got {_kind(data)}",
            source=source,
        )
    if "policies" not in data:
        return Config(_policies(data, source=source, short_form=True), source=source)

    settings = {key: value for key, value in data.items() if key != "policies"}
    for key in settings:
        if key not in SETTINGS:
            raise ConfigError(
                f"unknown setting {key!r}; expected one of policies, {', '.join(SETTINGS)}",
                source=source,
                field=str(key),
            )
    store = (
        validate_store_url(settings["store"], source=source, field="store")
        if "store" in settings
        else None
    )
    failure_mode = (
        _failure_mode(settings["failure_mode"], source=source)
        if "failure_mode" in settings
        else None
    )
    config = Config(
        _policies(
            data["policies"], source=source, short_form=False, default_failure_mode=failure_mode
        ),
        store=store,
        key_prefix=validate_prefix(
            settings.get("key_prefix", DEFAULT_PREFIX), source=source, field="key_prefix"
        ),
        local_cache_size=_cache_size(
            settings.get("local_cache_size", DEFAULT_LOCAL_CACHE_SIZE), source=source
        ),
        timeout=_timeout(settings.get("timeout", DEFAULT_TIMEOUT), source=source),
        source=source,
    )
    if "routes" not in settings and "client_ip" not in settings:
        return config
    return _with_http(config, settings, source)


def _with_http(config: Config, settings: Mapping[str, Any], source: str) -> Config:
    """Validate the HTTP sections now, so a bad route fails at load (and in check-config)."""
    from .http.client_ip import ClientIP
    from .http.routes import parse_routes

    client_ip = None
    if "client_ip" in settings:
        section = settings["client_ip"]
        if not isinstance(section, Mapping):
            raise ConfigError(
                "must be a mapping such as {trusted_proxies: ['10.0.0.0/8'], "
                "header: x-forwarded-for}",
                source=source,
                field="client_ip",
            )
        for key in section:
            if key not in _CLIENT_IP_FIELDS:
                raise ConfigError(
                    f"unknown field {key!r}; expected one of {', '.join(_CLIENT_IP_FIELDS)}",
                    source=source,
                    field=f"client_ip.{key}",
                )
        proxies = section.get("trusted_proxies", ())
        if isinstance(proxies, str) or not isinstance(proxies, list | tuple):
            raise ConfigError(
                "must be a list of addresses or CIDR blocks (or 'unix')",
                source=source,
                field="client_ip.trusted_proxies",
            )
        try:
            client_ip = ClientIP(**{**dict(section), "trusted_proxies": tuple(proxies)})
        except (ValueError, TypeError) as error:
            raise ConfigError(str(error), source=source, field="client_ip") from None
    routes = None
    if "routes" in settings:
        raw = settings["routes"]
        parse_routes(raw, source=source, policies=config.policies, client_ip=client_ip)
        routes = tuple(raw)
    return replace(config, routes=routes, client_ip=client_ip)


def validate_store_url(value: object, *, source: str, field: str) -> str:
    """``value`` if it is a URL string with one of :data:`STORE_SCHEMES` and well-formed parts
    (port, database, socket path, parameters: ``ratewall._urls.store_url_problem``), else
    ConfigError."""
    examples = "such as 'redis://127.0.0.1:6379/0' or 'memory://'"
    if not isinstance(value, str):
        raise ConfigError(
            f"must be a store URL string {examples}, got {_kind(value)}",
            source=source,
            field=field,
        )
    scheme, separator, _ = value.partition("://")
    if not separator or scheme not in STORE_SCHEMES:
        expected = ", ".join(f"{name}://" for name in STORE_SCHEMES)
        raise ConfigError(
            f"store URL {value!r} has an unsupported scheme; expected one of {expected}",
            source=source,
            field=field,
        )
    problem = store_url_problem(value)
    if problem is not None:
        raise ConfigError(problem, source=source, field=field)
    return value


def _policies(
    data: object, *, source: str, short_form: bool, default_failure_mode: str | None = None
) -> dict[str, Policy]:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping of policy names to policies, e.g. {_EXAMPLE}; got {_kind(data)}",
            source=source,
            field="policies",
        )
    if not data:
        raise ConfigError(
            f"defines no policies; add at least one, e.g. {_EXAMPLE}",
            source=source,
            field="policies",
        )
    policies: dict[str, Policy] = {}
    for name, body in data.items():
        path = f"policies.{name}"
        if short_form and name in SETTINGS and not isinstance(body, Mapping):
            raise ConfigError(
                f"{name!r} is a setting, and settings need the long form: put the policies "
                "under a top-level 'policies' key next to it",
                source=source,
                field=str(name),
            )
        checked_name = validate_name(name, source=source, field=path)
        fields = dict(body) if isinstance(body, Mapping) else body
        if isinstance(fields, dict) and default_failure_mode is not None:
            fields.setdefault("failure_mode", default_failure_mode)
        try:
            policies[checked_name] = Policy.from_mapping(fields, source=source, field=path)
        except OverflowError:
            # Only the window is converted to float; a value beyond float range lands here.
            raise ConfigError(
                "is too large; write a window of at most a few years, such as '365d'",
                source=source,
                field=f"{path}.window",
            ) from None
    return policies


def _failure_mode(value: object, *, source: str) -> str:
    if not isinstance(value, str) or value not in FAILURE_MODES:
        raise ConfigError(
            f"unknown failure mode {value!r}; expected one of {', '.join(FAILURE_MODES)}",
            source=source,
            field="failure_mode",
        )
    return value


def _cache_size(value: object, *, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"must be an integer >= 0 (0 turns the local cache off), got {value!r}",
            source=source,
            field="local_cache_size",
        )
    return value


def _timeout(value: object, *, source: str) -> float:
    if isinstance(value, str):
        seconds = parse_duration(value, source=source, field="timeout")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(
                f"must be a positive number of seconds, got {value!r}; "
                "write seconds (0.05) or a duration such as '50ms'",
                source=source,
                field="timeout",
            )
    else:
        raise ConfigError(
            f"expected seconds (0.05) or a duration such as '50ms', got {_kind(value)}",
            source=source,
            field="timeout",
        )
    if seconds > MAX_TIMEOUT:
        raise ConfigError(
            f"is {seconds:g} seconds; a store timeout is at most {MAX_TIMEOUT:g} seconds",
            source=source,
            field="timeout",
        )
    return seconds


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, str | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _dotted(path: tuple[object, ...], *, long_form: bool) -> str:
    """The field path of a raw document position, as errors name it in both forms."""
    parts = [str(part) for part in path]
    return ".".join(parts if long_form else ["policies", *parts])


def _duplicate(
    key: object, path: tuple[object, ...], *, long_form: bool, source: str
) -> ConfigError:
    return ConfigError(
        f"duplicate key {key!r}; each key may appear only once, so remove or rename one",
        source=source,
        field=_dotted(path, long_form=long_form),
    )


# --- JSON -----------------------------------------------------------------------------------


class _Pairs(list[tuple[str, object]]):
    """A JSON object's members in file order, duplicates kept, until their path is known."""


def _load_json(text: str, source: str) -> object:
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
    return _json_objects(data, (), long_form=long_form, source=source)


def _json_objects(
    value: object, path: tuple[object, ...], *, long_form: bool, source: str
) -> object:
    if isinstance(value, _Pairs):
        result: dict[str, object] = {}
        for key, item in value:
            if key in result:
                raise _duplicate(key, (*path, key), long_form=long_form, source=source)
            result[key] = _json_objects(item, (*path, key), long_form=long_form, source=source)
        return result
    if isinstance(value, list):
        return [
            _json_objects(item, (*path, index), long_form=long_form, source=source)
            for index, item in enumerate(value)
        ]
    return value


# --- YAML -----------------------------------------------------------------------------------


def _load_yaml(text: str, source: str) -> object:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_yaml_keys(loader, root, source)
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


def _check_yaml_keys(loader: yaml.SafeLoader, root: yaml.Node, source: str) -> None:
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
                    raise _duplicate(key, (*path, key), long_form=long_form, source=source)
                keys.add(key)
                pending.append((value_node, (*path, key)))


# --- TOML -----------------------------------------------------------------------------------


def _load_toml(text: str, source: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)"; TOML itself rejects duplicate keys.
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None


_LOADERS: Final[dict[str, Callable[[str, str], object]]] = {
    ".json": _load_json,
    ".yaml": _load_yaml,
    ".yml": _load_yaml,
    ".toml": _load_toml,
}
