"""Routes naming a concurrency policy: the slot is held for the whole request (streaming
included) and released when the response ends, the client disconnects or the app raises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest

from ratewall import AsyncRateLimiter, ConfigError, Policy, RateLimiter
from ratewall.http import (
    Header,
    RateLimitMiddleware,
    Route,
    RouteLimit,
    WSGIRateLimitMiddleware,
)
from ratewall.testing import FakeClock

POLICIES = {
    "exports": Policy(1, 60, algorithm="concurrency"),
    "calls": Policy(2, 60),
}
ROUTES = [
    Route(
        "/export",
        [RouteLimit("exports", Header("X-User-ID")), RouteLimit("calls", Header("X-User-ID"))],
    )
]


def _scope(user: str = "u") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/export",
        "raw_path": b"/export",
        "query_string": b"",
        "headers": [(b"x-user-id", user.encode())],
        "client": ("203.0.113.7", 5000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "http_version": "1.1",
    }


class _Exchange:
    """One request through the middleware: what it sent, and a way to disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.disconnect = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}


async def _free(limiter: AsyncRateLimiter) -> int:
    return (await limiter.peek("u", "exports")).remaining


async def test_the_slot_is_held_while_streaming_and_freed_by_the_last_chunk() -> None:
    limiter = AsyncRateLimiter(POLICIES, clock=FakeClock())
    proceed = asyncio.Event()
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        seen.append(await _free(limiter))
        await proceed.wait()
        await send({"type": "http.response.body", "body": b"b"})
        seen.append(await _free(limiter))  # the response ended: released before the app returns

    middleware = RateLimitMiddleware(app, limiter, ROUTES)
    first = _Exchange()
    streaming = asyncio.create_task(middleware(_scope(), first.receive, first.send))
    await asyncio.sleep(0.01)
    second = _Exchange()
    await middleware(_scope(), second.receive, second.send)
    assert second.status == 429
    assert int(second.headers["retry-after"]) >= 1
    body = json.loads(second.sent[1]["body"])
    assert body["violated-policies"] == ["exports"]
    # RateLimit fields leave the concurrency policy out; the rate policy, not consumed,
    # shows its quota before the request.
    assert "exports" not in second.headers.get("ratelimit-policy", "")
    proceed.set()
    await streaming
    assert first.status == 200
    assert seen == [0, 1]
    assert "exports" not in first.headers.get("ratelimit", "")
    assert '"calls"' in first.headers["ratelimit"]
    # The refused request consumed none of the route's rate policy: one unit of two is left.
    assert (await limiter.peek("u", "calls")).allowed


async def test_a_client_disconnect_or_an_app_error_releases_the_slot() -> None:
    limiter = AsyncRateLimiter(POLICIES, clock=FakeClock())

    async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"

    exchange = _Exchange()
    task = asyncio.create_task(
        RateLimitMiddleware(waits_for_disconnect, limiter, ROUTES)(
            _scope(), exchange.receive, exchange.send
        )
    )
    await asyncio.sleep(0.01)
    assert await _free(limiter) == 0
    exchange.disconnect.set()
    await task
    assert await _free(limiter) == 1

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("app bug")

    with pytest.raises(RuntimeError, match="app bug"):
        await RateLimitMiddleware(broken, limiter, ROUTES)(
            _scope(), exchange.receive, exchange.send
        )
    assert await _free(limiter) == 1


async def test_a_refused_rate_policy_releases_the_slot() -> None:
    limiter = AsyncRateLimiter(POLICIES, clock=FakeClock())
    for _ in range(2):
        await limiter.check("u", "calls")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    exchange = _Exchange()
    await RateLimitMiddleware(app, limiter, ROUTES)(_scope(), exchange.receive, exchange.send)
    assert exchange.status == 429
    assert json.loads(exchange.sent[1]["body"])["violated-policies"] == ["calls"]
    assert await _free(limiter) == 1


def test_wsgi_holds_the_slot_until_the_server_closes_the_iterable() -> None:
    limiter = RateLimiter(POLICIES, clock=FakeClock())
    statuses: list[str] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"chunk"
        yield b"chunk"

    middleware = WSGIRateLimitMiddleware(app, limiter, ROUTES)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/export",
        "HTTP_X_USER_ID": "u",
        "REMOTE_ADDR": "203.0.113.7",
        "wsgi.url_scheme": "http",
    }

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return lambda data: None

    body = middleware(environ, start_response)
    assert next(iter(body)) == b"chunk"
    assert limiter.peek("u", "exports").remaining == 0
    refused = middleware(environ, start_response)
    assert statuses[-1].startswith("429")
    assert list(refused)
    body.close()  # type: ignore[attr-defined]
    assert limiter.peek("u", "exports").remaining == 1


def test_a_limiter_that_cannot_hold_slots_is_refused_at_startup() -> None:
    class OnlyChecks:
        policies = POLICIES

        def check_many(self, items: Any) -> list[Any]:
            return []

    with pytest.raises(ConfigError, match="cannot hold slots"):
        WSGIRateLimitMiddleware(lambda e, s: [], OnlyChecks(), ROUTES)
    with pytest.raises(ConfigError, match="cost must be 1"):
        WSGIRateLimitMiddleware(
            lambda e, s: [],
            RateLimiter(POLICIES),
            [Route("/x", [RouteLimit("exports", Header("X-User-ID"), cost=2)])],
        )


def test_the_framework_integrations_refuse_concurrency_routes_at_startup() -> None:
    from ratewall.http import HttpEngine
    from ratewall.integrations._shared import AsyncEngineDriver, EngineDriver

    engine = HttpEngine(ROUTES, POLICIES)
    with pytest.raises(ConfigError, match="framework integrations do not hold slots"):
        EngineDriver(engine, RateLimiter(POLICIES))
    with pytest.raises(ConfigError, match="framework integrations do not hold slots"):
        AsyncEngineDriver(engine, AsyncRateLimiter(POLICIES))
