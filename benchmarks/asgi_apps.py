"""The ASGI apps of the ``asgi`` mode, as uvicorn factories (``--factory asgi_apps:bare``).

``bare`` is the smallest honest ASGI app: one fixed 200 response. ``limited`` is the same app
inside ratewall's :class:`~ratewall.http.RateLimitMiddleware` on the memory store, with one
catch-all route limited per client address (the default identity of a config file's routes)
and a limit no run can reach, so every request is checked, allowed and decorated with the
RateLimit fields. The harness picks the algorithm and limit through the environment,
because uvicorn builds the app in its own process.

Three *reference apps* show what parts of the middleware's work cost a server, each measured
against ``bare`` like the middleware (``run.py --libraries ratewall,ref-fields,ref-headers,
ref-minimal --modes asgi``; ``asgi_instructions.py`` measures them too):

- ``fields``: the bare app sending two fixed fields shaped like the RateLimit fields (what
  the server's own handling of two more fields costs);
- ``headers``: the bare app inside the smallest middleware that adds those two fixed fields
  (a ``send`` wrapper copying the response start);
- ``minimal``: the bare app inside the smallest rate-limiting middleware there can be on
  ratewall: the client address, one decision of a :class:`~ratewall.RateLimiter` on the
  memory store, its two fields formatted and added as ``headers`` adds them. No routes, no
  identity rules, no refusals, no containment of failures: a yardstick, not a middleware.

``limited_quietly`` is ``limited`` with ``headers_on_allowed=False`` (reference
``ratewall-quiet``): what the middleware costs when allowed responses carry no field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Final

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.http import ClientIP, RateLimitMiddleware, Route, RouteLimit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Any]

ALGORITHM_VARIABLE: Final = "RATEWALL_BENCH_ALGORITHM"
LIMIT_VARIABLE: Final = "RATEWALL_BENCH_LIMIT"
WINDOW_VARIABLE: Final = "RATEWALL_BENCH_WINDOW"
POLICY: Final = "bench"

_HEADERS: Final = ((b"content-type", b"text/plain"), (b"content-length", b"2"))


async def trivial_app(scope: Scope, receive: Receive, send: Send) -> None:
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


async def fields_app(scope: Scope, receive: Receive, send: Send) -> None:
    """:func:`trivial_app` sending two fixed fields shaped like the middleware's RateLimit
    fields too: what the server's handling of those two fields costs, without a limiter."""
    if scope["type"] != "http":
        return
    headers = [*_HEADERS, *_FIELDS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def _adding(send: Send, extra: Sequence[tuple[bytes, bytes]]) -> Send:
    """``send`` adding ``extra`` to a copy of the response start message."""

    def adding(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        return send(message)

    return adding


def headers_app(app: App, extra: Sequence[tuple[bytes, bytes]]) -> App:
    """``app`` with ``extra`` added to every HTTP response: the reference ``headers``."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        await app(scope, receive, _adding(send, extra))

    return middleware


def minimal_limiter_app(app: App, limiter: RateLimiter, policy: str) -> App:
    """``app`` with every HTTP request checked against ``policy`` per client address and the
    decision's two RateLimit fields added: the reference ``minimal`` (never refuses)."""
    limit = limiter.policies[policy].limit
    window = math.ceil(limiter.policies[policy].window_us / 1_000_000)
    policy_field = b'"%s";q=%d;w=%d' % (policy.encode(), limit, window)
    name = b'"%s"' % policy.encode()
    check = limiter.check

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        decision = check(scope["client"][0], policy)
        state = b"%s;r=%d;t=%d" % (name, decision.remaining, math.ceil(decision.reset_after))
        extra = ((b"ratelimit-policy", policy_field), (b"ratelimit", state))
        await app(scope, receive, _adding(send, extra))

    return middleware


def memory_limiter(algorithm: str, limit: int, window: int) -> AsyncRateLimiter:
    return AsyncRateLimiter({POLICY: Policy(limit, window, algorithm)})


def limited_app(limiter: AsyncRateLimiter) -> RateLimitMiddleware:
    return RateLimitMiddleware(trivial_app, limiter, [Route("*", [RouteLimit(POLICY, ClientIP())])])


def bare() -> App:
    return trivial_app


def fields() -> App:
    return fields_app


def _policy_from_environment() -> Policy:
    return Policy(
        int(os.environ[LIMIT_VARIABLE]),
        int(os.environ[WINDOW_VARIABLE]),
        os.environ[ALGORITHM_VARIABLE],
    )


def limited() -> RateLimitMiddleware:
    return limited_app(AsyncRateLimiter({POLICY: _policy_from_environment()}))


def limited_quietly() -> RateLimitMiddleware:
    """``limited`` with ``headers_on_allowed=False``: allowed responses get no field."""
    limiter = AsyncRateLimiter({POLICY: _policy_from_environment()})
    return RateLimitMiddleware(
        trivial_app,
        limiter,
        [Route("*", [RouteLimit(POLICY, ClientIP())])],
        headers_on_allowed=False,
    )


def headers() -> App:
    return headers_app(trivial_app, _FIELDS)


def minimal() -> App:
    limiter = RateLimiter({POLICY: _policy_from_environment()})
    return minimal_limiter_app(trivial_app, limiter, POLICY)
