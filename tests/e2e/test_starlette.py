"""Starlette over real HTTP: the ASGI middleware in ``add_middleware`` form, and the
``rate_limit`` endpoint decorator."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as StarletteRoute

from ratewall import AsyncRateLimiter, Policy
from ratewall.http import Header, PathParam, RateLimitMiddleware, Route, RouteLimit
from ratewall.integrations.starlette import rate_limit
from ratewall.testing import FakeClock

from ..http._support import ratelimit_members
from ._support import serve_asgi, wire

USER = {"X-User-ID": "user_123"}


def limiter() -> AsyncRateLimiter:
    return AsyncRateLimiter({"login": Policy(5, 60), "profile": Policy(2, 60)}, clock=FakeClock())


async def ok(request: StarletteRequest) -> Response:
    return PlainTextResponse("ok")


def test_add_middleware_form() -> None:
    app = Starlette(routes=[StarletteRoute("/login", ok, methods=["POST"])])
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter(),
        routes=[Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")],
    )
    with serve_asgi(app) as url, httpx.Client(base_url=url) as client:
        responses = [client.post("/login", headers=USER) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert ratelimit_members(responses[0].headers)["login"]["r"] == 4
    assert responses[5].headers["content-type"] == "application/problem+json"


def test_decorated_endpoints_async_and_sync(http: httpx.Client) -> None:
    shared = limiter()

    @rate_limit(shared, "login", identity=Header("X-User-ID"))
    async def login(request: StarletteRequest) -> Response:
        return JSONResponse({"ok": True}, headers={"X-App": "yes"})

    @rate_limit(shared, "profile", PathParam("user_id"))
    def profile(request: StarletteRequest) -> Response:  # Starlette runs it in a thread
        return PlainTextResponse(f"user {request.path_params['user_id']}")

    reference = Starlette(routes=[StarletteRoute("/login", ok, methods=["POST"])])
    reference.add_middleware(
        RateLimitMiddleware,
        limiter=limiter(),
        routes=[Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")],
    )
    app = Starlette(
        routes=[
            StarletteRoute("/login", login, methods=["POST"]),
            StarletteRoute("/users/{user_id:int}", profile),
        ]
    )
    with serve_asgi(app) as url, serve_asgi(reference) as other:
        logins = [http.post(url + "/login", headers=USER) for _ in range(6)]
        expected = [http.post(other + "/login", headers=USER) for _ in range(6)][-1]
        profiles = [http.get(url + "/users/7") for _ in range(3)]
    assert [r.status_code for r in logins] == [200] * 5 + [429]
    assert logins[0].headers["x-app"] == "yes"  # the endpoint's own response, with the fields
    assert ratelimit_members(logins[0].headers)["login"]["r"] == 4
    assert wire(logins[5]) == wire(expected)  # the middleware's refusal, byte for byte
    assert [r.status_code for r in profiles] == [200, 200, 429]
    assert profiles[0].text == "user 7"
