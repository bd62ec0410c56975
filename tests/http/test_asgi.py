"""The ASGI middleware around raw ASGI and Starlette apps, driven through httpx."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route as StarletteRoute

from ratewall import AsyncRateLimiter, ConfigError, Decision, Policy, RateLimiter, StoreError
from ratewall.config import load_config
from ratewall.http import (
    ClientIP,
    Header,
    HttpEngine,
    HttpRequest,
    PathParam,
    RateLimitMiddleware,
    Route,
    RouteLimit,
    User,
)
from ratewall.http.steps import AskLimiter, Respond
from ratewall.testing import FailingStore, FakeClock

from ._support import (
    BrokenHeaders,
    BrokenStart,
    Calls,
    asgi_app,
    ratelimit_members,
)

PEER = ("203.0.113.7", 50000)
POLICIES = {"login": Policy(5, 60), "login_ip": Policy(3, 60)}
SEED = [Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")]
MULTI = [
    Route(
        "/login",
        [RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())],
        method="POST",
    )
]


async def spent(limiter: AsyncRateLimiter, identity: str, policy: str) -> int:
    """Units of ``policy`` that ``identity`` has consumed (``peek`` reports what would remain
    after one more request)."""
    decision = await limiter.peek(identity, policy)
    return decision.limit - decision.remaining - 1


def client(app: Any, peer: tuple[str, int] = PEER) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def login(http: httpx.AsyncClient, user: str | None = "user_123") -> httpx.Response:
    headers = {"X-User-ID": user} if user is not None else {}
    return await http.post("/login", headers=headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> AsyncRateLimiter:
    return AsyncRateLimiter(POLICIES, clock=clock)


# -- the seed flow ---------------------------------------------------------------------------


async def test_seed_flow(limiter: AsyncRateLimiter, clock: FakeClock) -> None:
    calls = Calls()
    app = RateLimitMiddleware(asgi_app(calls), limiter, SEED)
    async with client(app) as http:
        for step in [0, 10, 10, 5, 5]:  # 12:00:00 .. 12:00:30
            clock.advance(step)
            response = await login(http)
            assert response.status_code == 200
            assert response.text == "ok"
            assert response.headers["x-app"] == "yes"  # the app's own headers stay
            assert "retry-after" not in response.headers
        assert ratelimit_members(response.headers) == {"login": {"q": 5, "w": 60, "r": 0, "t": 30}}

        clock.advance(15)  # 12:00:45
        response = await login(http)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "15"
        assert response.headers["ratelimit-policy"] == '"login";q=5;w=60'
        assert response.headers["ratelimit"] == '"login";r=0;t=15'
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 429
        assert problem["violated-policies"] == ["login"]

        clock.advance(5)  # 12:00:50
        response = await login(http)
        assert (response.status_code, response.headers["retry-after"]) == (429, "10")

        clock.advance(11)  # 12:01:01
        response = await login(http)
        assert response.status_code == 200
        assert ratelimit_members(response.headers)["login"]["r"] == 4
    assert calls.count == 6  # the two refusals never reached the app


async def test_other_routes_and_identities_are_untouched(limiter: AsyncRateLimiter) -> None:
    calls = Calls()
    app = RateLimitMiddleware(asgi_app(calls), limiter, SEED)
    async with client(app) as http:
        for _ in range(6):
            await login(http)
        other = await http.get("/login")
        assert other.status_code == 200
        assert "ratelimit" not in other.headers
        assert (await login(http, "someone_else")).status_code == 200


async def test_headers_can_be_legacy_or_absent_on_allowed(limiter: AsyncRateLimiter) -> None:
    app = RateLimitMiddleware(asgi_app(), limiter, SEED, legacy_headers=True)
    async with client(app) as http:
        response = await login(http)
    assert response.headers["x-ratelimit-limit"] == "5"
    assert response.headers["x-ratelimit-remaining"] == "4"
    quiet = RateLimitMiddleware(asgi_app(), limiter, SEED, headers_on_allowed=False)
    async with client(quiet) as http:
        response = await login(http, "other")
    assert "ratelimit" not in response.headers


# -- several policies ------------------------------------------------------------------------


async def test_any_refusal_refuses_and_consumes_nothing_else(
    limiter: AsyncRateLimiter,
) -> None:
    app = RateLimitMiddleware(asgi_app(), limiter, MULTI)
    async with client(app) as http:
        for user in ("alice", "bob", "carol"):
            assert (await login(http, user)).status_code == 200
        # The per-IP quota (3) is spent: dave is refused although his own quota is whole ...
        response = await login(http, "dave")
        assert response.status_code == 429
        assert response.json()["violated-policies"] == ["login_ip"]
        members = ratelimit_members(response.headers)
        assert members["login_ip"]["r"] == 0
        assert members["login"]["r"] == 5  # ... and reported as untouched
    # ... and really untouched in the store.
    assert await spent(limiter, "dave", "login") == 0


async def test_a_user_refusal_does_not_spend_the_ip_quota(limiter: AsyncRateLimiter) -> None:
    routes = [
        Route(
            "/login",
            [RouteLimit("login_ip", Header("X-User-ID")), RouteLimit("login", ClientIP())],
            method="POST",
        )
    ]
    app = RateLimitMiddleware(asgi_app(), limiter, routes)
    async with client(app) as http:
        statuses = [(await login(http, "alice")).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert await spent(limiter, PEER[0], "login") == 3


# -- non-HTTP scopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        {"type": "websocket", "path": "/login", "headers": [], "client": PEER},
    ],
)
async def test_non_http_scopes_pass_straight_through(
    scope: dict[str, Any], limiter: AsyncRateLimiter
) -> None:
    seen: list[tuple[object, object, object]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    everything = [Route("*", [RouteLimit("login", ClientIP())])]
    await RateLimitMiddleware(app, limiter, everything)(scope, receive, send)
    assert len(seen) == 1
    assert seen[0][0] is scope
    # The lifespan scope's receive is wrapped to ping the store at startup.
    assert (seen[0][1] is receive) == (scope.get("type") != "lifespan")
    assert seen[0][2] is send


async def test_application_errors_propagate_unchanged(limiter: AsyncRateLimiter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("the application's own bug")

    async with client(RateLimitMiddleware(app, limiter, SEED)) as http:
        with pytest.raises(LookupError, match="own bug"):
            await login(http)


# -- odd input never becomes a 5xx ---------------------------------------------------------


ODD_HEADERS = [
    {},
    {"X-User-ID": ""},
    {"X-User-ID": "   "},
    {"X-User-ID": "u" * 60_000},
    {"X-User-ID": b"\xff\xfe\x80"},
    {"X-User-ID": "{user}:*\\\"'~"},
    {"X-Forwarded-For": "garbage, [::1, ::ffff:1.2.3.4"},
    {"X-Forwarded-For": ",,,"},
    {"X-Forwarded-For": "1.1.1.1, " * 5_000},
    {"Forwarded": 'for="[' + "1" * 10_000},
    {"Forwarded": 'for=";;;,,,"=\\'},
    {"Forwarded": "for=_hidden, for=unknown, by=x"},
]


@pytest.mark.parametrize("headers", ODD_HEADERS)
@pytest.mark.parametrize("forwarded", ["x-forwarded-for", "forwarded"])
async def test_odd_identities_never_cause_a_5xx(
    headers: dict[str, Any], forwarded: Any, limiter: AsyncRateLimiter
) -> None:
    client_ip = ClientIP(trusted_proxies=["203.0.113.0/24"], header=forwarded)
    routes = [
        Route(
            "/login",
            [RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", client_ip)],
            method="POST",
        )
    ]
    app = RateLimitMiddleware(asgi_app(), limiter, routes, client_ip=client_ip)
    async with client(app) as http:
        statuses = [(await http.post("/login", headers=headers)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # the per-IP limit (3) still holds


async def test_repeated_identity_headers_fall_back_to_the_address(
    limiter: AsyncRateLimiter,
) -> None:
    app = RateLimitMiddleware(asgi_app(), limiter, SEED)
    async with client(app) as http:
        response = await http.post(
            "/login", headers=[("X-User-ID", "victim"), ("X-User-ID", "attacker")]
        )
    assert response.status_code == 200
    assert await spent(limiter, "victim", "login") == 0
    assert await spent(limiter, PEER[0], "login") == 1


async def test_reject_answers_400_when_the_identity_is_missing(
    limiter: AsyncRateLimiter,
) -> None:
    routes = [
        Route(
            "/login",
            [RouteLimit("login", Header("X-User-ID"), on_missing_identity="reject")],
            method="POST",
        )
    ]
    calls = Calls()
    async with client(RateLimitMiddleware(asgi_app(calls), limiter, routes)) as http:
        response = await login(http, None)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert "X-User-ID" in response.json()["detail"]
        assert (await login(http)).status_code == 200
    assert calls.count == 1


# -- failure injection: every hook -----------------------------------------------------------


class ExplodingSource:
    def __call__(self, request: HttpRequest) -> str | None:
        raise RuntimeError("identity source bug")


async def test_identity_source_raising(
    limiter: AsyncRateLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    routes = [Route("/login", [RouteLimit("login", ExplodingSource())], method="POST")]
    async with client(RateLimitMiddleware(asgi_app(), limiter, routes)) as http:
        with caplog.at_level(logging.ERROR, logger="ratewall"):
            responses = [await login(http) for _ in range(10)]
    assert {response.status_code for response in responses} == {200}
    assert "identity source" in caplog.text


class RaisingLimiter(AsyncRateLimiter):
    """A real limiter whose check_many raises what it is told to."""

    error: BaseException = RuntimeError("limiter bug")

    async def check_many(self, items: Sequence[Any]) -> list[Decision]:
        raise self.error


class GarbageLimiter(AsyncRateLimiter):
    async def check_many(self, items: Sequence[Any]) -> list[Decision]:
        return ["yes"]  # type: ignore[list-item]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("bug"),
        StoreError("store down"),
        ConnectionResetError("reset"),
        TimeoutError(),
        KeyError("policy"),
        ValueError("cost"),
        TypeError("identity"),
        RecursionError(),
        ZeroDivisionError(),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_limiter_raising_anything_lets_requests_through(
    error: Exception, clock: FakeClock
) -> None:
    limiter = RaisingLimiter(POLICIES, clock=clock)
    limiter.error = error
    calls = Calls()
    async with client(RateLimitMiddleware(asgi_app(calls), limiter, MULTI)) as http:
        for _ in range(3):
            response = await login(http)
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
    assert calls.count == 3


async def test_limiter_raising_fails_closed_where_a_policy_says_so(clock: FakeClock) -> None:
    limiter = RaisingLimiter({"login": Policy(5, 60, failure_mode="closed")}, clock=clock)
    limiter.error = StoreError("store down")
    async with client(RateLimitMiddleware(asgi_app(), limiter, SEED)) as http:
        response = await login(http)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_limiter_returning_garbage(clock: FakeClock) -> None:
    limiter = GarbageLimiter(POLICIES, clock=clock)
    async with client(RateLimitMiddleware(asgi_app(), limiter, SEED)) as http:
        assert (await login(http)).status_code == 200


class UnsendableHeaders(HttpEngine):
    def response_headers(
        self, check: AskLimiter, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        return [("RateLimit", "\u2603"), ("X-Evil", "a\r\nSet-Cookie: x=1")]


class UnsendableRefusal(HttpEngine):
    def too_many_requests(self, check: AskLimiter, decisions: Sequence[Decision]) -> Respond:
        response = super().too_many_requests(check, decisions)
        return Respond(429, (*response.headers, ("X-Note", "\u2603")), response.body)


class BrokenFinish(HttpEngine):
    def finish(self, check: AskLimiter, decisions: Sequence[Decision]) -> Any:
        raise RuntimeError("finish bug")


class WrongOutcome(HttpEngine):
    def start(self, request: HttpRequest) -> Any:
        return "pass, please"


def middleware_with(engine: type[HttpEngine]) -> type[RateLimitMiddleware]:
    return type("Middleware", (RateLimitMiddleware,), {"engine_class": engine})


@pytest.mark.parametrize(
    "engine",
    [BrokenHeaders, UnsendableHeaders, BrokenStart, BrokenFinish, WrongOutcome],
    ids=lambda engine: engine.__name__,
)
async def test_broken_engine_hooks_never_break_allowed_requests(
    engine: type[HttpEngine], limiter: AsyncRateLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    app = middleware_with(engine)(asgi_app(), limiter, SEED)
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        async with client(app) as http:
            response = await login(http)
    assert response.status_code == 200
    assert response.text == "ok"
    assert "ratelimit" not in response.headers
    assert "set-cookie" not in response.headers
    assert caplog.records


@pytest.mark.parametrize("engine", [BrokenHeaders, UnsendableRefusal])
async def test_broken_refusal_hooks_still_refuse(
    engine: type[HttpEngine], limiter: AsyncRateLimiter, clock: FakeClock
) -> None:
    calls = Calls()
    app = middleware_with(engine)(asgi_app(calls), limiter, SEED)
    async with client(app) as http:
        for _ in range(5):
            await login(http)
        clock.advance(45)
        response = await login(http)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "15"
    assert calls.count == 5


async def test_unbuildable_request_view_passes(limiter: AsyncRateLimiter) -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/login", "headers": [(None, None)]}
    await RateLimitMiddleware(asgi_app(), limiter, SEED)(scope, receive, send)
    assert sent[0]["status"] == 200


async def test_an_app_sending_odd_start_messages_is_left_alone(
    limiter: AsyncRateLimiter,
) -> None:
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": None})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/login",
        "headers": [(b"x-user-id", b"u")],
        "client": PEER,
    }
    await RateLimitMiddleware(app, limiter, SEED)(scope, receive, send)
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": None}


# -- the store down ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure_mode", "status"), [("closed", 503), ("open", 200), ("raise", 200)]
)
async def test_store_down(
    failure_mode: str, status: int, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    policies = {"login": Policy(5, 60, failure_mode=failure_mode)}
    limiter = AsyncRateLimiter(policies, FailingStore(), clock=clock)
    calls = Calls()
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        async with client(RateLimitMiddleware(asgi_app(calls), limiter, SEED)) as http:
            # More requests than the circuit breaker's threshold: before and after it opens.
            responses = [await login(http) for _ in range(6)]
    assert [response.status_code for response in responses] == [status] * 6
    if status == 503:
        for response in responses:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["type"].endswith("#temporary-reduced-capacity")
            assert "ratelimit" not in response.headers
        assert calls.count == 0
    else:
        assert calls.count == 6
    assert "store" in caplog.text


# -- Starlette ---------------------------------------------------------------------------------


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("authorization", "").removeprefix("User ").strip()
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


async def test_starlette_app(limiter: AsyncRateLimiter, clock: FakeClock) -> None:
    async def login_endpoint(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"welcome": request.user.display_name})

    async def profile(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["user_id"])

    routes = [
        Route("/login", [RouteLimit("login", User())], method="POST"),
        Route("/users/{user_id}", [RouteLimit("login_ip", PathParam("user_id"))]),
    ]
    app = Starlette(
        routes=[
            StarletteRoute("/login", login_endpoint, methods=["POST"]),
            StarletteRoute("/users/{user_id}", profile),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(RateLimitMiddleware, limiter=limiter, routes=routes),
        ],
    )
    async with client(app) as http:
        auth = {"Authorization": "User alice"}
        statuses = [(await http.post("/login", headers=auth)).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        anonymous = await http.post("/login")  # no user: falls back to the client address
        assert anonymous.status_code == 200
        assert anonymous.json() == {"welcome": ""}
        assert await spent(limiter, PEER[0], "login") == 1

        for _ in range(3):
            response = await http.get("/users/42")
            assert response.text == "42"
        refused = await http.get("/users/42")
        assert refused.status_code == 429
        assert json.loads(refused.text)["violated-policies"] == ["login_ip"]
        assert (await http.get("/users/43")).status_code == 200
        assert (await http.head("/users/42")).status_code == 429


async def test_starlette_add_middleware(limiter: AsyncRateLimiter) -> None:
    async def endpoint(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[StarletteRoute("/login", endpoint, methods=["POST"])])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, routes=SEED)
    async with client(app) as http:
        response = await login(http)
    assert response.status_code == 200
    assert ratelimit_members(response.headers)["login"]["r"] == 4


# -- from_config -------------------------------------------------------------------------------


async def test_from_config_with_routes_in_code(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"login": {"limit": 2, "window": 60}}))
    app = RateLimitMiddleware.from_config(asgi_app(), path, routes=SEED, clock=clock)
    async with client(app) as http:
        assert [(await login(http)).status_code for _ in range(3)] == [200, 200, 429]
    await app.limiter.aclose()  # type: ignore[attr-defined]


async def test_from_config_without_routes_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"login": {"limit": 2, "window": 60}}))
    with pytest.raises(ConfigError, match="has no routes"):
        RateLimitMiddleware.from_config(asgi_app(), path)


async def test_from_config_with_a_routes_section(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "limits.json"
    path.write_text(
        json.dumps(
            {
                "policies": {"login": {"limit": 2, "window": 60}},
                "routes": [
                    {"match": "POST /login", "identity": "header:X-User-ID", "policies": ["login"]}
                ],
            }
        )
    )
    # The routes section is part of the config format: loading it must simply work.
    assert load_config(path).routes is not None
    app = RateLimitMiddleware.from_config(asgi_app(), path, clock=clock)
    async with client(app) as http:
        assert [(await login(http)).status_code for _ in range(3)] == [200, 200, 429]


class ManyOnly(AsyncRateLimiter):
    """A real limiter that the middleware must ask through ``check_many``."""

    # Counted per limiter (the += writes an instance attribute): a count kept on the class
    # would carry over from one test to the next.
    asked = 0

    async def check_many(self, items: Sequence[Any]) -> list[Decision]:
        self.asked += 1
        return await super().check_many(items)


async def test_one_limit_decided_by_check_answers_as_check_many_would() -> None:
    """A one-limit route on a plain limiter takes ``check``; the responses, headers and all,
    must be those of ``check_many``, allowed and refused alike."""
    exchanges: list[list[tuple[int, str | None, str | None, str | None]]] = []
    many_only: ManyOnly | None = None
    for kind in (AsyncRateLimiter, ManyOnly):
        clock = FakeClock()
        limiter = kind(POLICIES, clock=clock)
        if isinstance(limiter, ManyOnly):
            many_only = limiter
        async with client(RateLimitMiddleware(asgi_app(), limiter, SEED)) as http:
            seen = []
            for _ in range(7):
                response = await login(http)
                clock.advance(2.5)
                seen.append(
                    (
                        response.status_code,
                        response.headers.get("RateLimit-Policy"),
                        response.headers.get("RateLimit"),
                        response.headers.get("Retry-After"),
                    )
                )
            exchanges.append(seen)
    assert many_only is not None
    assert many_only.asked == 7
    assert exchanges[0] == exchanges[1]
    assert [status for status, *_ in exchanges[0]] == [200] * 5 + [429] * 2


def test_a_synchronous_limiter_is_refused_at_construction() -> None:
    # It would be asked without an await: every request would pass, with one logged error.
    limiter = RateLimiter(POLICIES)
    with pytest.raises(TypeError, match="give it an AsyncRateLimiter"):
        RateLimitMiddleware(asgi_app(Calls()), limiter, SEED)  # type: ignore[arg-type]
    limiter.close()


@pytest.mark.parametrize("other", ["closed", "raise"])
async def test_a_shadow_policy_failing_closed_never_answers_503(other: str) -> None:
    # The store is down. "watch" is under shadow and fails closed: it must not refuse.
    # Beside it, "login" fails open (decisions) or raises (the limiter raises): the route
    # then passes either way, marked degraded.
    policies = {
        "watch": Policy(1, 60, shadow=True, failure_mode="closed"),
        "login": Policy(5, 60, failure_mode="open" if other == "closed" else "raise"),
    }
    route = Route(
        "/login",
        [RouteLimit("watch", Header("X-User-ID")), RouteLimit("login", Header("X-User-ID"))],
        method="POST",
    )
    calls = Calls()
    limiter = AsyncRateLimiter(policies, FailingStore())
    async with client(RateLimitMiddleware(asgi_app(calls), limiter, [route])) as http:
        responses = [await login(http) for _ in range(3)]
    assert [response.status_code for response in responses] == [200] * 3
    assert all("ratelimit-degraded" in response.headers for response in responses)
    assert calls.count == 3
