"""Several policies for one request: one round trip, all or nothing, on real servers."""

from __future__ import annotations

import redis

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.testing import FakeClock

from .._timing import STORE_TIMEOUT
from ._stats import script_calls

POLICIES = {"user": Policy(3, 60), "ip": Policy(2, 60, "gcra"), "log": Policy(4, 60, "sliding_log")}


def test_check_many_matches_the_memory_store(redis_url: str) -> None:
    clock = FakeClock()
    store = RateLimiter(POLICIES, store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    memory = RateLimiter(POLICIES, clock=clock)
    items: list[tuple[str, str] | tuple[str, str, int]] = [
        ("alice", "user"),
        ("10.0.0.1", "ip", 1),
        ("alice", "log", 2),
    ]
    for step in [0, 1, 1, 5, 0, 20, 40, 1]:
        clock.advance(step)
        assert store.check_many(items) == memory.check_many(items)
        assert store.peek("alice", "user") == memory.peek("alice", "user")
    store.close()


def test_a_refused_request_consumes_no_other_policy(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with RateLimiter(
        POLICIES, store=redis_url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        items = [("alice", "user"), ("10.0.0.1", "ip")]
        assert all(d.allowed for d in limiter.check_many(items))
        assert all(d.allowed for d in limiter.check_many(items))
        before = redis_client.get("ratelimit:{alice}:user")
        decisions = limiter.check_many(items)
        assert [d.allowed for d in decisions] == [True, False]
        assert redis_client.get("ratelimit:{alice}:user") == before
        assert limiter.check("alice", "user").remaining == 0


def test_a_refused_group_is_then_answered_locally(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with RateLimiter(
        POLICIES, store=redis_url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        items = [("alice", "user"), ("10.0.0.1", "ip")]
        limiter.check_many(items)
        limiter.check_many(items)
        assert not all(d.allowed for d in limiter.check_many(items))
        calls = script_calls(redis_client)
        for _ in range(100):
            assert not all(d.allowed for d in limiter.check_many(items))
        assert script_calls(redis_client) == calls


async def test_async_check_many(redis_url: str) -> None:
    clock = FakeClock()
    memory = RateLimiter(POLICIES, clock=clock)
    async with AsyncRateLimiter(
        POLICIES, store=redis_url, clock=clock, timeout=STORE_TIMEOUT
    ) as limiter:
        items = [("bob", "user"), ("bob", "ip")]
        for step in [0, 0, 0, 31, 0]:
            clock.advance(step)
            assert await limiter.check_many(items) == memory.check_many(items)
