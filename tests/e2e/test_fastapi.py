"""FastAPI over real HTTP: the README example under uvicorn workers sharing Redis, and the
``RateLimit`` dependency's responses, headers and failure rules under an in-thread uvicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse

from ratewall import AsyncRateLimiter, ConfigError, Decision, Policy, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.http import (
    ClientIP,
    Header,
    HttpRequest,
    PathParam,
    RateLimitMiddleware,
    Route,
    RouteLimit,
)
from ratewall.http.steps import Item
from ratewall.integrations.fastapi import RateLimit, RateLimited, install
from ratewall.testing import FakeClock

from .._timing import STORE_TIMEOUT
from ..http._support import asgi_app, ratelimit_members
from ._support import (
    assert_example_shares_one_limit,
    free_port,
    serve_asgi,
    wire,
)

POLICIES = {"login": Policy(5, 60), "login_ip": Policy(3, 60)}
USER = {"X-User-ID": "user_123"}


@pytest.mark.slow
def test_readme_example_under_uvicorn_workers_shares_one_limit(
    redis_url: str, redis_server: LocalServer
) -> None:
    assert_example_shares_one_limit("uvicorn", "fastapi_app:app", redis_url, redis_server.port)


def limiter(clock: FakeClock | None = None, **policies: Policy) -> AsyncRateLimiter:
    return AsyncRateLimiter(policies or POLICIES, clock=clock or FakeClock())


def login_app(*dependencies: RateLimit, handler: bool = True) -> FastAPI:
    app = FastAPI()
    if handler:
        install(app)

    @app.post("/login", dependencies=[Depends(d) for d in dependencies])
    async def login() -> dict[str, bool]:
        return {"ok": True}

    return app


def posts(
    http: httpx.Client, url: str, count: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    return [http.post(url, headers=headers) for _ in range(count)]


def test_seed_flow_and_refusals_identical_to_the_middleware(http: httpx.Client) -> None:
    clock = FakeClock()
    dependency = RateLimit(limiter(clock), "login", identity=Header("X-User-ID"))
    middleware_clock = FakeClock()
    middleware = RateLimitMiddleware(
        asgi_app(),
        limiter(middleware_clock),
        [Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")],
    )
    with serve_asgi(login_app(dependency)) as url, serve_asgi(middleware) as reference:
        allowed = posts(http, url + "/login", 5, USER)
        assert [response.json() for response in allowed] == [{"ok": True}] * 5
        assert [ratelimit_members(r.headers)["login"]["r"] for r in allowed] == [4, 3, 2, 1, 0]
        assert ratelimit_members(allowed[0].headers)["login"] == {"q": 5, "w": 60, "r": 4, "t": 60}
        posts(http, reference + "/login", 5, USER)

        clock.advance(45)
        middleware_clock.advance(45)
        refused = http.post(url + "/login", headers=USER)
        expected = http.post(reference + "/login", headers=USER)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "15"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["violated-policies"] == ["login"]
    assert wire(refused) == wire(expected)


def test_without_the_handler_fastapi_sends_the_same_status_and_headers(http: httpx.Client) -> None:
    dependency = RateLimit(limiter(), "login", identity=Header("X-User-ID"))
    with serve_asgi(login_app(dependency, handler=False)) as url:
        *_, refused = posts(http, url + "/login", 6, USER)
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Too Many Requests"}
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "60"
    assert ratelimit_members(refused.headers) == {"login": {"q": 5, "w": 60, "r": 0, "t": 60}}


def test_several_policies_are_all_or_nothing(http: httpx.Client) -> None:
    shared = limiter()
    both = RateLimit(
        shared,
        limits=[RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())],
    )
    with serve_asgi(login_app(both)) as url:
        statuses = [
            http.post(url + "/login", headers={"X-User-ID": f"user_{n}"}).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]  # the per-IP policy refuses
        refused = http.post(url + "/login", headers=USER)
    assert ratelimit_members(refused.headers) == {
        "login": {"q": 5, "w": 60, "r": 5, "t": 60},  # not consumed by the refused requests
        "login_ip": {"q": 3, "w": 60, "r": 0, "t": 60},
    }
    assert refused.json()["violated-policies"] == ["login_ip"]


def test_identity_defaults_to_the_client_address_and_path_params_come_from_fastapi() -> None:
    shared = limiter(login=Policy(2, 60), profile=Policy(1, 60))
    app = FastAPI()
    install(app)

    @app.get(
        "/users/{user_id}",
        dependencies=[Depends(RateLimit(shared, "profile", PathParam("user_id")))],
    )
    async def profile(user_id: int) -> dict[str, int]:
        return {"user": user_id}

    @app.post("/login", dependencies=[Depends(RateLimit(shared, "login"))])
    async def login() -> dict[str, bool]:
        return {"ok": True}

    with serve_asgi(app) as url, httpx.Client(base_url=url) as client:
        assert [client.get("/users/7").status_code for _ in range(2)] == [200, 429]
        assert client.get("/users/8").status_code == 200  # another parameter, another quota
        statuses = [
            client.post("/login", headers={"X-User-ID": str(n)}).status_code for n in range(3)
        ]
    assert statuses == [200, 200, 429]  # no identity given: the client address counts


def test_a_required_identity_that_is_missing_answers_400(http: httpx.Client) -> None:
    dependency = RateLimit(
        limiter(), "login", identity=Header("X-User-ID"), on_missing_identity="reject"
    )
    with serve_asgi(login_app(dependency)) as url:
        response = http.post(url + "/login")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "X-User-ID" in response.json()["detail"]


class BrokenLimiter:
    """A limiter whose every check fails with ``error``."""

    def __init__(self, error: Exception, policies: dict[str, Policy] | None = None) -> None:
        self.error = error
        self.policies = policies or POLICIES

    async def check_many(self, items: Sequence[Item], /) -> list[Decision]:
        raise self.error


def test_limiter_failures_never_become_a_500(
    caplog: pytest.LogCaptureFixture, http: httpx.Client
) -> None:
    def broken_identity(request: HttpRequest) -> str:
        raise ValueError("bug in an identity source")

    dependencies = [
        RateLimit(BrokenLimiter(RuntimeError("limiter bug")), "login"),
        RateLimit(limiter(), "login_ip", identity=broken_identity),
    ]
    with (
        caplog.at_level(logging.ERROR, "ratewall.http"),
        serve_asgi(login_app(*dependencies)) as url,
    ):
        responses = posts(http, url + "/login", 5)
    assert [response.status_code for response in responses] == [200] * 5
    assert "RateLimit" not in responses[0].headers
    messages = [record.getMessage() for record in caplog.records]
    assert any("raised RuntimeError" in message for message in messages), messages
    assert any("identity source" in message for message in messages), messages


def test_a_dead_store_answers_by_the_failure_mode(http: httpx.Client) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    closed = AsyncRateLimiter({"login": Policy(5, 60, failure_mode="closed")}, store=dead)
    opened = AsyncRateLimiter({"login": Policy(5, 60, failure_mode="open")}, store=dead)
    raising = AsyncRateLimiter({"login": Policy(5, 60)}, store=dead)  # "raise": passes over HTTP
    apps = [
        login_app(RateLimit(each, "login", identity=Header("X-User-ID")))
        for each in (closed, opened, raising)
    ]
    with serve_asgi(apps[0]) as a, serve_asgi(apps[1]) as b, serve_asgi(apps[2]) as c:
        unavailable = http.post(a + "/login", headers=USER)
        passed = [http.post(url + "/login", headers=USER).status_code for url in (b, c)]
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    assert unavailable.json()["type"].endswith("#temporary-reduced-capacity")
    assert passed == [200, 200]


def test_unknown_policies_and_conflicting_arguments_fail_at_import_time() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'logn'"):
        RateLimit(limiter(), "logn")
    with pytest.raises(ConfigError, match="cost 9 exceeds the capacity 5"):
        RateLimit(limiter(), "login", cost=9)
    with pytest.raises(TypeError, match="not both"):
        RateLimit(limiter(), "login", limits=[RouteLimit("login", ClientIP())])
    with pytest.raises(TypeError, match="name the policy"):
        RateLimit(limiter())


def test_router_dependencies_and_the_middleware_work_with_fastapi(http: httpx.Client) -> None:
    shared = limiter()
    app = FastAPI(dependencies=[Depends(RateLimit(shared, "login_ip"))])
    install(app)

    @app.get("/text", response_class=PlainTextResponse)
    async def text() -> str:
        return "hello"

    app.add_middleware(
        RateLimitMiddleware,
        limiter=shared,
        routes=[Route("/text", [RouteLimit("login", Header("X-User-ID"))], method="GET")],
    )
    with serve_asgi(app) as url:
        responses = [http.get(url + "/text", headers=USER) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].text == "hello"
    # The middleware's and the dependency's RateLimit fields combine into one list.
    assert list(ratelimit_members(responses[0].headers)) == ["login_ip", "login"]


def test_rate_limited_carries_the_engine_response(http: httpx.Client) -> None:
    error: Any = None
    dependency = RateLimit(limiter(), "login", identity=Header("X-User-ID"))
    app = login_app(dependency, handler=False)

    @app.exception_handler(RateLimited)
    async def keep(request: Any, exc: RateLimited) -> PlainTextResponse:
        nonlocal error
        error = exc
        return PlainTextResponse("slow down", status_code=exc.status_code, headers=exc.headers)

    with serve_asgi(app) as url:
        *_, refused = posts(http, url + "/login", 6, USER)
    assert (refused.status_code, refused.text) == (429, "slow down")
    assert isinstance(error, RateLimited)
    assert error.response.status == 429
    assert json.loads(error.response.body)["violated-policies"] == ["login"]


def test_header_options(http: httpx.Client) -> None:
    legacy = RateLimit(limiter(), "login", Header("X-User-ID"), legacy_headers=True)
    quiet = RateLimit(limiter(), "login", Header("X-User-ID"), headers_on_allowed=False)
    with serve_asgi(login_app(legacy)) as url, serve_asgi(login_app(quiet)) as other:
        with_legacy = http.post(url + "/login", headers=USER)
        without = posts(http, other + "/login", 6, USER)
    assert with_legacy.headers["x-ratelimit-limit"] == "5"
    assert with_legacy.headers["x-ratelimit-remaining"] == "4"
    assert with_legacy.headers["x-ratelimit-reset"] == "60"
    assert "ratelimit" not in without[0].headers
    assert ratelimit_members(without[5].headers)["login"]["r"] == 0  # refusals always carry them


def test_a_sync_limiter_is_refused_at_import_time() -> None:
    with pytest.raises(TypeError, match="AsyncRateLimiter"):
        RateLimit(RateLimiter(POLICIES), "login")  # type: ignore[arg-type]


async def test_the_client_address_dependency_answers_like_the_middleware() -> None:
    # A limit on the client address takes the middleware's short way (ratewall.http.shortcut)
    # for allowed requests; refusals take the general path: both must answer as it does.
    await assert_answers_like_the_middleware("memory://")


@pytest.mark.redis
async def test_the_client_address_dependency_on_redis_answers_like_the_middleware(
    redis_url: str,
) -> None:
    await assert_answers_like_the_middleware(redis_url)


async def assert_answers_like_the_middleware(store: str) -> None:
    """The dependency and the middleware, each with its own limiter on ``store``, called in
    process (the limiters live on the test's event loop and are closed with it)."""
    clock, middleware_clock = FakeClock(), FakeClock()
    policies = {"login_ip": Policy(3, 60)}
    async with (
        AsyncRateLimiter(
            policies, store=store, key_prefix="dep", clock=clock, timeout=STORE_TIMEOUT
        ) as shared,
        AsyncRateLimiter(
            policies, store=store, key_prefix="mw", clock=middleware_clock, timeout=STORE_TIMEOUT
        ) as other,
    ):
        middleware = RateLimitMiddleware(
            asgi_app(), other, [Route("/login", [RouteLimit("login_ip", ClientIP())])]
        )
        ours: list[httpx.Response] = []
        theirs: list[httpx.Response] = []
        for app, into in ((login_app(RateLimit(shared, "login_ip")), ours), (middleware, theirs)):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                into.extend([await client.post("/login") for _ in range(4)])
    assert [r.status_code for r in ours] == [200, 200, 200, 429]
    assert [r.json() for r in ours[:3]] == [{"ok": True}] * 3
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.headers.get("ratelimit-policy") == expected.headers.get("ratelimit-policy")
        if store == "memory://":  # Redis's own clock moves between the two apps' requests
            assert mine.headers.get("ratelimit") == expected.headers.get("ratelimit")
    assert ours[3].status_code == theirs[3].status_code == 429
    assert ours[3].headers["retry-after"] == theirs[3].headers["retry-after"]
    assert ours[3].content == theirs[3].content


def test_two_client_address_dependencies_combine_their_fields(http: httpx.Client) -> None:
    shared = limiter()
    app = login_app(RateLimit(shared, "login_ip"), RateLimit(shared, "login"))
    with serve_asgi(app) as url:
        response = http.post(url + "/login")
    assert ratelimit_members(response.headers) == {
        "login_ip": {"q": 3, "w": 60, "r": 2, "t": 60},
        "login": {"q": 5, "w": 60, "r": 4, "t": 60},
    }


def test_a_failing_store_under_the_client_address_dependency(http: httpx.Client) -> None:
    from ratewall.testing import FailingStore

    store = FailingStore()
    closed = AsyncRateLimiter({"login": Policy(5, 60, failure_mode="closed")}, store=store)
    opened = AsyncRateLimiter({"login": Policy(5, 60, failure_mode="open")}, store=store)
    with (
        serve_asgi(login_app(RateLimit(closed, "login"))) as a,
        serve_asgi(login_app(RateLimit(opened, "login"))) as b,
    ):
        unavailable = http.post(a + "/login")
        passed = http.post(b + "/login")
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    assert passed.status_code == 200
    assert store.calls == 2
