"""The WSGI middleware: the same core cases through werkzeug's test client and Flask."""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import flask
import pytest
from werkzeug.test import Client

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter, StoreError
from ratewall.http import (
    ClientIP,
    Header,
    HttpEngine,
    HttpRequest,
    Route,
    RouteLimit,
    User,
    WSGIRateLimitMiddleware,
)
from ratewall.http.steps import AskLimiter, Respond
from ratewall.testing import FailingStore, FakeClock

from ._support import (
    BrokenHeaders,
    BrokenStart,
    Calls,
    ratelimit_members,
    wsgi_app,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PEER = "203.0.113.7"
POLICIES = {"login": Policy(5, 60), "login_ip": Policy(3, 60)}
SEED = [Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")]
MULTI = [
    Route(
        "/login",
        [RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())],
        method="POST",
    )
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(POLICIES, clock=clock)


def login(http: Client, user: str | None = "user_123", **headers: str) -> Any:
    if user is not None:
        headers["X-User-ID"] = user
    return http.post("/login", headers=headers, environ_base={"REMOTE_ADDR": PEER})


def spent(limiter: RateLimiter, identity: str, policy: str) -> int:
    decision = limiter.peek(identity, policy)
    return decision.limit - decision.remaining - 1


def test_seed_flow(limiter: RateLimiter, clock: FakeClock) -> None:
    calls = Calls()
    http = Client(WSGIRateLimitMiddleware(wsgi_app(calls), limiter, SEED))
    for step in [0, 10, 10, 5, 5]:
        clock.advance(step)
        response = login(http)
        assert response.status_code == 200
        assert response.get_data() == b"ok"
        assert response.headers["X-App"] == "yes"
    assert ratelimit_members(response.headers) == {"login": {"q": 5, "w": 60, "r": 0, "t": 30}}

    clock.advance(15)
    response = login(http)
    assert response.status_code == 429
    assert response.status == "429 Too Many Requests"
    assert response.headers["Retry-After"] == "15"
    assert response.headers["RateLimit-Policy"] == '"login";q=5;w=60'
    assert response.headers["RateLimit"] == '"login";r=0;t=15'
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.get_data())["violated-policies"] == ["login"]

    clock.advance(16)
    assert login(http).status_code == 200
    assert calls.count == 6


def test_any_refusal_refuses_and_consumes_nothing_else(limiter: RateLimiter) -> None:
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, MULTI))
    assert [login(http, user).status_code for user in ("a", "b", "c", "d")] == [200] * 3 + [429]
    assert spent(limiter, "d", "login") == 0


def test_odd_identities_never_cause_a_5xx(limiter: RateLimiter) -> None:
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, MULTI))
    for headers in (
        {},
        {"X-User-ID": ""},
        {"X-User-ID": "ü" * 50_000},
        {"X-Forwarded-For": "nonsense, , [::1"},
    ):
        response = http.post("/login", headers=headers, environ_base={"REMOTE_ADDR": PEER})
        assert response.status_code in (200, 429)


def test_missing_remote_addr_skips_the_ip_limit(limiter: RateLimiter) -> None:
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, MULTI))
    for _ in range(5):
        response = http.post("/login", headers={"X-User-ID": "u"}, environ_base={"REMOTE_ADDR": ""})
        assert response.status_code == 200
    assert response.headers["RateLimit"].startswith('"login";r=0')


def test_remote_user_is_the_user(limiter: RateLimiter) -> None:
    routes = [Route("/login", [RouteLimit("login", User())])]
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, routes))
    http.post("/login", environ_base={"REMOTE_ADDR": PEER, "REMOTE_USER": "alice"})
    assert spent(limiter, "alice", "login") == 1
    assert spent(limiter, PEER, "login") == 0


def test_exc_info_reaches_the_server(limiter: RateLimiter) -> None:
    received: list[tuple[Any, ...]] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            raise ValueError("late error")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b""]

    def start_response(*args: Any) -> Any:
        received.append(args)
        return lambda data: None

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "REMOTE_ADDR": PEER}
    list(WSGIRateLimitMiddleware(app, limiter, MULTI)(environ, start_response))
    [(status, headers, exc_info)] = received
    assert status == "500 Internal Server Error"
    assert exc_info[0] is ValueError
    assert any(name == "RateLimit" for name, _ in headers)


# -- failure injection ---------------------------------------------------------------------


class ExplodingSource:
    def __call__(self, request: HttpRequest) -> str | None:
        raise RuntimeError("identity source bug")


class RaisingLimiter(RateLimiter):
    error: Exception = RuntimeError("limiter bug")

    def check_many(self, items: Sequence[Any]) -> list[Decision]:
        raise self.error


class UnsendableHeaders(HttpEngine):
    def response_headers(
        self, check: AskLimiter, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        return [("RateLimit", "\u2603")]


class UnsendableRefusal(HttpEngine):
    def too_many_requests(self, check: AskLimiter, decisions: Sequence[Decision]) -> Respond:
        response = super().too_many_requests(check, decisions)
        return Respond(429, (*response.headers, ("X-Note", "a\nb")), response.body)


def test_identity_source_raising(limiter: RateLimiter, caplog: pytest.LogCaptureFixture) -> None:
    routes = [Route("/login", [RouteLimit("login", ExplodingSource())])]
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, routes))
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        assert {login(http).status_code for _ in range(8)} == {200}
    assert "identity source" in caplog.text


@pytest.mark.parametrize(
    "error", [RuntimeError("bug"), StoreError("down"), OSError("io"), MemoryError()]
)
def test_limiter_raising_lets_requests_through(error: Exception, clock: FakeClock) -> None:
    limiter = RaisingLimiter(POLICIES, clock=clock)
    limiter.error = error
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, MULTI))
    assert {login(http).status_code for _ in range(3)} == {200}


@pytest.mark.parametrize(
    "engine", [BrokenHeaders, UnsendableHeaders, BrokenStart], ids=lambda e: e.__name__
)
def test_broken_engine_hooks_never_break_allowed_requests(
    engine: type[HttpEngine], limiter: RateLimiter
) -> None:
    middleware = type("Middleware", (WSGIRateLimitMiddleware,), {"engine_class": engine})
    response = login(Client(middleware(wsgi_app(), limiter, SEED)))
    assert response.status_code == 200
    assert "RateLimit" not in response.headers


@pytest.mark.parametrize("engine", [BrokenHeaders, UnsendableRefusal], ids=lambda e: e.__name__)
def test_broken_refusal_hooks_still_refuse(
    engine: type[HttpEngine], limiter: RateLimiter, clock: FakeClock
) -> None:
    middleware = type("Middleware", (WSGIRateLimitMiddleware,), {"engine_class": engine})
    http = Client(middleware(wsgi_app(), limiter, SEED))
    for _ in range(5):
        login(http)
    clock.advance(45)
    response = login(http)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "15"
    assert "X-Note" not in response.headers


@pytest.mark.parametrize(("failure_mode", "status"), [("closed", 503), ("open", 200)])
def test_store_down(failure_mode: str, status: int, clock: FakeClock) -> None:
    limiter = RateLimiter(
        {"login": Policy(5, 60, failure_mode=failure_mode)}, FailingStore(), clock=clock
    )
    http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, SEED))
    for _ in range(5):
        response = login(http)
        assert response.status_code == status
        if status == 503:
            assert response.status == "503 Service Unavailable"
            assert int(response.headers["Retry-After"]) >= 1


# -- Flask -----------------------------------------------------------------------------------


def test_flask_app(limiter: RateLimiter) -> None:
    app = flask.Flask(__name__)

    @app.post("/login")
    def login_view() -> dict[str, str]:
        return {"user": flask.request.headers.get("X-User-ID", "")}

    @app.get("/health")
    def health() -> str:
        return "ok"

    app.wsgi_app = WSGIRateLimitMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, limiter, [Route("/health", []), *SEED], legacy_headers=True
    )
    http = app.test_client()
    responses = [
        http.post("/login", headers={"X-User-ID": "alice"}, environ_base={"REMOTE_ADDR": PEER})
        for _ in range(6)
    ]
    assert [response.status_code for response in responses] == [200] * 5 + [429]
    assert responses[0].get_json() == {"user": "alice"}
    assert responses[0].headers["X-RateLimit-Remaining"] == "4"
    assert responses[5].headers["Retry-After"] == "60"
    assert responses[5].get_json()["title"] == "Too Many Requests"
    assert "RateLimit" not in http.get("/health").headers


def test_the_asgi_and_wsgi_middleware_take_the_same_arguments() -> None:
    from ratewall.http import RateLimitMiddleware

    for name in ("__init__", "from_config"):
        asgi = inspect.signature(getattr(RateLimitMiddleware, name))
        wsgi = inspect.signature(getattr(WSGIRateLimitMiddleware, name))
        assert [(p.name, p.kind, p.default) for p in asgi.parameters.values()] == [
            (p.name, p.kind, p.default) for p in wsgi.parameters.values()
        ]


def test_an_asyncio_limiter_is_refused_at_construction() -> None:
    # Its check_many returns a coroutine: every request would pass, with one logged error.
    limiter = AsyncRateLimiter(POLICIES)
    with pytest.raises(TypeError, match="give it a RateLimiter"):
        WSGIRateLimitMiddleware(wsgi_app(Calls()), limiter, SEED)  # type: ignore[arg-type]
