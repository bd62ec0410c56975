"""The top-level parse: the two forms, the settings of the long form and the policies."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .._urls import STORE_SCHEMES, redacted, store_url_problem
from ..errors import ConfigError
from ..keys import DEFAULT_PREFIX, validate_name, validate_prefix
from ..metrics import BACKENDS as METRICS_BACKENDS
from ..policy import FAILURE_MODES, Policy, parse_duration
from ._fields import kind_of
from ._formats import read_config_file
from ._http import ClientIPSettings, RouteEntry, client_ip_section, validate_routes

if TYPE_CHECKING:
    from ..service.descriptors import DomainTable

__all__ = [
    "DEFAULT_LOCAL_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "SETTINGS",
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
    "shadow",
    "routes",
    "client_ip",
    "metrics",
    "domains",
)
DEFAULT_LOCAL_CACHE_SIZE: Final = 10_000
DEFAULT_TIMEOUT: Final = 0.05
# A store call that may block for longer than this is a misconfiguration, not a timeout (and
# much larger values overflow the socket layer).
MAX_TIMEOUT: Final = 3600.0
_EXAMPLE: Final = '{"login": {"limit": 5, "window": 60}}'


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
    #: The ``metrics`` setting: ``"prometheus"``, ``"otel"`` or ``None`` (no metrics).
    metrics: str | None = None
    #: The ``routes`` section, validated (``ratewall.http.routes_from_config`` compiles it).
    routes: tuple[RouteEntry, ...] | None = field(default=None, hash=False)
    #: How the HTTP layer finds the client address (``client_ip`` section), if configured.
    client_ip: ClientIPSettings | None = field(default=None, hash=False)
    #: The ``domains`` section (rate-limit descriptors for ``ratewall serve``), compiled.
    domains: DomainTable | None = field(default=None, hash=False)

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
    source, data = read_config_file(path)
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
            f"or a mapping with 'policies' and settings; got {kind_of(data)}",
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
    shadow = settings.get("shadow")
    if shadow is not None and not isinstance(shadow, bool):
        raise ConfigError(f"must be true or false, got {shadow!r}", source=source, field="shadow")
    defaults = {"failure_mode": failure_mode, "shadow": shadow}
    config = Config(
        _policies(data["policies"], source=source, short_form=False, defaults=defaults),
        store=store,
        key_prefix=validate_prefix(
            settings.get("key_prefix", DEFAULT_PREFIX), source=source, field="key_prefix"
        ),
        local_cache_size=_cache_size(
            settings.get("local_cache_size", DEFAULT_LOCAL_CACHE_SIZE), source=source
        ),
        timeout=_timeout(settings.get("timeout", DEFAULT_TIMEOUT), source=source),
        source=source,
        metrics=_metrics(settings.get("metrics"), source=source),
    )
    if "domains" in settings:
        config = replace(config, domains=_domains(settings["domains"], config))
    if "routes" not in settings and "client_ip" not in settings:
        return config
    return _with_http(config, settings, source)


def _domains(section: object, config: Config) -> DomainTable:
    """The ``domains`` section: descriptor rules naming this file's policies (the grammar and
    its checks live with the matching rules, in ratewall.service.descriptors, which is pure)."""
    from ..service.descriptors import parse_domains

    return parse_domains(section, source=config.source, policies=config.policies)


def _with_http(config: Config, settings: Mapping[str, object], source: str) -> Config:
    """Validate the HTTP sections now, so a bad route fails at load (and in check-config);
    :mod:`ratewall.http` compiles the plain data they become."""
    client_ip = (
        client_ip_section(settings["client_ip"], source=source) if "client_ip" in settings else None
    )
    routes = (
        validate_routes(settings["routes"], source=source, policies=config.policies)
        if "routes" in settings
        else None
    )
    return replace(config, routes=routes, client_ip=client_ip)


def validate_store_url(value: object, *, source: str, field: str) -> str:
    """``value`` if it is a URL string with one of :data:`STORE_SCHEMES` and well-formed parts
    (port, database, socket path, parameters: ``ratewall._urls.store_url_problem``), else
    ConfigError."""
    examples = "such as 'redis://127.0.0.1:6379/0' or 'memory://'"
    if not isinstance(value, str):
        raise ConfigError(
            f"must be a store URL string {examples}, got {kind_of(value)}",
            source=source,
            field=field,
        )
    scheme, separator, _ = value.partition("://")
    if not separator or scheme not in STORE_SCHEMES:
        expected = ", ".join(f"{name}://" for name in STORE_SCHEMES)
        raise ConfigError(
            f"store URL {redacted(value)!r} has an unsupported scheme; expected one of {expected}",
            source=source,
            field=field,
        )
    problem = store_url_problem(value)
    if problem is not None:
        raise ConfigError(problem, source=source, field=field)
    return value


def _policies(
    data: object,
    *,
    source: str,
    short_form: bool,
    defaults: Mapping[str, object] | None = None,
) -> dict[str, Policy]:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping of policy names to policies, e.g. {_EXAMPLE}; got {kind_of(data)}",
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
        if isinstance(fields, dict):
            for setting, value in (defaults or {}).items():
                if value is not None:
                    fields.setdefault(setting, value)
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


def _metrics(value: object, *, source: str) -> str | None:
    if value is not None and value not in METRICS_BACKENDS:
        raise ConfigError(
            f"unknown metrics backend {value!r}; expected one of "
            f"{', '.join(METRICS_BACKENDS)} (or leave the setting out for no metrics)",
            source=source,
            field="metrics",
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
            f"expected seconds (0.05) or a duration such as '50ms', got {kind_of(value)}",
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
