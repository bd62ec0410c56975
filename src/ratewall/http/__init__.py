"""ratewall in front of web applications: routes to policies, client identities, standard
429/503 responses, as ASGI and WSGI middleware over one sans-IO engine.

One job per module:

- :mod:`~ratewall.http.asgi`, :mod:`~ratewall.http.wsgi`: the middlewares, which do the I/O;
  :mod:`~ratewall.http.shortcut`, the ASGI middleware's short way for the usual request;
- :mod:`~ratewall.http.engine`: :class:`HttpEngine`, the sans-IO core and its failure
  isolation; :mod:`~ratewall.http.steps`, the steps it hands the middlewares (``Pass``,
  ``Respond``, ``AskLimiter``) and the limiter protocols it relies on;
- :mod:`~ratewall.http.routes`: :class:`Route`, :class:`RouteLimit`, :class:`RouteTable`, and
  the routes of a config file (``routes_from_config``);
- :mod:`~ratewall.http.request`: :class:`HttpRequest`, all that identity sources may read;
- :mod:`~ratewall.http.identities`: the identity sources :class:`Header`, :class:`User`,
  :class:`APIKey`, :class:`PathParam`, and :func:`parse_identity_source`;
- :mod:`~ratewall.http.client_ip`: :class:`ClientIP`, the client address behind trusted
  proxies;
- :mod:`~ratewall.http.tiers`: :class:`TierHeader`, which picks a policy tier per request;
- :mod:`~ratewall.http.headers`: the IETF RateLimit fields, ``Retry-After`` and
  ``application/problem+json`` bodies (pure functions); :mod:`~ratewall.http.wire`, what
  may be sent; :mod:`~ratewall.http.log_throttle`, failure logs that cannot flood.

Nothing here imports a web framework. The names below are the ones applications use; the
engine's steps are for engine subclasses, from :mod:`ratewall.http.steps`.
"""

from __future__ import annotations

from typing import Final

from .asgi import RateLimitMiddleware
from .client_ip import ClientIP
from .engine import HttpEngine
from .identities import APIKey, Header, IdentitySource, PathParam, User, parse_identity_source
from .request import HttpRequest
from .routes import Route, RouteLimit, RouteTable
from .tiers import TierHeader, TierSource
from .wsgi import WSGIRateLimitMiddleware

HttpLimiter: Final = HttpEngine
"""The engine's former name (earlier READMEs called it ``ratewall.http.HttpLimiter``), kept
so that code written against them still imports; new code says :class:`HttpEngine`."""

__all__ = [
    "APIKey",
    "ClientIP",
    "Header",
    "HttpEngine",
    "HttpLimiter",
    "HttpRequest",
    "IdentitySource",
    "PathParam",
    "RateLimitMiddleware",
    "Route",
    "RouteLimit",
    "RouteTable",
    "TierHeader",
    "TierSource",
    "User",
    "WSGIRateLimitMiddleware",
    "parse_identity_source",
]
