"""The two ASGI apps of the ``asgi`` mode, as uvicorn factories (``--factory asgi_apps:bare``).

``bare`` is the smallest honest ASGI app: one fixed 200 response. ``limited`` is the same app
inside ratewall's :class:`~ratewall.http.RateLimitMiddleware` on the memory store, with one
catch-all route limited per client address (the default identity of a config file's routes)
and a limit no run can reach, so every request is checked, allowed and decorated with the
RateLimit fields. ``fields`` (for ``asgi_instructions.py``) is the bare app sending two
fixed fields of the same shape. The harness picks the algorithm and limit through the
environment, because uvicorn builds the app in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from ratewall import AsyncRateLimiter, Policy
from ratewall.http import ClientIP, RateLimitMiddleware, Route, RouteLimit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]

ALGORITHM_VARIABLE: Final = "RATEWALL_BENCH_ALGORITHM"
LIMIT_VARIABLE: Final = "RATEWALL_BENCH_LIMIT"
WINDOW_VARIABLE: Final = "RATEWALL_BENCH_WINDOW"
POLICY: Final = "bench"

_HEADERS: Final = ((b"content-type", b"text/plain"), (b"content-length", b"2"))


async def trivial_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """200 ``ok`` to every HTTP request; other scopes (lifespan) are simply accepted."""
    if scope["type"] != "http":
        return
    # Fresh messages, as a real app sends: a server or middleware may keep or alter them.
    await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
    await send({"type": "http.response.body", "body": b"ok"})


_FIELDS: Final = (
    (b"ratelimit-policy", b'"bench";q=1000000000;w=60'),
    (b"ratelimit", b'"bench";r=999999999;t=60'),
)


async def fields_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """:func:`trivial_app` sending two fixed fields shaped like the middleware's RateLimit
    fields too: what the server's handling of those two fields costs, without a limiter."""
    if scope["type"] != "http":
        return
    headers = [*_HEADERS, *_FIELDS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def memory_limiter(algorithm: str, limit: int, window: int) -> AsyncRateLimiter:
    return AsyncRateLimiter({POLICY: Policy(limit, window, algorithm)})


def limited_app(limiter: AsyncRateLimiter) -> RateLimitMiddleware:
    return RateLimitMiddleware(trivial_app, limiter, [Route("*", [RouteLimit(POLICY, ClientIP())])])


def bare() -> App:
    return trivial_app


def fields() -> App:
    return fields_app


def limited() -> RateLimitMiddleware:
    return limited_app(
        memory_limiter(
            os.environ[ALGORITHM_VARIABLE],
            int(os.environ[LIMIT_VARIABLE]),
            int(os.environ[WINDOW_VARIABLE]),
        )
    )
