"""Starlette: the ASGI middleware as it is, and a decorator for single endpoints.

The middleware needs no adapter; it takes Starlette's ``add_middleware`` form::

    from ratewall.http import Header, RateLimitMiddleware, Route, RouteLimit

    app = Starlette(routes=[...])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, routes=[
        Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST"),
    ])

To put a limit next to the endpoint it protects instead, decorate the endpoint::

    from ratewall.integrations.starlette import rate_limit

    @rate_limit(limiter, "login", identity=Header("X-User-ID"))
    async def login(request: Request) -> Response:
        ...

The decorator works on function endpoints (``async def`` or plain ``def``, which Starlette
runs in its thread pool), with the responses and failure rules of the middleware. Path
parameters of the Starlette route (``/users/{user_id}``) are what
:class:`~ratewall.http.PathParam` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

from ..http.asgi import RateLimitMiddleware
from ..http.client_ip import ClientIP
from ..http.identities import IdentitySource
from ..http.request import HttpRequest
from ..http.routes import OnMissingIdentity, RouteLimit
from ..http.steps import AsyncLimiter, Respond
from ..http.wire import encode_headers
from ._shared import AsyncEngineDriver, ViewLimits, apply_headers, path_params

__all__ = ["RateLimitMiddleware", "rate_limit", "ratewall_request", "refusal_response"]

Endpoint: TypeAlias = Callable[[StarletteRequest], Awaitable[Response] | Response]


def ratewall_request(connection: HTTPConnection) -> HttpRequest:
    """The rate limiter's view of a Starlette request, with the route's path parameters."""
    request = HttpRequest.from_asgi_scope(connection.scope)
    params: dict[str, Any] = connection.scope.get("path_params") or {}
    if not params:
        return request
    return dataclasses.replace(request, path_params=path_params(params))


def refusal_response(verdict: Respond) -> Response:
    """The engine's refusal (429, 503 or 400) as a Starlette response, byte for byte the one
    the middleware sends."""
    response = Response(verdict.body, status_code=verdict.status)
    response.raw_headers = encode_headers(verdict.headers)
    return response


def rate_limit(
    limiter: AsyncLimiter,
    policy: str | None = None,
    identity: IdentitySource | None = None,
    *,
    cost: int = 1,
    on_missing_identity: OnMissingIdentity = "ip",
    limits: Iterable[RouteLimit] = (),
    legacy_headers: bool = False,
    headers_on_allowed: bool = True,
    client_ip: ClientIP | None = None,
) -> Callable[[Endpoint], Callable[[StarletteRequest], Awaitable[Response]]]:
    """Rate-limit a Starlette endpoint with ``limiter`` (an
    :class:`~ratewall.AsyncRateLimiter`).

    Apply one ``policy`` to the client ``identity`` names (default: the client address,
    found by ``client_ip``), spending ``cost`` units per request; or pass
    ``limits=[RouteLimit(...), ...]`` for several policies, checked all or nothing.
    ``on_missing_identity`` as in :class:`~ratewall.http.RouteLimit`. Unknown policies fail
    here, at import time, with a :class:`~ratewall.ConfigError`.
    """
    declared = ViewLimits(
        policy, identity, cost=cost, on_missing_identity=on_missing_identity, limits=limits
    )

    def decorate(endpoint: Endpoint) -> Callable[[StarletteRequest], Awaitable[Response]]:
        name = getattr(endpoint, "__qualname__", repr(endpoint))
        engine = declared.engine(
            limiter.policies,
            client_ip=client_ip,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            where=f"@rate_limit on {name}",
        )
        driver = AsyncEngineDriver(engine, limiter)
        is_async = inspect.iscoroutinefunction(endpoint)

        @functools.wraps(endpoint)
        async def limited(request: StarletteRequest) -> Response:
            verdict = await driver.verdict(lambda: ratewall_request(request))
            if isinstance(verdict, Respond):
                return refusal_response(verdict)
            result = endpoint(request) if is_async else await run_in_threadpool(endpoint, request)
            response: Response = await result if inspect.isawaitable(result) else result
            apply_headers(
                engine, response.headers.get, response.headers.__setitem__, verdict.headers
            )
            return response

        return limited

    return decorate
