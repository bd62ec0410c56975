"""The top-level parse: the two forms, the settings of the long form and the policies."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

from ..descriptors import DomainTable, parse_domains
from ..errors import ConfigError
from ..keys import DEFAULT_PREFIX, validate_name, validate_prefix
from ..metrics import BACKENDS as METRICS_BACKENDS
from ..policy import FAILURE_MODES, Policy
from ._fields import Problems, closest, did_you_mean, kind_of
from ._formats import read_config_file
from ._http import ClientIPSettings, RouteEntry, client_ip_section, validate_routes
from ._store import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    NO_BATCHING_SETTINGS,
    NO_BREAKER_SETTINGS,
    Batching,
    Breaker,
    batching_section,
    breaker_section,
    timeout_setting,
    validate_store_url,
)

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
    "breaker",
    "batching",
)
DEFAULT_LOCAL_CACHE_SIZE: Final = 10_000
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
    #: The ``breaker`` section: when the circuit breaker opens, and for how long.
    breaker: Breaker = NO_BREAKER_SETTINGS
    #: The ``batching`` section: how the asyncio Redis store batches its script calls.
    batching: Batching = NO_BATCHING_SETTINGS

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
    """Read, parse and validate the config file at ``path`` (format by extension).

    A :class:`~ratewall.ConfigError` names the first problem found and carries every problem
    of the file in ``errors``."""
    source, data, problems = read_config_file(path)
    return _checked(data, source, problems)


def parse_config(data: object, *, source: str) -> Config:
    """Validate already-decoded config ``data`` (either form); ``source`` names it in errors."""
    return _checked(data, source, Problems())


def _checked(data: object, source: str, problems: Problems) -> Config:
    try:
        return _parse(data, source, problems)
    except RecursionError:  # repr() of a deeply nested value inside an error message
        raise ConfigError("is nested too deeply to be a config", source=source) from None


def _parse(data: object, source: str, problems: Problems) -> Config:
    if data is None:
        raise ConfigError(f"is empty; define at least one policy, e.g. {_EXAMPLE}", source=source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"must be a mapping of policy names to policies, e.g. {_EXAMPLE}, "
            f"or a mapping with 'policies' and settings; got {kind_of(data)}",
            source=source,
        )
    if "policies" in data:
        policies_key: object = "policies"
    else:
        policies_key = _misspelt_policies(data)
        if policies_key is None:
            policies = _policies(data, source=source, short_form=True, problems=problems)
            problems.raise_first()
            return Config(policies.parsed, source=source)
        problems.add(
            ConfigError(
                f"unknown top-level field {policies_key!r} (did you mean 'policies'?)",
                source=source,
                field=str(policies_key),
            )
        )

    settings = {key: value for key, value in data.items() if key != policies_key}
    for key in settings:
        if key not in SETTINGS:
            problems.add(
                ConfigError(
                    f"unknown setting {key!r}; expected one of policies, {', '.join(SETTINGS)}"
                    + did_you_mean(key, ("policies", *SETTINGS)),
                    source=source,
                    field=str(key),
                )
            )
    store = (
        problems.attempt(
            lambda: validate_store_url(settings["store"], source=source, field="store"), None
        )
        if "store" in settings
        else None
    )
    failure_mode = (
        problems.attempt(lambda: _failure_mode(settings["failure_mode"], source=source), None)
        if "failure_mode" in settings
        else None
    )
    shadow = settings.get("shadow")
    if shadow is not None and not isinstance(shadow, bool):
        problems.add(
            ConfigError(f"must be true or false, got {shadow!r}", source=source, field="shadow")
        )
        shadow = None
    defaults = {"failure_mode": failure_mode, "shadow": shadow}
    if policies_key == "policies":
        policies = _policies(
            data["policies"],
            source=source,
            short_form=False,
            problems=problems,
            defaults=defaults,
        )
    else:  # misspelt: its policies are not checked, but routes may name them
        policies = _policies(
            data[policies_key], source=source, short_form=False, problems=Problems()
        )
    config = Config(
        policies.parsed,
        store=store,
        key_prefix=problems.attempt(
            lambda: validate_prefix(
                settings.get("key_prefix", DEFAULT_PREFIX), source=source, field="key_prefix"
            ),
            DEFAULT_PREFIX,
        ),
        local_cache_size=problems.attempt(
            lambda: _cache_size(
                settings.get("local_cache_size", DEFAULT_LOCAL_CACHE_SIZE), source=source
            ),
            DEFAULT_LOCAL_CACHE_SIZE,
        ),
        timeout=problems.attempt(
            lambda: timeout_setting(settings.get("timeout", DEFAULT_TIMEOUT), source=source),
            DEFAULT_TIMEOUT,
        ),
        breaker=problems.attempt(
            lambda: breaker_section(settings.get("breaker", {}), source=source), Breaker()
        ),
        batching=problems.attempt(
            lambda: batching_section(settings.get("batching", {}), source=source), Batching()
        ),
        source=source,
        metrics=problems.attempt(lambda: _metrics(settings.get("metrics"), source=source), None),
    )
    client_ip = (
        problems.attempt(lambda: client_ip_section(settings["client_ip"], source=source), None)
        if "client_ip" in settings
        else None
    )
    # Sections that name policies are checked only against a policies section that could be
    # read: otherwise every name in them would be reported as unknown.
    routes = (
        problems.attempt(
            lambda: validate_routes(
                settings["routes"],
                source=source,
                policies=config.policies,
                unchecked=policies.failed,
            ),
            None,
        )
        if "routes" in settings and policies.readable
        else None
    )
    domains = (
        problems.attempt(lambda: _domains(settings["domains"], config), None)
        if "domains" in settings and policies.readable and not policies.failed
        else None
    )
    problems.raise_first()
    if routes is None and client_ip is None and domains is None:
        return config
    return replace(config, routes=routes, client_ip=client_ip, domains=domains)


def _misspelt_policies(data: Mapping[object, object]) -> object | None:
    """The top-level key of a short-form-looking file that is ``policies`` misspelt: a near
    miss of it whose value reads as a mapping of policies, not as a policy
    (``polices: {login: {limit: 5, window: 60}}``). ``None`` if there is none."""
    for key, body in data.items():
        if key in SETTINGS or closest(key, ("policies",)) is None:
            continue
        if (
            isinstance(body, Mapping)
            and body
            and "limit" not in body
            and "window" not in body
            and all(isinstance(value, Mapping) for value in body.values())
        ):
            return key
    return None


def _domains(section: object, config: Config) -> DomainTable:
    """The ``domains`` section: descriptor rules naming this file's policies (the grammar and
    its checks live with the matching rules, in ratewall.descriptors, which is pure)."""
    return parse_domains(section, source=config.source, policies=config.policies)


@dataclass(frozen=True, slots=True)
class _Policies:
    """A policies section: the policies that parsed, the names of those that did not, and
    whether the section was a mapping of policies at all."""

    parsed: dict[str, Policy]
    failed: frozenset[str] = frozenset()
    readable: bool = True


def _policies(
    data: object,
    *,
    source: str,
    short_form: bool,
    problems: Problems,
    defaults: Mapping[str, object] | None = None,
) -> _Policies:
    if not isinstance(data, Mapping):
        problems.add(
            ConfigError(
                f"must be a mapping of policy names to policies, e.g. {_EXAMPLE}; "
                f"got {kind_of(data)}",
                source=source,
                field="policies",
            )
        )
        return _Policies({}, readable=False)
    if not data:
        problems.add(
            ConfigError(
                f"defines no policies; add at least one, e.g. {_EXAMPLE}",
                source=source,
                field="policies",
            )
        )
        return _Policies({}, readable=False)
    policies: dict[str, Policy] = {}
    failed: set[str] = set()
    for name, body in data.items():
        try:
            policies[str(name)] = _policy(name, body, source, short_form, defaults)
        except ConfigError as error:
            problems.add(error)
            failed.add(str(name))
    return _Policies(policies, frozenset(failed))


def _policy(
    name: object,
    body: object,
    source: str,
    short_form: bool,
    defaults: Mapping[str, object] | None,
) -> Policy:
    path = f"policies.{name}"
    if short_form and name in SETTINGS and not isinstance(body, Mapping):
        raise ConfigError(
            f"{name!r} is a setting, and settings need the long form: put the policies "
            "under a top-level 'policies' key next to it",
            source=source,
            field=str(name),
        )
    setting = closest(name, SETTINGS) if short_form and not isinstance(body, Mapping) else None
    if setting is not None:
        raise ConfigError(
            f"unknown top-level field {name!r} (did you mean {setting!r}?); settings need the "
            "long form: put the policies under a top-level 'policies' key next to it",
            source=source,
            field=str(name),
        )
    validate_name(name, source=source, field=path)
    fields = dict(body) if isinstance(body, Mapping) else body
    if isinstance(fields, dict):
        for setting, value in (defaults or {}).items():
            if value is not None:
                fields.setdefault(setting, value)
    try:
        return Policy.from_mapping(fields, source=source, field=path)
    except OverflowError:
        # Only the window is converted to float; a value beyond float range lands here.
        raise ConfigError(
            "is too large; write a window of at most a few years, such as '365d'",
            source=source,
            field=f"{path}.window",
        ) from None


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
