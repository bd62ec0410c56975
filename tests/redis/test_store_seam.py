"""The store seam on real servers: store objects instead of URLs, ``ping`` at startup, the
observer seeing every decision with its source and every round trip with its batch size,
and ``ratewall.testing.FailingStore`` in front of a real store."""

from __future__ import annotations

import asyncio

import pytest

from ratewall import AsyncRateLimiter, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer
from ratewall.stores import AsyncRedisStore, RedisStore
from ratewall.testing import DecisionCapture, FailingStore, FakeClock

from .._timing import DEADLINE_TIMEOUT, STORE_TIMEOUT, deadline_bound, unloaded_time

POLICIES = {"login": Policy(3, 60), "hot": Policy(100, 60, lease=10)}
# A stopped server refuses at once; a frozen one fails at the timeout plus the stated slack.
FAILURE_BOUND = deadline_bound(DEADLINE_TIMEOUT)


def test_a_store_object_serves_a_limiter(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=1.0)
    with (
        RateLimiter(POLICIES, store) as limiter,
        RateLimiter(POLICIES, redis_url, timeout=STORE_TIMEOUT) as by_url,
    ):
        answers = [limiter.check("u", "login").allowed for _ in range(4)]
        # Both limiters share the server: the URL-built one sees the same state.
        assert not by_url.peek("u", "login").allowed
        assert limiter.store_url == redis_url
        assert limiter.ping() > 0
    assert answers == [True, True, True, False]


async def test_an_async_store_object_serves_an_async_limiter(redis_url: str) -> None:
    async with AsyncRateLimiter(POLICIES, AsyncRedisStore(redis_url, timeout=1.0)) as limiter:
        answers = [(await limiter.check("u", "login")).allowed for _ in range(4)]
        assert await limiter.ping() > 0
    assert answers == [True, True, True, False]


def test_ping_of_a_stopped_server_raises_store_error_in_time(fresh_server: LocalServer) -> None:
    policies = {"login": Policy(3, 60, failure_mode="open")}
    with RateLimiter(policies, fresh_server.url, timeout=STORE_TIMEOUT) as limiter:
        assert limiter.ping() > 0
        fresh_server.stop()
        started = unloaded_time()
        with pytest.raises(StoreError, match="did not answer"):
            limiter.ping()  # whatever the failure mode: ping is for startup checks
        assert unloaded_time() - started < FAILURE_BOUND


async def test_async_ping_of_a_frozen_server_raises_store_error_in_time(
    fresh_server: LocalServer,
) -> None:
    async with AsyncRateLimiter(POLICIES, fresh_server.url, timeout=DEADLINE_TIMEOUT) as limiter:
        fresh_server.pause()
        try:
            started = unloaded_time()
            with pytest.raises(StoreError, match="did not answer"):
                await limiter.ping()
            assert unloaded_time() - started < FAILURE_BOUND
        finally:
            fresh_server.resume()


def test_the_observer_sees_where_each_redis_decision_came_from(redis_url: str) -> None:
    capture = DecisionCapture()
    with RateLimiter(POLICIES, redis_url, observer=capture, timeout=1.0) as limiter:
        answers = [limiter.check("u", "login") for _ in range(5)]
        answers += [limiter.check("h", "hot") for _ in range(3)]
    assert capture.decisions == answers
    assert [(d.allowed, d.source) for d in capture.decisions] == [
        (True, "store"),
        (True, "store"),
        (True, "store"),
        (False, "store"),  # the store refused: this node now knows it
        (False, "cache"),  # answered by the deny cache, no round trip
        (True, "store"),  # the first "hot" check takes a lease
        (True, "lease"),
        (True, "lease"),
    ]
    # One round trip per store decision, each carrying one call.
    assert [c.calls for c in capture.store_calls] == [1] * 5
    assert all(c.error is None and 0 < c.seconds < FAILURE_BOUND for c in capture.store_calls)


async def test_the_observer_sees_batched_round_trips(redis_url: str) -> None:
    capture = DecisionCapture()
    policies = {"api": Policy(10_000, 60)}
    async with AsyncRateLimiter(policies, redis_url, observer=capture, timeout=1.0) as limiter:
        await asyncio.gather(*(limiter.check(f"user_{n}", "api") for n in range(200)))
    assert len(capture.decisions) == 200
    sizes = [c.calls for c in capture.store_calls]
    assert sum(sizes) == 200
    assert max(sizes) > 1, sizes  # concurrent callers shared round trips


def test_a_failing_store_in_front_of_redis_fails_then_recovers(redis_url: str) -> None:
    clock = FakeClock()
    capture = DecisionCapture()
    store = FailingStore(redis_url, failing=None, timeout=1.0)
    policies = {"login": Policy(3, 60, failure_mode="closed")}
    with RateLimiter(policies, store, clock=clock, observer=capture) as limiter:
        assert limiter.check("u", "login").source == "store"
        with store.failures("refuse"):
            failed = [limiter.check("u", "login") for _ in range(5)]
        assert [(d.allowed, d.source) for d in failed] == [(False, "failure")] * 5
        # The breaker opened after three failures; its cooldown passes on the limiter's clock.
        clock.advance(1.0)
        recovered = limiter.check("u", "login")
        assert (recovered.allowed, recovered.remaining, recovered.source) == (True, 1, "store")
    assert [opened for opened, _ in capture.breaker] == [True, False]
