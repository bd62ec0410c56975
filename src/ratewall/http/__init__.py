"""ratewall in front of web applications: routes to policies, client identities, standard
429/503 responses, as ASGI and WSGI middleware over one sans-IO engine.

- :mod:`~ratewall.http.routes`: :class:`Route`, :class:`RouteLimit`, :class:`RouteTable`,
  :func:`parse_routes` (config files);
- :mod:`~ratewall.http.identity`: :class:`Request`, the identity sources :class:`Header`,
  :class:`User`, :class:`APIKey`, :class:`PathParam`, :class:`ClientIP`, and
  :func:`parse_identity_source`;
- :mod:`~ratewall.http.headers`: the IETF RateLimit fields, ``Retry-After`` and
  ``application/problem+json`` bodies (pure functions);
- :mod:`~ratewall.http.engine`: :class:`HttpLimiter`, the sans-IO core and its failure
  isolation;
- :class:`RateLimitMiddleware` (ASGI) and :class:`WSGIRateLimitMiddleware` (WSGI).

Nothing here imports a web framework.
"""

from __future__ import annotations

from .asgi import RateLimitMiddleware
from .engine import PASS, Check, HttpLimiter, Outcome, Pass, Respond
from .identity import (
    APIKey,
    ClientIP,
    Header,
    IdentitySource,
    PathParam,
    Request,
    User,
    parse_identity_source,
)
from .routes import Route, RouteLimit, RouteMatch, RouteTable, parse_routes
from .wsgi import WSGIRateLimitMiddleware

__all__ = [
    "PASS",
    "APIKey",
    "Check",
    "ClientIP",
    "Header",
    "HttpLimiter",
    "IdentitySource",
    "Outcome",
    "Pass",
    "PathParam",
    "RateLimitMiddleware",
    "Request",
    "Respond",
    "Route",
    "RouteLimit",
    "RouteMatch",
    "RouteTable",
    "User",
    "WSGIRateLimitMiddleware",
    "parse_identity_source",
    "parse_routes",
]
