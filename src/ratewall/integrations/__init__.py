"""Thin framework integrations over :mod:`ratewall.http`'s sans-IO engine.

Each module imports its framework, so install the matching extra and import the module
itself (importing this package imports no framework):

=========================================  ===============================================
:mod:`ratewall.integrations.fastapi`       ``RateLimit``: a per-route dependency;
                                           ``install(app)`` for problem+json refusals
:mod:`ratewall.integrations.starlette`     ``rate_limit``: a decorator for endpoints (the
                                           ASGI middleware works with ``add_middleware``)
:mod:`ratewall.integrations.flask`         ``FlaskRateLimit``: an extension (``init_app``,
                                           app-wide routes) and its ``limit`` decorator
:mod:`ratewall.integrations.django`        ``RateLimitMiddleware`` configured by
                                           ``settings.RATEWALL``; the ``rate_limit``
                                           decorator
=========================================  ===============================================

They all declare limits the same way: one policy name with ``identity=`` (an identity
source; the default is the client address), ``cost=`` and ``on_missing_identity=``, or
``limits=[RouteLimit(...), ...]`` for several policies checked all or nothing. A refused
request consumes none of them. Responses, headers and failure rules are the engine's, so
identical to the ASGI/WSGI middleware: 429 with ``Retry-After`` and the RateLimit fields and
an ``application/problem+json`` body, the RateLimit fields on allowed responses, 503 when the
store is down and a policy fails closed, and never a 500 caused by the limiter.
"""

from __future__ import annotations

__all__: list[str] = []
