"""The config file's HTTP sections: ``routes`` and ``client_ip``.

Their grammar lives here, as plain data and the rules that check it; :mod:`ratewall.http`
builds its route table and ``ClientIP`` from that data and applies the same rules (these
functions) to objects built in code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Required, TypedDict, get_args

from ..errors import ConfigError
from ..policy import Policy
from ._fields import Problems, did_you_mean, kind_of, unknown_fields

__all__ = [
    "FORWARDED_HEADERS",
    "HEADER_NAME",
    "HTTP_METHOD",
    "ON_MISSING_IDENTITY",
    "PARAM_NAME",
    "PATH_CAPTURE",
    "ClientIPSettings",
    "ForwardedHeader",
    "IPNetwork",
    "IdentityKind",
    "LimitEntry",
    "OnMissingIdentity",
    "RouteEntry",
    "TierEntry",
    "check_header_name",
    "check_param_name",
    "client_ip_section",
    "exempt_network",
    "parse_identity_spec",
    "path_captures",
    "trusted_proxy_network",
    "validate_routes",
]


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
_ROUTE_FIELDS: Final = (
    "match",
    "policies",
    "identity",
    "on_missing_identity",
    "tier",
    "exempt_networks",
)
_LIMIT_FIELDS: Final = (
    "policy",
    "identity",
    "cost",
    "on_missing_identity",
    "tier",
    "exempt_networks",
)
_TIER_FIELDS: Final = ("header", "allowed", "default")
_SOURCE_KINDS: Final = "'ip', 'user', 'header:<name>', 'api_key', 'api_key:<header>', 'path:<name>'"

_BY_ADDRESS: Final[tuple[IdentityKind, str | None]] = ("ip", None)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TierEntry(TypedDict, total=False):
    """How a route picks a policy tier per request (``{header: X-Plan, allowed: [free, pro],
    default: free}``): the header's value if it is one of ``allowed``, else ``default``
    (absent: the policy's own limits)."""

    header: Required[str]
    allowed: Required[list[str]]
    default: str


class LimitEntry(TypedDict, total=False):
    """One policy of a route, in its mapping form (``{policy: login_ip, identity: ip}``)."""

    policy: Required[str]
    identity: str
    cost: int
    on_missing_identity: OnMissingIdentity
    tier: TierEntry
    exempt_networks: list[str]


class RouteEntry(TypedDict, total=False):
    """One entry of the ``routes`` section, validated: its values are the file's own."""

    match: Required[str]
    policies: Required[list[str | LimitEntry]]
    identity: str
    on_missing_identity: OnMissingIdentity
    tier: TierEntry
    exempt_networks: list[str]


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


def exempt_network(spec: object) -> IPNetwork:
    """The network an ``exempt_networks`` entry names (``"10.0.0.0/8"``, ``"192.0.2.7"``,
    an ``ipaddress`` network); ValueError or TypeError for anything else."""
    if isinstance(spec, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"exempt network {spec!r} is not a string; write addresses or CIDR networks "
            "such as '10.0.0.0/8'"
        )
    try:
        return ipaddress.ip_network(spec.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"exempt network {spec!r} is not an IP address or CIDR network "
            "(write '10.0.0.0/8', '192.0.2.7' or '2001:db8::/32')"
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
        for name in _CLIENT_IP_CHECKS:
            problem = _client_ip_problem(name, getattr(self, name))
            if problem is not None:
                raise ValueError(f"{name} {problem}")

    def networks(self) -> tuple[IPNetwork, ...]:
        """The trusted networks (``"unix"`` is not one)."""
        found = (trusted_proxy_network(spec) for spec in self.trusted_proxies)
        return tuple(network for network in found if network is not None)


_CLIENT_IP_CHECKS: Final = ("ipv6_prefix", "ipv4_prefix", "header")


def _client_ip_problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the client_ip setting ``name`` (one of
    ``_CLIENT_IP_CHECKS``), or None."""
    if name == "header":
        if isinstance(value, str) and value in FORWARDED_HEADERS:
            return None
        return f"must be 'x-forwarded-for' or 'forwarded', got {value!r}"
    top = 128 if name == "ipv6_prefix" else 32
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        return f"must be an integer from 1 to {top}, got {value!r}"
    return None


def client_ip_section(section: object, *, source: str) -> ClientIPSettings:
    """The ``client_ip`` section, checked; a ConfigError carries every problem in it."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            "must be a mapping such as {trusted_proxies: ['10.0.0.0/8'], header: x-forwarded-for}",
            source=source,
            field="client_ip",
        )
    problems = Problems()
    for error in unknown_fields(section, _CLIENT_IP_FIELDS, "client_ip", source):
        problems.add(error)
    proxies = section.get("trusted_proxies", ())
    if isinstance(proxies, str) or not isinstance(proxies, list | tuple):
        problems.add(
            ConfigError(
                "must be a list of addresses or CIDR blocks (or 'unix')",
                source=source,
                field="client_ip.trusted_proxies",
            )
        )
        proxies = ()
    for index, spec in enumerate(proxies):
        at = f"client_ip.trusted_proxies[{index}]"
        if not isinstance(spec, str):
            problems.add(
                ConfigError(
                    f"must be an address or CIDR block such as '10.0.0.0/8' (or 'unix'), "
                    f"got {kind_of(spec)}",
                    source=source,
                    field=at,
                )
            )
            continue
        try:
            trusted_proxy_network(spec)
        except ValueError as error:
            problems.add(ConfigError(str(error), source=source, field=at))
    for name in _CLIENT_IP_CHECKS:
        if name in section:
            problem = _client_ip_problem(name, section[name])
            if problem is not None:
                problems.add(ConfigError(problem, source=source, field=f"client_ip.{name}"))
    problems.raise_first()
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
    data: object,
    *,
    source: str,
    policies: Mapping[str, Policy],
    unchecked: Collection[str] = (),
) -> tuple[RouteEntry, ...]:
    """The ``routes`` section of a config file, checked against ``policies``.

    ``data`` is a list of mappings with ``match`` (``"POST /login"``, or a bare path for any
    method), ``policies`` (a list of policy names or mappings with ``policy`` and optionally
    ``identity``, ``cost`` and ``on_missing_identity``) and optionally ``identity`` and
    ``on_missing_identity`` as defaults for the route's policies. Names must exist, costs
    must fit. Every error is a :class:`~ratewall.ConfigError` naming ``source`` and the field
    path, such as ``routes[0].policies[1].identity``; the one raised carries every problem
    of the section in ``errors``. Names in ``unchecked`` (policies that failed to parse,
    already reported) are accepted as they are.
    """
    if not isinstance(data, list | tuple):
        raise ConfigError(
            "must be a list of routes, each like "
            "{match: 'POST /login', policies: [login], identity: 'header:X-User-ID'}",
            source=source,
            field="routes",
        )
    problems = Problems()
    routes: list[RouteEntry] = []
    for index, entry in enumerate(data):
        try:
            routes.append(
                _route_entry(
                    entry,
                    f"routes[{index}]",
                    source=source,
                    names=_Names(policies, unchecked),
                )
            )
        except ConfigError as error:
            problems.add(error)
    problems.raise_first()
    return tuple(routes)


@dataclass(frozen=True, slots=True)
class _Names:
    """The policies a route may name: parsed ones, and ``unchecked`` ones that failed."""

    policies: Mapping[str, Policy]
    unchecked: Collection[str]


def _route_entry(entry: object, at: str, *, source: str, names: _Names) -> RouteEntry:
    if not isinstance(entry, Mapping):
        raise ConfigError("must be a mapping with 'match' and 'policies'", source=source, field=at)
    problems = Problems()
    for error in unknown_fields(entry, _ROUTE_FIELDS, at, source):
        problems.add(error)
    for required in ("match", "policies"):
        if required not in entry:
            problems.add(ConfigError("is required", source=source, field=f"{at}.{required}"))
    match = entry.get("match")
    parsed: tuple[str, str] | None = None
    if "match" in entry:
        parsed = problems.attempt(
            lambda: _parse_match(match, source=source, field=f"{at}.match"), None
        )
    checked: RouteEntry = {"match": str(match), "policies": []}
    route_identity = problems.attempt(
        lambda: parse_identity_spec(
            entry.get("identity", "ip"), source=source, field=f"{at}.identity"
        ),
        _BY_ADDRESS,
    )
    if "identity" in entry:
        checked["identity"] = str(entry["identity"])  # a string: parse_identity_spec said so
    if "on_missing_identity" in entry:
        missing = problems.attempt(
            lambda: _on_missing(
                entry["on_missing_identity"], source=source, field=f"{at}.on_missing_identity"
            ),
            None,
        )
        if missing is not None:
            checked["on_missing_identity"] = missing
    raw_limits = entry.get("policies", ())
    if not isinstance(raw_limits, list | tuple):
        problems.add(
            ConfigError(
                "must be a list of policy names or mappings (an empty list exempts the route)",
                source=source,
                field=f"{at}.policies",
            )
        )
        raw_limits = ()
    seen: set[str] = set()
    identities: list[tuple[IdentityKind, str | None]] = []
    for position, raw in enumerate(raw_limits):
        try:
            limit, identity = _limit_entry(
                raw, f"{at}.policies[{position}]", route_identity, seen, source=source, names=names
            )
        except ConfigError as error:
            problems.add(error)
            continue
        identities.append(identity)
        checked["policies"].append(limit)
    if "exempt_networks" in entry:
        networks = problems.attempt(
            lambda: _exempt_networks(
                entry["exempt_networks"], source=source, field=f"{at}.exempt_networks"
            ),
            None,
        )
        if networks is not None:
            checked["exempt_networks"] = networks
    if "tier" in entry:
        # The route's tier applies to those of its policies that define the tier chosen.
        named = [
            limit if isinstance(limit, str) else limit["policy"] for limit in checked["policies"]
        ]
        tier = problems.attempt(
            lambda: _tier_entry(
                entry["tier"],
                [names.policies[name] for name in named if name in names.policies],
                unchecked=any(name not in names.policies for name in named),
                source=source,
                field=f"{at}.tier",
            ),
            None,
        )
        if tier is not None:
            checked["tier"] = tier
    if parsed is not None:
        method, path = parsed
        captures = path_captures(path)
        for kind, argument in identities:
            if kind == "path" and argument not in captures:
                problems.add(
                    ConfigError(
                        f"route {method} {path} has no {{{argument}}} for PathParam({argument!r})",
                        source=source,
                        field=f"{at}.match",
                    )
                )
                break
    problems.raise_first()
    return checked


def _limit_entry(
    raw: object,
    here: str,
    route_identity: tuple[IdentityKind, str | None],
    seen: set[str],
    *,
    source: str,
    names: _Names,
) -> tuple[str | LimitEntry, tuple[IdentityKind, str | None]]:
    """One entry of a route's ``policies``, checked, and the identity it applies; ``seen``
    holds the route's policies before it, and gets this one."""
    if isinstance(raw, str):
        return _unseen(raw, names, seen, source=source, field=here), route_identity
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"must be a policy name or a mapping with 'policy', got {type(raw).__name__}",
            source=source,
            field=here,
        )
    problems = Problems()
    for error in unknown_fields(raw, _LIMIT_FIELDS, here, source):
        problems.add(error)
    if "policy" not in raw:
        problems.add(ConfigError("is required", source=source, field=f"{here}.policy"))
    identity = route_identity
    if "identity" in raw:
        identity = problems.attempt(
            lambda: parse_identity_spec(raw["identity"], source=source, field=f"{here}.identity"),
            route_identity,
        )
    missing = (
        problems.attempt(
            lambda: _on_missing(
                raw["on_missing_identity"], source=source, field=f"{here}.on_missing_identity"
            ),
            None,
        )
        if "on_missing_identity" in raw
        else None
    )
    name = (
        problems.attempt(
            lambda: _unseen(raw["policy"], names, seen, source=source, field=f"{here}.policy"),
            None,
        )
        if "policy" in raw
        else None
    )
    networks: list[str] | None = None
    tier: TierEntry | None = None
    if "exempt_networks" in raw:
        networks = problems.attempt(
            lambda: _exempt_networks(
                raw["exempt_networks"], source=source, field=f"{here}.exempt_networks"
            ),
            None,
        )
    if "tier" in raw and name is not None:
        tier = problems.attempt(
            lambda: _tier_entry(
                raw["tier"],
                [names.policies[name]] if name in names.policies else [],
                unchecked=name not in names.policies,
                source=source,
                field=f"{here}.tier",
            ),
            None,
        )
    if "cost" in raw and name is not None and name in names.policies:
        policy = names.policies[name]
        problems.attempt(
            lambda: _cost(raw["cost"], policy, name, source=source, field=f"{here}.cost"), 0
        )
    problems.raise_first()
    if name is None:  # not reached: a missing or unknown name was recorded and raised above
        raise ConfigError("is required", source=source, field=f"{here}.policy")
    # The mapping as the file wrote it, every value checked.
    limit: LimitEntry = {"policy": name}
    if "identity" in raw:
        limit["identity"] = str(raw["identity"])  # a string: parse_identity_spec said so
    if "cost" in raw:
        limit["cost"] = raw["cost"]  # an int in range: _cost said so (or the policy is broken)
    if missing is not None:
        limit["on_missing_identity"] = missing
    if tier is not None:
        limit["tier"] = tier
    if networks is not None:
        limit["exempt_networks"] = networks
    return limit, identity


def _exempt_networks(value: object, *, source: str, field: str) -> list[str]:
    """An ``exempt_networks`` list, each entry an address or CIDR network."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            "must be a list of addresses or CIDR networks such as ['10.0.0.0/8']",
            source=source,
            field=field,
        )
    problems = Problems()
    for index, spec in enumerate(value):
        try:
            exempt_network(spec)
        except (ValueError, TypeError) as error:
            problems.add(ConfigError(str(error), source=source, field=f"{field}[{index}]"))
    problems.raise_first()
    return [str(spec) for spec in value]


def _tier_entry(
    value: object, policies: list[Policy], *, unchecked: bool, source: str, field: str
) -> TierEntry:
    """A ``tier`` mapping: ``header``, ``allowed`` tiers (each defined by one of
    ``policies``, unless some policy is ``unchecked``) and an optional ``default``."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            "must be a mapping such as {header: X-Plan, allowed: [free, pro], default: free}",
            source=source,
            field=field,
        )
    problems = Problems()
    for error in unknown_fields(value, _TIER_FIELDS, field, source):
        problems.add(error)
    for required in ("header", "allowed"):
        if required not in value:
            problems.add(ConfigError("is required", source=source, field=f"{field}.{required}"))
    header = value.get("header")
    if "header" in value:
        try:
            check_header_name(header)
        except ValueError as error:
            problems.add(ConfigError(str(error), source=source, field=f"{field}.header"))
    allowed = value.get("allowed", [])
    defined = sorted({tier for policy in policies for tier in policy.tiers})
    if isinstance(allowed, str) or not isinstance(allowed, list | tuple) or not allowed:
        problems.add(
            ConfigError(
                "must be a non-empty list of tier names", source=source, field=f"{field}.allowed"
            )
        )
        allowed = []
    for index, name in enumerate(allowed):
        if not isinstance(name, str) or (not unchecked and name not in defined):
            problems.add(
                ConfigError(
                    f"{name!r} is not a tier of "
                    + ("this policy" if len(policies) == 1 else "any policy of this route")
                    + f"; defined tiers: {', '.join(defined) or '(none)'}"
                    + did_you_mean(name, defined),
                    source=source,
                    field=f"{field}.allowed[{index}]",
                )
            )
    default = value.get("default")
    if "default" in value and default not in allowed:
        problems.add(
            ConfigError(
                f"{default!r} is not one of the allowed tiers ({', '.join(map(str, allowed))})",
                source=source,
                field=f"{field}.default",
            )
        )
    problems.raise_first()
    checked: TierEntry = {"header": str(header), "allowed": [str(name) for name in allowed]}
    if "default" in value:
        checked["default"] = str(default)
    return checked


def _unseen(name: object, names: _Names, seen: set[str], *, source: str, field: str) -> str:
    """``name`` if it is a known policy that the route does not list yet (then it does)."""
    known = _known_name(name, names, source=source, field=field)
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


def _known_name(name: object, names: _Names, *, source: str, field: str) -> str:
    if isinstance(name, str) and (name in names.policies or name in names.unchecked):
        return name
    known = ", ".join(names.policies) or "(none)"
    raise ConfigError(
        f"unknown policy {name!r}; known policies: {known}"
        + did_you_mean(name, [*names.policies, *names.unchecked]),
        source=source,
        field=field,
    )
