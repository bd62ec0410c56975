"""Which requests are limited, by which policies, for which identity. Pure, compiled once.

A :class:`Route` pairs a method and a path pattern with the limits it applies::

    Route("/login", [RouteLimit("login", Header("X-User-ID")),
                     RouteLimit("login_ip", ClientIP())], method="POST")

Path patterns:

- ``/login`` matches exactly that path;
- ``/users/{user_id}`` captures one path segment as the path parameter ``user_id``
  (readable with :class:`~ratewall.http.PathParam`);
- ``/api/*`` matches ``/api`` and everything below it; ``*`` alone matches every path.

A :class:`RouteTable` tries routes in order and the first match wins, so a route with no
limits placed first exempts its paths from the catch-all routes after it. Methods compare
case-insensitively; a ``GET`` route also matches ``HEAD`` (frameworks serve HEAD with the
GET handler, so a limit must not be escapable that way); ``*`` matches every method.

Config files describe routes as a list, parsed by :func:`parse_routes`::

    routes:
      - match: POST /login
        identity: header:X-User-ID        # the default identity of this route's policies
        policies:
          - login
          - {policy: login_ip, identity: ip}
      - match: GET /health
        policies: []                      # exempt
      - match: "* /api/*"
        policies: [{policy: api, identity: api_key, cost: 1, on_missing_identity: reject}]
        tier: {header: X-Plan, allowed: [free, pro], default: free}   # a tier per request
        exempt_networks: [10.0.0.0/8]      # clients never limited here (see ClientIP)

``tier`` and ``exempt_networks`` may also be set on one policy entry of a route (the entry's
own setting wins over the route's).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NamedTuple

from ..config import (
    HTTP_METHOD,
    ON_MISSING_IDENTITY,
    PATH_CAPTURE,
    Config,
    IPNetwork,
    LimitEntry,
    OnMissingIdentity,
    RouteEntry,
    exempt_network,
    path_captures,
    validate_routes,
)
from ..errors import ConfigError
from ..policy import Policy
from .client_ip import ClientIP, client_ip_from_config
from .identities import IdentitySource, PathParam, parse_identity_source
from .tiers import TierHeader, TierSource

__all__ = [
    "ON_MISSING_IDENTITY",
    "OnMissingIdentity",
    "Route",
    "RouteLimit",
    "RouteMatch",
    "RouteTable",
    "compile_routes",
    "parse_routes",
    "routes_from_config",
]

_SOURCE: Final = "<routes>"


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """One policy a route applies: ``policy`` (a name the limiter knows), the ``identity``
    source naming whose quota is spent, and the ``cost`` of one request in units.

    ``on_missing_identity`` says what happens when the source finds no identity (header
    absent, anonymous user):

    - ``"ip"`` (default): count the request against the client address instead, so clients
      cannot escape a limit by leaving the header out;
    - ``"reject"``: answer ``400 Bad Request`` (for APIs where the identity is mandatory);
    - ``"skip"``: do not apply this limit to the request.

    ``tier`` picks the policy tier each request is decided in (a
    :class:`~ratewall.http.TierHeader`, or any callable ``(HttpRequest) -> str | None``; see
    :mod:`ratewall.http.tiers`). ``exempt_networks`` (CIDR strings or networks) exempts
    clients whose address, as the engine's :class:`~ratewall.http.ClientIP` finds it behind
    trusted proxies, is in one of them: the limit does not apply to their requests.
    """

    policy: str
    identity: IdentitySource
    cost: int = 1
    on_missing_identity: OnMissingIdentity = "ip"
    tier: TierSource | None = None
    exempt_networks: Sequence[str | IPNetwork] = ()  # a tuple of networks once made

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or not self.policy:
            raise ValueError(f"RouteLimit.policy must be a policy name, got {self.policy!r}")
        if not callable(self.identity):
            raise TypeError(
                f"RouteLimit.identity must be an identity source such as Header('X-User-ID'), "
                f"got {self.identity!r}"
            )
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 1:
            raise ValueError(f"RouteLimit.cost must be a positive integer, got {self.cost!r}")
        if self.on_missing_identity not in ON_MISSING_IDENTITY:
            raise ValueError(
                f"on_missing_identity must be one of {', '.join(ON_MISSING_IDENTITY)}, "
                f"got {self.on_missing_identity!r}"
            )
        if self.tier is not None and not callable(self.tier):
            raise TypeError(
                f"RouteLimit.tier must be a tier source such as TierHeader('X-Plan', ...), "
                f"got {self.tier!r}"
            )
        specs: object = self.exempt_networks
        if isinstance(specs, str) or not isinstance(specs, Iterable):
            raise TypeError(f"exempt_networks must be a list of networks, got {specs!r}")
        object.__setattr__(self, "exempt_networks", tuple(map(exempt_network, specs)))


def _compile(path: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A path pattern as a regular expression and its capture names; ValueError if invalid
    (the config file's rule: :func:`ratewall.config.path_captures`)."""
    names = path_captures(path)
    if path == "*":
        return re.compile(r".*", re.DOTALL), ()
    prefix = path.endswith("/*")
    body = path[:-2] if prefix else path
    parts = []
    for segment in body.split("/")[1:]:  # [0] is the empty string before the leading slash
        capture = PATH_CAPTURE.fullmatch(segment)
        parts.append(f"/(?P<{capture[1]}>[^/]+)" if capture else "/" + re.escape(segment))
    regex = "".join(parts)
    if prefix:
        regex += "(?:/.*)?"
    return re.compile(regex, re.DOTALL), names


@dataclass(frozen=True, slots=True)
class Route:
    """``limits`` applied to requests whose path matches ``path`` and whose method is
    ``method`` (``"*"``: any). See the module docs for patterns.

    Each policy may appear once per route (the response headers report one entry per
    policy). A route without limits exempts the paths it matches from later routes.
    """

    path: str
    limits: Sequence[RouteLimit] = ()
    method: str = "*"
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Compiled for the per-request path: the methods that match (None: any), the one path an
    # exact pattern matches (None otherwise), whether the pattern matches every path, and
    # the RouteMatch of a request without captures (immutable, so shared).
    _methods: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _exact: str | None = field(init=False, repr=False, compare=False)
    _any_path: bool = field(init=False, repr=False, compare=False)
    _plain_match: RouteMatch = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex, names = _compile(self.path)
        method = self.method.upper() if isinstance(self.method, str) else self.method
        if method != "*" and not (isinstance(method, str) and HTTP_METHOD.fullmatch(method)):
            raise ValueError(f"method must be an HTTP method such as 'POST' or '*', got {method!r}")
        limits = tuple(self.limits)
        seen: set[str] = set()
        for limit in limits:
            if not isinstance(limit, RouteLimit):
                raise TypeError(f"Route.limits must hold RouteLimit objects, got {limit!r}")
            if limit.policy in seen:
                raise ValueError(
                    f"route {method} {self.path} lists policy {limit.policy!r} twice; "
                    "define a second policy for a second identity"
                )
            seen.add(limit.policy)
        for limit in limits:
            source = limit.identity
            if isinstance(source, PathParam) and source.name not in names:
                raise ValueError(
                    f"route {method} {self.path} has no {{{source.name}}} for "
                    f"PathParam({source.name!r})"
                )
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_names", names)
        # A GET route also matches HEAD (see the module docs).
        methods = (
            None if method == "*" else frozenset({method, "HEAD"} if method == "GET" else {method})
        )
        object.__setattr__(self, "_methods", methods)
        exact = not names and self.path != "*" and not self.path.endswith("/*")
        object.__setattr__(self, "_exact", self.path if exact else None)
        object.__setattr__(self, "_any_path", self.path == "*")
        object.__setattr__(self, "_plain_match", RouteMatch(self, _NO_PARAMS))

    def match(self, method: str, path: str) -> Mapping[str, str] | None:
        """The path parameters if this route matches, else ``None``."""
        found = self._match(method, path)
        return found.path_params if found is not None else None

    def _match(self, method: str, path: str) -> RouteMatch | None:
        methods = self._methods
        if methods is not None and method not in methods and method.upper() not in methods:
            return None
        if self._exact is not None:
            return self._plain_match if path == self._exact else None
        if self._any_path:
            return self._plain_match
        found = self._regex.fullmatch(path)
        if found is None:
            return None
        return RouteMatch(self, found.groupdict()) if self._names else self._plain_match


_NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})


class RouteMatch(NamedTuple):
    """The route a request matched and the path parameters it captured."""

    route: Route
    path_params: Mapping[str, str]


class RouteTable:
    """An immutable, ordered collection of routes; :meth:`match` finds the first that fits."""

    __slots__ = ("_by_path", "_patterned", "_routes")

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        checked = tuple(routes)
        for route in checked:
            if not isinstance(route, Route):
                raise TypeError(f"a RouteTable holds Route objects, got {route!r}")
        self._routes = checked
        # A request can only match the exact routes for its own path and the patterned ones:
        # one dict lookup finds those candidates, still in table order (first match wins).
        self._patterned = tuple(route for route in checked if route._exact is None)
        self._by_path = {
            path: tuple(route for route in checked if route._exact in (None, path))
            for path in {route._exact for route in checked if route._exact is not None}
        }

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        shown = ", ".join(f"{route.method} {route.path}" for route in self._routes)
        return f"RouteTable([{shown}])"

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The first route matching ``method`` and ``path`` with its captures, or ``None``."""
        for route in self._by_path.get(path, self._patterned):
            found = route._match(method, path)
            if found is not None:
                return found
        return None

    def policy_names(self) -> frozenset[str]:
        """Every policy some route applies."""
        return frozenset(limit.policy for route in self._routes for limit in route.limits)


def routes_from_config(
    config: Config,
    routes: RouteTable | Iterable[Route] | None = None,
    client_ip: ClientIP | None = None,
) -> RouteTable:
    """The route table for ``config``: ``routes`` given in code, or the config's ``routes``
    section compiled, its ``ip`` identities found by ``client_ip`` (default: the config's
    ``client_ip`` section, else trusting no proxy). A config with both, or neither, is a
    :class:`~ratewall.ConfigError`."""
    if routes is not None:
        if config.routes is not None:
            raise ConfigError(
                "defines routes, and routes= was given too; keep one of them",
                source=config.source,
                field="routes",
            )
        return routes if isinstance(routes, RouteTable) else RouteTable(routes)
    if config.routes is None:
        raise ConfigError(
            "has no routes; add a 'routes' section or pass routes= in code",
            source=config.source,
            field="routes",
        )
    if client_ip is None:
        client_ip = client_ip_from_config(config)
    return compile_routes(config.routes, source=config.source, client_ip=client_ip)


def parse_routes(
    data: object,
    *,
    source: str = _SOURCE,
    policies: Mapping[str, Policy],
    client_ip: ClientIP | None = None,
) -> RouteTable:
    """A :class:`RouteTable` from the ``routes`` section of a config file (decoded data),
    checked as :func:`ratewall.config.validate_routes` checks it: every error is a
    :class:`~ratewall.ConfigError` naming ``source`` and the field path, such as
    ``routes[0].policies[1].identity``. ``ip`` identities are found by ``client_ip`` (by
    default trusting no proxy)."""
    entries = validate_routes(data, source=source, policies=policies)
    return compile_routes(entries, source=source, client_ip=client_ip)


def compile_routes(
    entries: Iterable[RouteEntry], *, source: str = _SOURCE, client_ip: ClientIP | None = None
) -> RouteTable:
    """The route table of validated ``routes`` entries (see :func:`parse_routes`)."""
    routes: list[Route] = []
    for index, entry in enumerate(entries):
        at = f"routes[{index}]"
        words = entry["match"].split()  # "METHOD /path" or "/path", as validated
        method, path = words if len(words) == 2 else ("*", words[0])
        route_identity = entry.get("identity", "ip")
        route_missing = entry.get("on_missing_identity", "ip")
        route_tier = entry.get("tier")
        route_exempt = entry.get("exempt_networks", ())
        limits: list[RouteLimit] = []
        for position, item in enumerate(entry["policies"]):
            limit: LimitEntry = {"policy": item} if isinstance(item, str) else item
            identity = parse_identity_source(
                limit.get("identity", route_identity),
                source=source,
                field=f"{at}.policies[{position}].identity",
                client_ip=client_ip,
            )
            tier = limit.get("tier", route_tier)
            limits.append(
                RouteLimit(
                    limit["policy"],
                    identity,
                    limit.get("cost", 1),
                    limit.get("on_missing_identity", route_missing),
                    tier=(
                        TierHeader(tier["header"], tier["allowed"], tier.get("default"))
                        if tier is not None
                        else None
                    ),
                    exempt_networks=limit.get("exempt_networks", route_exempt),
                )
            )
        routes.append(Route(path, limits, method))
    return RouteTable(routes)
