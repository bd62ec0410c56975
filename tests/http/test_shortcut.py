"""The ASGI middleware's shortcut for the usual request (engine.Shortcut) answers exactly as
the general path does: every test runs the same requests through a middleware that takes it
and one that cannot, and compares everything the client and the application see."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.http import (
    ClientIP,
    Header,
    HttpEngine,
    HttpRequest,
    PathParam,
    RateLimitMiddleware,
    Route,
    RouteLimit,
    RouteTable,
    User,
)
from ratewall.http.shortcut import Shortcut, checks_singly
from ratewall.http.steps import AskLimiter, Respond, Step
from ratewall.testing import FailingStore, FakeClock

from ._support import asgi_app

ALGORITHMS = ["fixed_window", "sliding_window", "sliding_log", "token_bucket", "gcra"]
PEER = ("203.0.113.7", 50000)
Exchange = tuple[list[Any], int]
Scenario = list[tuple[float, dict[str, Any]]]


class CountingClock(FakeClock):
    """Counts its readings: the limiter reads the clock once per decision, so equal counts
    mean that the limiter was asked as often both ways."""

    readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return super().__call__()


class General(HttpEngine):
    """The default engine, without the shortcut (shortcut_for() leaves an engine whose start
    is overridden to the general path): what the shortcut must equal."""

    def start(self, request: HttpRequest) -> Step:
        return super().start(request)


class Refusing(HttpEngine):
    """Overrides only how refusals look: the shortcut still serves allowed requests."""

    def too_many_requests(self, check: AskLimiter, decisions: Sequence[Decision]) -> Respond:
        return Respond(429, (("X-Refused-By", check.limits[0].policy),), b"slow down")


class OwnHeaders(HttpEngine):
    def response_headers(
        self, check: AskLimiter, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        return [("X-Left", str(decisions[0].remaining))]


class LoggingStart(HttpEngine):
    started = 0

    def start(self, request: HttpRequest) -> Any:
        LoggingStart.started += 1
        return super().start(request)


def scope_for(
    path: str = "/",
    *,
    method: str = "GET",
    client: Any = PEER,
    headers: Sequence[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": list(headers),
        "client": client,
        **extra,
    }


class Served:
    """An application answering 200 ``ok`` that counts the requests it served."""

    def __init__(self) -> None:
        self.count = 0
        self.inner = asgi_app()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        await self.inner(scope, receive, send)


async def exchange(app: RateLimitMiddleware, served: Served, scope: dict[str, Any]) -> Exchange:
    """The messages the client received, and whether the application served the request."""
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    before = served.count
    await app(scope, receive, send)
    return sent, served.count - before


def middleware(engine: type[HttpEngine]) -> type[RateLimitMiddleware]:
    return type("Middleware", (RateLimitMiddleware,), {"engine_class": engine})


async def both_ways(
    make_limiter: Callable[[FakeClock], AsyncRateLimiter],
    routes: Sequence[Route],
    scenario: Scenario,
    *,
    engine: type[HttpEngine] = HttpEngine,
    shortcut: bool = True,
    options: dict[str, Any] | None = None,
) -> list[Exchange]:
    """Run ``scenario`` (seconds to advance, scope) through a middleware with ``engine`` and
    ``options``, which has a shortcut if ``shortcut``, and through one whose engine has
    none; the exchanges and the limiter's work must be equal. Returns the exchanges."""
    results: list[tuple[list[Exchange], int]] = []
    for kind in (engine, type("General", (General, engine), {})):
        clock = CountingClock()
        served = Served()
        app = middleware(kind)(served, make_limiter(clock), routes, **(options or {}))
        assert (app._shortcut is not None) == (shortcut and kind is engine)
        seen = []
        for step, scope in scenario:
            clock.advance(step)
            seen.append(await exchange(app, served, scope))
        results.append((seen, clock.readings))
    assert results[0] == results[1]
    return results[0][0]


def limiter_of(policies: dict[str, Policy]) -> Callable[[FakeClock], AsyncRateLimiter]:
    return lambda clock: AsyncRateLimiter(policies, clock=clock)


def statuses(exchanges: list[Exchange]) -> list[int]:
    return [sent[0]["status"] for sent, _ in exchanges]


def headers_of(exchange: Exchange) -> dict[bytes, bytes]:
    return dict(exchange[0][0]["headers"])


EVERYTHING = [Route("*", [RouteLimit("api", ClientIP())])]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("cost", [1, 2])
@pytest.mark.parametrize("fields_on_allowed", [True, False])
async def test_allowed_and_refused_alike(
    algorithm: str, cost: int, fields_on_allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = [Route("*", [RouteLimit("api", ClientIP(), cost=cost)])]
    scenario: Scenario = [(step, scope_for()) for step in [0, 0.4, 0.4, 1.7, 0, 0, 0, 3.3, 0]]
    scenario += [(0.1, scope_for(client=("198.51.100.1", 1))), (59.5, scope_for())]
    built = [0]
    original = HttpRequest.from_asgi_scope.__func__  # type: ignore[attr-defined]

    def counting(cls: type[HttpRequest], scope: Any) -> HttpRequest:
        built[0] += 1
        return original(cls, scope)  # type: ignore[no-any-return]

    monkeypatch.setattr(HttpRequest, "from_asgi_scope", classmethod(counting))
    exchanges = await both_ways(
        limiter_of({"api": Policy(5, 10, algorithm)}),
        routes,
        scenario,
        options={"headers_on_allowed": fields_on_allowed},
    )
    refused = statuses(exchanges).count(429)
    assert 0 < refused < len(scenario)
    # The general path built a view of every request; the shortcut only of the refused ones.
    assert built[0] == len(scenario) + refused
    for sent, served in exchanges:
        if sent[0]["status"] == 200:
            assert served == 1
            names = [name for name, _ in sent[0]["headers"]]
            fields = [b"ratelimit-policy", b"ratelimit"] if fields_on_allowed else []
            assert names == [b"content-type", b"x-app", *fields]
        else:
            assert served == 0
            assert b"retry-after" in dict(sent[0]["headers"])


async def test_fields_are_those_of_the_general_path() -> None:
    exchanges = await both_ways(
        limiter_of({"api": Policy(3, 90)}), EVERYTHING, [(0.25, scope_for())] * 4
    )
    assert headers_of(exchanges[0])[b"ratelimit-policy"] == b'"api";q=3;w=90'
    assert headers_of(exchanges[0])[b"ratelimit"] == b'"api";r=2;t=90'
    assert headers_of(exchanges[2])[b"ratelimit"] == b'"api";r=0;t=90'
    assert statuses(exchanges) == [200, 200, 200, 429]


async def test_routes_the_shortcut_leaves_to_the_general_path() -> None:
    routes = [
        Route("/health", []),
        Route("/users/{name}", [RouteLimit("api", PathParam("name"))]),
        Route("/who", [RouteLimit("api", User())]),
        Route("/hdr", [RouteLimit("api", Header("X-Key"))]),
        Route("/two", [RouteLimit("api", ClientIP()), RouteLimit("other", Header("X-Key"))]),
        Route("/proxied", [RouteLimit("api", ClientIP(trusted_proxies=["203.0.113.0/24"]))]),
        Route("/post", [RouteLimit("api", ClientIP())], method="POST"),
        Route("/", [RouteLimit("api", ClientIP())]),
    ]
    scopes = [
        scope_for("/health"),
        scope_for("/users/ann"),
        scope_for("/who", user="ann"),
        scope_for("/who"),
        scope_for("/hdr", headers=[(b"x-key", b"k1")]),
        scope_for("/two", headers=[(b"x-key", b"k1")]),
        scope_for("/proxied", headers=[(b"x-forwarded-for", b"192.0.2.9")]),
        scope_for("/post"),
        scope_for("/post", method="POST"),
        scope_for("/nowhere"),
        scope_for("/"),
    ]
    policies = {"api": Policy(4, 60), "other": Policy(2, 60)}
    exchanges = await both_ways(limiter_of(policies), routes, [(1, s) for s in scopes * 3])
    assert 429 in statuses(exchanges)


@pytest.mark.parametrize("missing", ["ip", "reject", "skip"])
async def test_a_header_identity_takes_the_shortcut_and_decides_alike(missing: Any) -> None:
    routes = [Route("*", [RouteLimit("api", Header("X-User-ID"), on_missing_identity=missing)])]
    shortcut = Shortcut(RouteTable(routes), {"api": Policy(3, 60)})
    assert shortcut.item("GET", "/", PEER[0], ((b"x-user-id", b" ann "),)) == ("ann", "api", 1)
    headers: list[list[tuple[bytes, bytes]]] = [
        [(b"x-user-id", b"ann")],
        [(b"X-User-ID", b"ann")],  # a server that keeps the name's case
        [(b"x-user-id", b"  ann\t")],  # the same identity, stripped
        [(b"x-user-id", b"ann"), (b"x-user-id", b"ann")],  # sent twice alike: one value
        [(b"x-user-id", b"ann"), (b"x-user-id", b"bob")],  # ambiguous: missing
        [(b"x-user-id", b"   ")],  # blank: missing
        [(b"x-other", b"ann")],  # absent
        [(b"x-user-id", "zo\u00eb".encode("latin-1"))],  # a latin-1 byte
        [(b"x-user-id", b"bob")],
    ]
    scenario = [(1.0, scope_for(headers=fields)) for fields in headers * 2]
    exchanges = await both_ways(limiter_of({"api": Policy(3, 60)}), routes, scenario)
    assert 429 in statuses(exchanges)


@pytest.mark.parametrize("missing", ["ip", "reject", "skip"])
@pytest.mark.parametrize("client", [None, ("", 0), []])
async def test_missing_client_address(missing: Any, client: Any) -> None:
    # The engine's fallback trusts the peer: the forwarded address becomes the identity.
    fallback = ClientIP(trusted_proxies=["unix"])
    routes = [Route("*", [RouteLimit("api", ClientIP(), on_missing_identity=missing)])]
    scope = scope_for(client=client, headers=[(b"x-forwarded-for", b"192.0.2.1")])
    exchanges = await both_ways(
        limiter_of({"api": Policy(2, 60)}),
        routes,
        [(1, scope)] * 3,
        options={"client_ip": fallback},
    )
    expected = {"ip": [200, 200, 429], "reject": [400] * 3, "skip": [200] * 3}[missing]
    assert statuses(exchanges) == expected


@pytest.mark.parametrize(
    ("root_path", "path", "limited"),
    [
        ("/app", "/app/login", True),
        ("/app", "/app", False),
        ("/app", "/application/login", False),
        ("", "/login", True),
        ("/app", "/login", True),  # not under the root path: routed as it is
    ],
)
async def test_root_path(root_path: str, path: str, limited: bool) -> None:
    routes = [Route("/login", [RouteLimit("api", ClientIP())])]
    scope = scope_for(path, root_path=root_path)
    exchanges = await both_ways(limiter_of({"api": Policy(1, 60)}), routes, [(1, scope)] * 2)
    assert statuses(exchanges) == ([200, 429] if limited else [200, 200])


@pytest.mark.parametrize(
    ("engine", "shortcut"),
    [(Refusing, True), (OwnHeaders, False), (LoggingStart, False)],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
async def test_subclass_overrides(engine: type[HttpEngine], shortcut: bool) -> None:
    exchanges = await both_ways(
        limiter_of({"api": Policy(2, 60)}),
        EVERYTHING,
        [(1, scope_for())] * 3,
        engine=engine,
        shortcut=shortcut,
    )
    if engine is Refusing:
        assert exchanges[2][0][0]["headers"] == [(b"x-refused-by", b"api")]
    if engine is OwnHeaders:
        assert headers_of(exchanges[0])[b"x-left"] == b"1"


@pytest.mark.parametrize(
    ("options", "shortcut"),
    [
        ({"legacy_headers": True}, False),
        # No field on allowed responses: the shortcut adds none (and wraps no send).
        ({"headers_on_allowed": False}, True),
        ({"headers_on_allowed": False, "legacy_headers": True}, True),
    ],
)
async def test_options_that_change_allowed_responses(
    options: dict[str, bool], shortcut: bool
) -> None:
    exchanges = await both_ways(
        limiter_of({"api": Policy(2, 60)}),
        EVERYTHING,
        [(1, scope_for())] * 3,
        shortcut=shortcut,
        options=options,
    )
    allowed = headers_of(exchanges[0])
    if options.get("headers_on_allowed", True):
        assert allowed[b"x-ratelimit-remaining"] == b"1"
    else:
        assert allowed == {b"content-type": b"text/plain", b"x-app": b"yes"}
    assert statuses(exchanges) == [200, 200, 429]
    assert b"ratelimit" in headers_of(exchanges[2])  # a refusal always carries the fields


@pytest.mark.parametrize(
    ("failure_mode", "status"), [("open", 200), ("closed", 503), ("raise", 200)]
)
async def test_store_failures_are_contained_alike(
    failure_mode: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    policies = {"api": Policy(2, 60, failure_mode=failure_mode)}

    def make(clock: FakeClock) -> AsyncRateLimiter:
        return AsyncRateLimiter(policies, FailingStore(), clock=clock)

    with caplog.at_level(logging.WARNING, logger="ratewall"):
        exchanges = await both_ways(make, EVERYTHING, [(1, scope_for())] * 3)
    assert statuses(exchanges) == [status] * 3
    assert all(b"ratelimit" not in headers_of(exchange) for exchange in exchanges)
    assert "store" in caplog.text


async def test_odd_scopes_are_left_to_the_general_path(caplog: pytest.LogCaptureFixture) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    scopes = [
        scope_for(method=Unprintable()),  # type: ignore[arg-type]
        scope_for(client=(Unprintable(), 1)),
        {"type": "http"},
        scope_for(client=("not an address", 1)),
    ]
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        exchanges = await both_ways(
            limiter_of({"api": Policy(2, 60)}), EVERYTHING, [(0, s) for s in scopes]
        )
    assert statuses(exchanges) == [200] * 4
    assert "failed" in caplog.text


@pytest.mark.parametrize(
    "first",
    [
        Route("*", [RouteLimit("api", ClientIP())]),
        Route("*", [RouteLimit("api", ClientIP())], method="POST"),
        Route("*", []),
        Route("*", [RouteLimit("api", Header("X-Key"))]),
        Route("/api/*", [RouteLimit("api", ClientIP())]),
    ],
    ids=["catch-all", "post-only", "exempt", "header", "prefix"],
)
async def test_a_first_route_that_may_take_everything(first: Route) -> None:
    routes = [first, Route("/", [RouteLimit("other", ClientIP())])]
    scopes = [scope_for("/"), scope_for("/api/x", method="POST"), scope_for("/api")]
    policies = {"api": Policy(2, 60), "other": Policy(1, 60)}
    exchanges = await both_ways(limiter_of(policies), routes, [(1, s) for s in scopes * 3])
    assert 429 in statuses(exchanges) or first.limits == ()


def test_checks_singly_only_for_a_limiter_whose_check_methods_are_its_own() -> None:
    class Counting(AsyncRateLimiter):
        pass

    class Overriding(AsyncRateLimiter):
        async def check_many(self, items: Sequence[Any], /) -> list[Decision]:
            return await super().check_many(items)

    policies = {"api": Policy(5, 60)}
    assert checks_singly(AsyncRateLimiter(policies))
    assert checks_singly(Counting(policies))
    assert not checks_singly(Overriding(policies))
    assert not checks_singly(RateLimiter(policies))
    assert not checks_singly(SimpleNamespace(check_many=None, check=None))
