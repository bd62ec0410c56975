"""The middleware on real Redis/Valkey servers: the seed flow, and a store that really dies."""

from __future__ import annotations

import httpx
import pytest
import redis
from werkzeug.test import Client

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.http import (
    ClientIP,
    Header,
    RateLimitMiddleware,
    Route,
    RouteLimit,
    WSGIRateLimitMiddleware,
)
from ratewall.testing import FakeClock

from ._support import Calls, asgi_app, ratelimit_members, wsgi_app

PEER = ("203.0.113.7", 50000)
# Generous: a loaded CI machine may take more than the default 50 ms for a first connection
# and script load, and these tests are about the HTTP layer, not store latency. A stopped
# server refuses connections at once, so the dead-store tests stay fast.
TIMEOUT = 2.0
ROUTES = [
    Route(
        "/login",
        [RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())],
        method="POST",
    )
]


def client(app: RateLimitMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=PEER)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_seed_flow_on_a_real_store(redis_url: str, redis_client: redis.Redis) -> None:
    clock = FakeClock()
    policies = {"login": Policy(5, 60), "login_ip": Policy(100, 60)}
    async with AsyncRateLimiter(policies, store=redis_url, clock=clock, timeout=TIMEOUT) as limiter:
        calls = Calls()
        app = RateLimitMiddleware(asgi_app(calls), limiter, ROUTES)
        async with client(app) as http:
            for step in [0, 10, 10, 5, 5]:
                clock.advance(step)
                response = await http.post("/login", headers={"X-User-ID": "user_123"})
                assert response.status_code == 200
            clock.advance(15)
            refused = await http.post("/login", headers={"X-User-ID": "user_123"})
            clock.advance(5)
            again = await http.post("/login", headers={"X-User-ID": "user_123"})
            clock.advance(11)
            later = await http.post("/login", headers={"X-User-ID": "user_123"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "15"
    assert ratelimit_members(refused.headers) == {
        "login": {"q": 5, "w": 60, "r": 0, "t": 15},
        "login_ip": {"q": 100, "w": 60, "r": 95, "t": 15},
    }
    assert refused.json()["violated-policies"] == ["login"]
    assert (again.status_code, again.headers["retry-after"]) == (429, "10")
    assert later.status_code == 200
    assert calls.count == 6
    # The keys are the documented ones, each with a TTL.
    assert redis_client.ttl("ratelimit:{user_123}:login") > 0
    assert redis_client.ttl("ratelimit:{203.0.113.7}:login_ip") > 0


async def test_a_refused_request_consumes_no_other_policy_on_a_real_store(
    redis_url: str,
) -> None:
    policies = {"login": Policy(5, 60), "login_ip": Policy(3, 60)}
    async with AsyncRateLimiter(
        policies, store=redis_url, clock=FakeClock(), timeout=TIMEOUT
    ) as limiter:
        app = RateLimitMiddleware(asgi_app(), limiter, ROUTES)
        async with client(app) as http:
            statuses = [
                (await http.post("/login", headers={"X-User-ID": user})).status_code
                for user in ("alice", "bob", "carol", "dave", "dave")
            ]
        dave = await limiter.peek("dave", "login")
    assert statuses == [200, 200, 200, 429, 429]
    assert dave.remaining == 4  # after one more request: nothing was spent


@pytest.mark.parametrize(("failure_mode", "status"), [("closed", 503), ("open", 200)])
async def test_a_dead_store(fresh_server: LocalServer, failure_mode: str, status: int) -> None:
    policies = {
        "login": Policy(5, 60, failure_mode=failure_mode),
        "login_ip": Policy(100, 60, failure_mode=failure_mode),
    }
    async with AsyncRateLimiter(
        policies, store=fresh_server.url, clock=FakeClock(), timeout=TIMEOUT
    ) as limiter:
        calls = Calls()
        app = RateLimitMiddleware(asgi_app(calls), limiter, ROUTES)
        async with client(app) as http:
            before = await http.post("/login", headers={"X-User-ID": "user_123"})
            assert before.status_code == 200
            assert "ratelimit" in before.headers
            fresh_server.stop()
            responses = [
                await http.post("/login", headers={"X-User-ID": "user_123"}) for _ in range(5)
            ]
    assert [response.status_code for response in responses] == [status] * 5
    for response in responses:
        assert "ratelimit" not in response.headers  # no invented numbers
        if status == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["type"].endswith("#temporary-reduced-capacity")
            assert "Connection" not in response.text  # no store error in the body
    assert calls.count == (1 if status == 503 else 6)


def test_wsgi_on_a_real_store(redis_url: str) -> None:
    policies = {"login": Policy(2, 60), "login_ip": Policy(100, 60)}
    with RateLimiter(policies, store=redis_url, clock=FakeClock(), timeout=TIMEOUT) as limiter:
        http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, ROUTES))
        statuses = [
            http.post(
                "/login", headers={"X-User-ID": "u"}, environ_base={"REMOTE_ADDR": PEER[0]}
            ).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 429]


def test_wsgi_with_a_dead_store(fresh_server: LocalServer) -> None:
    policies = {"login": Policy(2, 60, failure_mode="closed"), "login_ip": Policy(100, 60)}
    with RateLimiter(
        policies, store=fresh_server.url, clock=FakeClock(), timeout=TIMEOUT
    ) as limiter:
        http = Client(WSGIRateLimitMiddleware(wsgi_app(), limiter, ROUTES))
        fresh_server.stop()
        # login_ip's failure mode is "raise": the route still fails closed for login.
        response = http.post(
            "/login", headers={"X-User-ID": "u"}, environ_base={"REMOTE_ADDR": PEER[0]}
        )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


async def test_a_dead_store_with_failure_mode_local(fresh_server: LocalServer) -> None:
    """Each process enforces its share: within it 200, beyond it 429 (the client is over its
    share; not 503), and every answer says it was not the store's (RateLimit-Degraded)."""
    policies = {
        "login": Policy(6, 60, failure_mode="local", local_nodes=2),
        "login_ip": Policy(100, 60, failure_mode="local"),
    }
    async with AsyncRateLimiter(
        policies, store=fresh_server.url, clock=FakeClock(), timeout=TIMEOUT
    ) as limiter:
        calls = Calls()
        app = RateLimitMiddleware(asgi_app(calls), limiter, ROUTES)
        async with client(app) as http:
            fresh_server.stop()
            responses = [
                await http.post("/login", headers={"X-User-ID": "user_123"}) for _ in range(5)
            ]
    assert [response.status_code for response in responses] == [200, 200, 200, 429, 429]
    assert calls.count == 3
    for response in responses:
        assert '"login"' in response.headers["ratelimit-degraded"]
        assert "ratelimit" not in response.headers  # no store numbers to show
    refused = responses[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["type"].endswith("#quota-exceeded")
    assert refused.json()["violated-policies"] == ["login"]
