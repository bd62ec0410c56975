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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NamedTuple, get_args

from ..errors import ConfigError
from ..policy import Policy
from .client_ip import ClientIP
from .identities import IdentitySource, PathParam, parse_identity_source

__all__ = [
    "ON_MISSING_IDENTITY",
    "OnMissingIdentity",
    "Route",
    "RouteLimit",
    "RouteMatch",
    "RouteTable",
    "parse_routes",
]

OnMissingIdentity = Literal["ip", "reject", "skip"]
ON_MISSING_IDENTITY: Final[tuple[str, ...]] = get_args(OnMissingIdentity)

_METHOD = re.compile(r"[A-Za-z]{1,32}")
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")
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
    """

    policy: str
    identity: IdentitySource
    cost: int = 1
    on_missing_identity: OnMissingIdentity = "ip"

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


def _compile(path: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A path pattern as a regular expression and its capture names; ValueError if invalid."""
    if not isinstance(path, str):
        raise ValueError(f"a path pattern must be a string, got {type(path).__name__}")
    if path == "*":
        return re.compile(r".*", re.DOTALL), ()
    if not path.startswith("/"):
        raise ValueError(f"path pattern {path!r} must start with '/' (or be '*')")
    prefix = path.endswith("/*")
    body = path[:-2] if prefix else path
    names: list[str] = []
    parts: list[str] = []
    for index, segment in enumerate(body.split("/")):
        if index == 0:
            continue  # the empty string before the leading slash
        capture = _CAPTURE.fullmatch(segment)
        if capture:
            name = capture[1]
            if name in names:
                raise ValueError(f"path pattern {path!r} captures {{{name}}} twice")
            names.append(name)
            parts.append("/(?P<" + name + ">[^/]+)")
        elif any(char in segment for char in "{}*"):
            raise ValueError(
                f"path pattern {path!r}: '{{name}}' must be a whole segment and '*' may only "
                "end the pattern, as in '/users/{user_id}' or '/api/*'"
            )
        else:
            parts.append("/" + re.escape(segment))
    regex = "".join(parts)
    if prefix:
        regex += "(?:/.*)?"
    return re.compile(regex, re.DOTALL), tuple(names)


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
        if method != "*" and not (isinstance(method, str) and _METHOD.fullmatch(method)):
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


# --- config ---------------------------------------------------------------------------------

_ROUTE_FIELDS: Final = ("match", "policies", "identity", "on_missing_identity")
_LIMIT_FIELDS: Final = ("policy", "identity", "cost", "on_missing_identity")


def parse_routes(
    data: object,
    *,
    source: str = _SOURCE,
    policies: Mapping[str, Policy],
    client_ip: ClientIP | None = None,
) -> RouteTable:
    """A :class:`RouteTable` from the ``routes`` section of a config file (decoded data).

    ``data`` is a list of mappings with ``match`` (``"POST /login"``, or a bare path for any
    method), ``policies`` (a list of policy names or mappings with ``policy`` and optionally
    ``identity``, ``cost`` and ``on_missing_identity``) and optionally ``identity`` and
    ``on_missing_identity`` as defaults for the route's policies. The default identity is
    ``"ip"``, the client address as ``client_ip`` determines it (by default trusting no
    proxy). ``policies`` are the known policies: names must exist, costs must fit.

    Every error is a :class:`~ratewall.ConfigError` naming ``source`` and the field path,
    such as ``routes[0].policies[1].identity``.
    """
    if not isinstance(data, list | tuple):
        raise ConfigError(
            "must be a list of routes, each like "
            "{match: 'POST /login', policies: [login], identity: 'header:X-User-ID'}",
            source=source,
            field="routes",
        )
    routes: list[Route] = []
    for index, entry in enumerate(data):
        routes.append(
            _parse_route(
                entry, f"routes[{index}]", source=source, policies=policies, client_ip=client_ip
            )
        )
    return RouteTable(routes)


def _parse_route(
    entry: object,
    at: str,
    *,
    source: str,
    policies: Mapping[str, Policy],
    client_ip: ClientIP | None,
) -> Route:
    if not isinstance(entry, Mapping):
        raise ConfigError("must be a mapping with 'match' and 'policies'", source=source, field=at)
    _check_fields(entry, _ROUTE_FIELDS, at, source)
    for required in ("match", "policies"):
        if required not in entry:
            raise ConfigError("is required", source=source, field=f"{at}.{required}")
    method, path = _parse_match(entry["match"], source=source, field=f"{at}.match")
    identity_spec = entry.get("identity", "ip")
    route_identity = parse_identity_source(
        identity_spec, source=source, field=f"{at}.identity", client_ip=client_ip
    )
    route_missing = _on_missing(
        entry.get("on_missing_identity", "ip"), source=source, field=f"{at}.on_missing_identity"
    )
    raw_limits = entry["policies"]
    if not isinstance(raw_limits, list | tuple):
        raise ConfigError(
            "must be a list of policy names or mappings (an empty list exempts the route)",
            source=source,
            field=f"{at}.policies",
        )
    limits: list[RouteLimit] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_limits):
        here = f"{at}.policies[{position}]"
        if isinstance(raw, str):
            name, identity, cost, missing = raw, route_identity, 1, route_missing
            name_field = here
        elif isinstance(raw, Mapping):
            _check_fields(raw, _LIMIT_FIELDS, here, source)
            if "policy" not in raw:
                raise ConfigError("is required", source=source, field=f"{here}.policy")
            name = raw["policy"]
            name_field = f"{here}.policy"
            identity = (
                parse_identity_source(
                    raw["identity"], source=source, field=f"{here}.identity", client_ip=client_ip
                )
                if "identity" in raw
                else route_identity
            )
            cost = raw.get("cost", 1)
            missing = (
                _on_missing(
                    raw["on_missing_identity"],
                    source=source,
                    field=f"{here}.on_missing_identity",
                )
                if "on_missing_identity" in raw
                else route_missing
            )
        else:
            raise ConfigError(
                f"must be a policy name or a mapping with 'policy', got {type(raw).__name__}",
                source=source,
                field=here,
            )
        policy = _known_policy(name, policies, source=source, field=name_field)
        if name in seen:
            raise ConfigError(
                f"policy {name!r} is listed twice in this route; define a second policy "
                "for a second identity",
                source=source,
                field=name_field,
            )
        seen.add(name)
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= policy.capacity:
            raise ConfigError(
                f"must be an integer from 1 to {policy.capacity} (the capacity of policy "
                f"{name!r}), got {cost!r}",
                source=source,
                field=f"{here}.cost",
            )
        limits.append(RouteLimit(name, identity, cost, missing))
    try:
        return Route(path, limits, method)
    except ValueError as error:
        raise ConfigError(str(error), source=source, field=f"{at}.match") from None


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
    if method != "*" and not _METHOD.fullmatch(method):
        raise ConfigError(
            f"{method!r} is not an HTTP method; write e.g. 'POST /login' or '* /login'",
            source=source,
            field=field,
        )
    try:
        _compile(path)
    except ValueError as error:
        raise ConfigError(str(error), source=source, field=field) from None
    return method.upper(), path


def _on_missing(value: object, *, source: str, field: str) -> OnMissingIdentity:
    if value == "ip":
        return "ip"
    if value == "reject":
        return "reject"
    if value == "skip":
        return "skip"
    raise ConfigError(
        f"must be one of {', '.join(ON_MISSING_IDENTITY)}, got {value!r}",
        source=source,
        field=field,
    )


def _known_policy(
    name: object, policies: Mapping[str, Policy], *, source: str, field: str
) -> Policy:
    if isinstance(name, str) and name in policies:
        return policies[name]
    known = ", ".join(policies) or "(none)"
    raise ConfigError(
        f"unknown policy {name!r}; known policies: {known}", source=source, field=field
    )


def routes_from_config(
    config: object,
    routes: RouteTable | Iterable[Route] | None,
    client_ip: ClientIP | None,
) -> RouteTable:
    """The route table for a :class:`~ratewall.config.Config`: ``routes`` given in code, or
    the file's ``routes`` section (exposed by the config as ``config.routes``)."""
    source = str(getattr(config, "source", "<config>"))
    raw = getattr(config, "routes", None)
    if routes is not None:
        if raw is not None:
            raise ConfigError(
                "defines routes, and routes= was given too; keep one of them",
                source=source,
                field="routes",
            )
        return routes if isinstance(routes, RouteTable) else RouteTable(routes)
    if raw is None:
        raise ConfigError(
            "has no routes; add a 'routes' section or pass routes= in code",
            source=source,
            field="routes",
        )
    policies: Mapping[str, Policy] = getattr(config, "policies", {})
    if client_ip is None:
        client_ip = getattr(config, "client_ip", None)
    return parse_routes(raw, source=source, policies=policies, client_ip=client_ip)
