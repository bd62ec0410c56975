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
      "failure_mode": "open",
      "metrics": "prometheus"
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
``shadow``
    ``true`` puts every policy without its own ``shadow`` in shadow mode: decided and
    counted, never refused (see :class:`~ratewall.Policy`).
``metrics``
    Export ratewall's own metrics: ``prometheus`` (prometheus-client's default registry) or
    ``otel`` (opentelemetry-api's meter provider). Not set: no metrics (see docs/metrics.md).
``domains``
    Rate-limit descriptors for ``ratewall serve`` (Envoy's rate-limit service protocol):
    domain names mapped to trees of ``{key, value, policy}`` entries naming this file's
    policies; see :func:`ratewall.service.descriptors.parse_domains`.

A policy's own fields are :class:`~ratewall.Policy`'s: ``limit``, ``window``, ``algorithm``,
``burst``, ``failure_mode``, ``lease``, ``shadow``, ``exempt`` (a list of identities),
``overrides`` (identities to ``{limit, window, burst}``) and ``tiers`` (names to the same).

Every error is a :class:`~ratewall.ConfigError` naming the file, the dotted path of the field
(``policies.login.limit``, in both forms) and what to do about it. The file is compiled once
into an immutable :class:`Config`; reloading means loading a new one.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, Required, TypedDict, get_args

import yaml

from ._urls import STORE_SCHEMES, redacted, store_url_problem
from .errors import ConfigError
from .keys import DEFAULT_PREFIX, validate_name, validate_prefix
from .metrics import BACKENDS as METRICS_BACKENDS
from .policy import FAILURE_MODES, Policy, parse_duration

if TYPE_CHECKING:
    from .service.descriptors import DomainTable

__all__ = [
    "DEFAULT_LOCAL_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "EXTENSIONS",
    "ON_MISSING_IDENTITY",
    "SETTINGS",
    "STORE_SCHEMES",
    "ClientIPSettings",
    "Config",
    "ForwardedHeader",
    "IdentityKind",
    "LimitEntry",
    "OnMissingIdentity",
    "RouteEntry",
    "check_header_name",
    "check_param_name",
    "load_config",
    "parse_config",
    "parse_identity_spec",
    "path_captures",
    "trusted_proxy_network",
    "validate_routes",
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
    from .service.descriptors import parse_domains

    return parse_domains(section, source=config.source, policies=config.policies)


def _with_http(config: Config, settings: Mapping[str, object], source: str) -> Config:
    """Validate the HTTP sections now, so a bad route fails at load (and in check-config);
    :mod:`ratewall.http` compiles the plain data they become."""
    client_ip = (
        _client_ip_section(settings["client_ip"], source=source)
        if "client_ip" in settings
        else None
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
            f"must be a store URL string {examples}, got {_kind(value)}",
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


# --- HTTP sections --------------------------------------------------------------------------
#
# The config file's grammar for routes and client addresses lives here, as plain data and the
# rules that check it; ratewall.http builds its route table and ClientIP from that data and
# applies the same rules (these functions) to objects built in code.

OnMissingIdentity = Literal["ip", "reject", "skip"]
ON_MISSING_IDENTITY: Final[tuple[OnMissingIdentity, ...]] = get_args(OnMissingIdentity)
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
FORWARDED_HEADERS: Final[tuple[ForwardedHeader, ...]] = get_args(ForwardedHeader)
IdentityKind = Literal["ip", "user", "api_key", "header", "path"]

HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an RFC 9110 token
PARAM_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PATH_CAPTURE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
HTTP_METHOD: Final = re.compile(r"[A-Za-z]{1,32}")

_CLIENT_IP_FIELDS: Final = ("trusted_proxies", "header", "ipv6_prefix", "ipv4_prefix")
_ROUTE_FIELDS: Final = ("match", "policies", "identity", "on_missing_identity")
_LIMIT_FIELDS: Final = ("policy", "identity", "cost", "on_missing_identity")
_SOURCE_KINDS: Final = "'ip', 'user', 'header:<name>', 'api_key', 'api_key:<header>', 'path:<name>'"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class LimitEntry(TypedDict, total=False):
    """One policy of a route, in its mapping form (``{policy: login_ip, identity: ip}``)."""

    policy: Required[str]
    identity: str
    cost: int
    on_missing_identity: OnMissingIdentity


class RouteEntry(TypedDict, total=False):
    """One entry of the ``routes`` section, validated: its values are the file's own."""

    match: Required[str]
    policies: Required[list[str | LimitEntry]]
    identity: str
    on_missing_identity: OnMissingIdentity


def check_header_name(name: object) -> str:
    """``name`` if it can name an HTTP header field, else ValueError."""
    if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def check_param_name(name: object) -> str:
    """``name`` if a path pattern can capture it (``{user_id}``), else ValueError."""
    if not isinstance(name, str) or not PARAM_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid path parameter name")
    return name


def path_captures(path: object) -> tuple[str, ...]:
    """The capture names of path pattern ``path``, in order; ValueError if it is no pattern.

    ``/login`` matches that path, ``/users/{user_id}`` captures a segment, ``/api/*`` a prefix
    and ``*`` everything."""
    if not isinstance(path, str):
        raise ValueError(f"a path pattern must be a string, got {type(path).__name__}")
    if path == "*":
        return ()
    if not path.startswith("/"):
        raise ValueError(f"path pattern {path!r} must start with '/' (or be '*')")
    body = path[:-2] if path.endswith("/*") else path
    names: list[str] = []
    for segment in body.split("/")[1:]:
        capture = PATH_CAPTURE.fullmatch(segment)
        if capture:
            name = capture[1]
            if name in names:
                raise ValueError(f"path pattern {path!r} captures {{{name}}} twice")
            names.append(name)
        elif any(char in segment for char in "{}*"):
            raise ValueError(
                f"path pattern {path!r}: '{{name}}' must be a whole segment and '*' may only "
                "end the pattern, as in '/users/{user_id}' or '/api/*'"
            )
    return tuple(names)


def trusted_proxy_network(spec: object) -> IPNetwork | None:
    """The network a ``trusted_proxies`` entry names; ``None`` for ``"unix"`` (a peer on a
    unix socket, which has no address); ValueError or TypeError for anything else."""
    if not isinstance(spec, str):
        raise TypeError(
            f"trusted proxy {spec!r} is not a string; write addresses or CIDR networks "
            "such as '10.0.0.0/8', or 'unix'"
        )
    if spec.strip().lower() == "unix":
        return None
    try:
        return ipaddress.ip_network(spec.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"trusted proxy {spec!r} is not an IP address or CIDR network "
            "(write '10.0.0.0/8', '192.0.2.7', '2001:db8::/32' or 'unix')"
        ) from None


@dataclass(frozen=True, slots=True)
class ClientIPSettings:
    """How the client address is found (the ``client_ip`` section): see
    :class:`ratewall.http.ClientIP`, which is built from these and checks them the same way.
    ValueError or TypeError for a value that cannot be used."""

    trusted_proxies: Sequence[str] = ()  # a tuple once made
    header: ForwardedHeader = "x-forwarded-for"
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32

    def __post_init__(self) -> None:
        proxies: object = self.trusted_proxies
        if isinstance(proxies, str) or not isinstance(proxies, Iterable):
            raise TypeError("trusted_proxies must be a list of addresses or networks, not a str")
        specs = tuple(proxies)
        for spec in specs:
            trusted_proxy_network(spec)
        object.__setattr__(self, "trusted_proxies", specs)
        for name, value, top in (
            ("ipv6_prefix", self.ipv6_prefix, 128),
            ("ipv4_prefix", self.ipv4_prefix, 32),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if not isinstance(self.header, str) or self.header not in FORWARDED_HEADERS:
            raise ValueError(
                f"header must be 'x-forwarded-for' or 'forwarded', got {self.header!r}"
            )

    def networks(self) -> tuple[IPNetwork, ...]:
        """The trusted networks (``"unix"`` is not one)."""
        found = (trusted_proxy_network(spec) for spec in self.trusted_proxies)
        return tuple(network for network in found if network is not None)


def _client_ip_section(section: object, *, source: str) -> ClientIPSettings:
    if not isinstance(section, Mapping):
        raise ConfigError(
            "must be a mapping such as {trusted_proxies: ['10.0.0.0/8'], header: x-forwarded-for}",
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
    for index, spec in enumerate(proxies):
        if not isinstance(spec, str):
            raise ConfigError(
                f"must be an address or CIDR block such as '10.0.0.0/8' (or 'unix'), "
                f"got {_kind(spec)}",
                source=source,
                field=f"client_ip.trusted_proxies[{index}]",
            )
    try:
        return ClientIPSettings(**{**section, "trusted_proxies": tuple(proxies)})
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error), source=source, field="client_ip") from None


def parse_identity_spec(
    spec: object, *, source: str = "<routes>", field: str = "identity"
) -> tuple[IdentityKind, str | None]:
    """An identity source's config-file form as its kind and argument: ``"ip"``, ``"user"``,
    ``"header:X-User-ID"``, ``"api_key"`` (header ``X-API-Key``), ``"api_key:X-Token"``,
    ``"path:user_id"``. The argument is ``None`` where the form has none. Raises
    :class:`~ratewall.ConfigError` naming ``source`` and ``field`` otherwise."""
    if not isinstance(spec, str):
        raise ConfigError(
            f"an identity source must be a string ({_SOURCE_KINDS}), got {type(spec).__name__}",
            source=source,
            field=field,
        )
    name, colon, argument = spec.strip().partition(":")
    name = name.strip().lower()
    argument = argument.strip()
    kinds: dict[str, IdentityKind] = {
        "ip": "ip",
        "user": "user",
        "api_key": "api_key",
        "header": "header",
        "path": "path",
    }
    kind = kinds.get(name)
    needs_argument = kind in ("header", "path")
    takes_argument = needs_argument or kind == "api_key"
    if kind is None:
        problem = f"unknown identity source {spec!r}"
    elif needs_argument and not argument:
        example = "header:X-User-ID" if kind == "header" else "path:user_id"
        problem = f"{kind!r} needs a name after the colon, as in {example!r}"
    elif colon and not takes_argument:
        problem = f"{kind!r} takes no argument, got {spec!r}"
    elif colon and not argument:
        problem = f"{spec!r} has an empty name after the colon"
    else:
        try:
            if kind == "path":
                check_param_name(argument)
            elif colon:
                check_header_name(argument)
        except ValueError as error:
            problem = str(error)
        else:
            return kind, argument if colon else None
    raise ConfigError(f"{problem}; expected one of {_SOURCE_KINDS}", source=source, field=field)


def validate_routes(
    data: object, *, source: str, policies: Mapping[str, Policy]
) -> tuple[RouteEntry, ...]:
    """The ``routes`` section of a config file, checked against ``policies``.

    ``data`` is a list of mappings with ``match`` (``"POST /login"``, or a bare path for any
    method), ``policies`` (a list of policy names or mappings with ``policy`` and optionally
    ``identity``, ``cost`` and ``on_missing_identity``) and optionally ``identity`` and
    ``on_missing_identity`` as defaults for the route's policies. Names must exist, costs
    must fit. Every error is a :class:`~ratewall.ConfigError` naming ``source`` and the field
    path, such as ``routes[0].policies[1].identity``.
    """
    if not isinstance(data, list | tuple):
        raise ConfigError(
            "must be a list of routes, each like "
            "{match: 'POST /login', policies: [login], identity: 'header:X-User-ID'}",
            source=source,
            field="routes",
        )
    return tuple(
        _route_entry(entry, f"routes[{index}]", source=source, policies=policies)
        for index, entry in enumerate(data)
    )


def _route_entry(
    entry: object, at: str, *, source: str, policies: Mapping[str, Policy]
) -> RouteEntry:
    if not isinstance(entry, Mapping):
        raise ConfigError("must be a mapping with 'match' and 'policies'", source=source, field=at)
    _check_fields(entry, _ROUTE_FIELDS, at, source)
    for required in ("match", "policies"):
        if required not in entry:
            raise ConfigError("is required", source=source, field=f"{at}.{required}")
    match = entry["match"]
    method, path = _parse_match(match, source=source, field=f"{at}.match")
    checked: RouteEntry = {"match": match, "policies": []}
    route_identity = parse_identity_spec(
        entry.get("identity", "ip"), source=source, field=f"{at}.identity"
    )
    if "identity" in entry:
        checked["identity"] = str(entry["identity"])  # a string: parse_identity_spec said so
    if "on_missing_identity" in entry:
        checked["on_missing_identity"] = _on_missing(
            entry["on_missing_identity"], source=source, field=f"{at}.on_missing_identity"
        )
    raw_limits = entry["policies"]
    if not isinstance(raw_limits, list | tuple):
        raise ConfigError(
            "must be a list of policy names or mappings (an empty list exempts the route)",
            source=source,
            field=f"{at}.policies",
        )
    seen: set[str] = set()
    identities: list[tuple[IdentityKind, str | None]] = []
    for position, raw in enumerate(raw_limits):
        limit, identity = _limit_entry(
            raw,
            f"{at}.policies[{position}]",
            route_identity,
            seen,
            source=source,
            policies=policies,
        )
        identities.append(identity)
        checked["policies"].append(limit)
    captures = path_captures(path)
    for kind, argument in identities:
        if kind == "path" and argument not in captures:
            raise ConfigError(
                f"route {method} {path} has no {{{argument}}} for PathParam({argument!r})",
                source=source,
                field=f"{at}.match",
            )
    return checked


def _limit_entry(
    raw: object,
    here: str,
    route_identity: tuple[IdentityKind, str | None],
    seen: set[str],
    *,
    source: str,
    policies: Mapping[str, Policy],
) -> tuple[str | LimitEntry, tuple[IdentityKind, str | None]]:
    """One entry of a route's ``policies``, checked, and the identity it applies; ``seen``
    holds the route's policies before it, and gets this one."""
    if isinstance(raw, str):
        return _unseen(raw, policies, seen, source=source, field=here), route_identity
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"must be a policy name or a mapping with 'policy', got {type(raw).__name__}",
            source=source,
            field=here,
        )
    _check_fields(raw, _LIMIT_FIELDS, here, source)
    if "policy" not in raw:
        raise ConfigError("is required", source=source, field=f"{here}.policy")
    identity = route_identity
    if "identity" in raw:
        identity = parse_identity_spec(raw["identity"], source=source, field=f"{here}.identity")
    missing = (
        _on_missing(raw["on_missing_identity"], source=source, field=f"{here}.on_missing_identity")
        if "on_missing_identity" in raw
        else None
    )
    name = _unseen(raw["policy"], policies, seen, source=source, field=f"{here}.policy")
    # The mapping as the file wrote it, every value checked.
    limit: LimitEntry = {"policy": name}
    if "identity" in raw:
        limit["identity"] = str(raw["identity"])  # a string: parse_identity_spec said so
    if "cost" in raw:
        limit["cost"] = _cost(
            raw["cost"], policies[name], name, source=source, field=f"{here}.cost"
        )
    if missing is not None:
        limit["on_missing_identity"] = missing
    return limit, identity


def _unseen(
    name: object, policies: Mapping[str, Policy], seen: set[str], *, source: str, field: str
) -> str:
    """``name`` if it is a known policy that the route does not list yet (then it does)."""
    known = _known_name(name, policies, source=source, field=field)
    if known in seen:
        raise ConfigError(
            f"policy {known!r} is listed twice in this route; define a second policy "
            "for a second identity",
            source=source,
            field=field,
        )
    seen.add(known)
    return known


def _cost(value: object, policy: Policy, name: str, *, source: str, field: str) -> int:
    capacity = policy.capacity
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= capacity:
        raise ConfigError(
            f"must be an integer from 1 to {capacity} (the capacity of policy {name!r}), "
            f"got {value!r}",
            source=source,
            field=field,
        )
    return value


def _check_fields(
    entry: Mapping[object, object], allowed: tuple[str, ...], at: str, source: str
) -> None:
    for key in entry:
        if key not in allowed:
            raise ConfigError(
                f"unknown field {key!r}; expected one of {', '.join(allowed)}",
                source=source,
                field=f"{at}.{key}",
            )


def _parse_match(value: object, *, source: str, field: str) -> tuple[str, str]:
    """A route's ``match`` as its method (upper case, or ``*``) and path pattern."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            "must be a string such as 'POST /login', '/users/{user_id}' or '* /api/*'",
            source=source,
            field=field,
        )
    words = value.split()
    if len(words) == 1:
        method, path = "*", words[0]
    elif len(words) == 2:
        method, path = words
    else:
        raise ConfigError(
            f"{value!r} must be 'METHOD /path' or '/path' (no spaces in the path)",
            source=source,
            field=field,
        )
    if method != "*" and not HTTP_METHOD.fullmatch(method):
        raise ConfigError(
            f"{method!r} is not an HTTP method; write e.g. 'POST /login' or '* /login'",
            source=source,
            field=field,
        )
    try:
        path_captures(path)
    except ValueError as error:
        raise ConfigError(str(error), source=source, field=field) from None
    return method.upper(), path


def _on_missing(value: object, *, source: str, field: str) -> OnMissingIdentity:
    for known in ON_MISSING_IDENTITY:
        if value == known and isinstance(value, str):
            return known
    raise ConfigError(
        f"must be one of {', '.join(ON_MISSING_IDENTITY)}, got {value!r}",
        source=source,
        field=field,
    )


def _known_name(name: object, policies: Mapping[str, Policy], *, source: str, field: str) -> str:
    if isinstance(name, str) and name in policies:
        return name
    known = ", ".join(policies) or "(none)"
    raise ConfigError(
        f"unknown policy {name!r}; known policies: {known}", source=source, field=field
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
