"""ratewall in front of web applications: routes to policies, client identities, standard
429/503 responses, as ASGI and WSGI middleware over one sans-IO engine.

- :mod:`~ratewall.http.routes`: :class:`Route`, :class:`RouteLimit`, :class:`RouteTable`,
  :func:`parse_routes` (config files);
- :mod:`~ratewall.http.request`: :class:`HttpRequest`, what identity sources may read;
- :mod:`~ratewall.http.identities`: the identity sources :class:`Header`, :class:`User`,
  :class:`APIKey`, :class:`PathParam`, and :func:`parse_identity_source`;
- :mod:`~ratewall.http.client_ip`: :class:`ClientIP`, the client address behind trusted
  proxies;
- :mod:`~ratewall.http.headers`: the IETF RateLimit fields, ``Retry-After`` and
  ``application/problem+json`` bodies (pure functions);
- :mod:`~ratewall.http.engine`: :class:`HttpLimiter`, the sans-IO core and its failure
  isolation;
- :class:`RateLimitMiddleware` (ASGI) and :class:`WSGIRateLimitMiddleware` (WSGI).

Nothing here imports a web framework.
"""

from __future__ import annotations

from .asgi import RateLimitMiddleware
from .client_ip import ClientIP
from .engine import PASS, Check, HttpLimiter, Outcome, Pass, Respond
from .identities import APIKey, Header, IdentitySource, PathParam, User, parse_identity_source
from .request import HttpRequest
from .routes import Route, RouteLimit, RouteMatch, RouteTable, parse_routes
from .wsgi import WSGIRateLimitMiddleware

__all__ = [
    "PASS",
    "APIKey",
    "Check",
    "ClientIP",
    "Header",
    "HttpLimiter",
    "HttpRequest",
    "IdentitySource",
    "Outcome",
    "Pass",
    "PathParam",
    "RateLimitMiddleware",
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
