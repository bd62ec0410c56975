"""AsyncRateLimiter on a real Redis/Valkey server: the operations, closing, and exactness
under many concurrent callers."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Decision, Policy
from ratewall.stores._values import decode_value
from ratewall.testing import FakeClock

KEY = "ratelimit:{user_123}:login"
POLICIES = {"login": Policy(limit=5, window=60)}
CONCURRENT = 200
LIMIT = 50
DAY = 86_400
# Generous: these tests are about exactness, not latency, and a loaded CI machine with 200
# callers in flight must not turn a slow reply into a StoreError.
TIMEOUT = 5.0


# redis-py types sync replies as `Awaitable[Any] | Any`; these name what they really are.
def _get(client: redis.Redis) -> bytes | None:
    return cast("bytes | None", client.get(KEY))


def _pttl(client: redis.Redis) -> int:
    return client.pttl(KEY)


def _ratewall_clients(client: redis.Redis) -> int:
    clients = cast("list[dict[str, Any]]", client.client_list())
    return sum(1 for entry in clients if entry.get("name") == "ratewall")


def _wait_for_no_ratewall_client(client: redis.Redis) -> int:
    """The server notices a closed socket on its next event-loop turn; ask until it has
    (each question is a round trip, so this takes a turn or two), or give up after 5 s."""
    deadline = time.monotonic() + 5.0
    while (count := _ratewall_clients(client)) and time.monotonic() < deadline:
        pass
    return count


async def test_check_peek_reset(redis_url: str, redis_client: redis.Redis) -> None:
    clock = FakeClock()
    async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT, clock=clock) as limiter:
        assert await limiter.peek("user_123", "login") == Decision(True, "login", 5, 4, 60.0, None)
        assert redis_client.exists(KEY) == 0  # a peek writes nothing
        assert await limiter.check("user_123", "login", cost=3) == Decision(
            True, "login", 5, 2, 60.0, None
        )
        stored = _get(redis_client)
        clock.advance(10)
        assert await limiter.peek("user_123", "login", cost=2) == Decision(
            True, "login", 5, 0, 50.0, None
        )
        assert await limiter.peek("user_123", "login", cost=3) == Decision(
            False, "login", 5, 2, 50.0, 50.0
        )
        assert _get(redis_client) == stored
        assert await limiter.check("user_123", "login", cost=2) == Decision(
            True, "login", 5, 0, 50.0, None
        )
        assert await limiter.check("user_123", "login") == Decision(
            False, "login", 5, 0, 50.0, 50.0
        )
        await limiter.reset("user_123", "login")
        assert redis_client.exists(KEY) == 0
        # The reset also cleared this node's deny cache: Redis decides, on a fresh window.
        assert await limiter.check("user_123", "login") == Decision(True, "login", 5, 4, 60.0, None)
        assert _pttl(redis_client) > 0


async def test_unknown_policy_and_bad_cost(redis_url: str) -> None:
    async with AsyncRateLimiter(
        POLICIES, store=redis_url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        with pytest.raises(KeyError, match="nope"):
            await limiter.check("user_123", "nope")
        with pytest.raises(ValueError, match="cost"):
            await limiter.check("user_123", "login", cost=6)
        with pytest.raises(ValueError, match="cost"):
            await limiter.peek("user_123", "login", cost=0)


async def test_context_manager_closes_its_connections(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        await asyncio.gather(*(limiter.check(f"user_{n}", "login") for n in range(20)))
        assert _ratewall_clients(redis_client) >= 1
    assert _wait_for_no_ratewall_client(redis_client) == 0


async def test_context_manager_closes_on_error(redis_url: str, redis_client: redis.Redis) -> None:
    async def handler() -> None:
        async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
            await limiter.check("user_123", "login")
            assert _ratewall_clients(redis_client) == 1
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await handler()
    assert _wait_for_no_ratewall_client(redis_client) == 0


async def test_aclose_closes_its_connections(redis_url: str, redis_client: redis.Redis) -> None:
    limiter = AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT)
    await limiter.check("user_123", "login")
    assert _ratewall_clients(redis_client) == 1
    await limiter.aclose()
    assert _wait_for_no_ratewall_client(redis_client) == 0


async def test_server_time_is_used_without_a_clock(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        await limiter.check("user_123", "login")
    stored = _get(redis_client)
    assert stored is not None
    # "F" (fixed window), then count and window end (see ratewall.stores._values).
    tag, (count, end_us) = decode_value(stored)
    assert tag == "F"
    seconds, micros = redis_client.time()
    assert count == 1
    # The window ends 60 s after the server's TIME at the request (well under a second ago).
    assert 59_000_000 < end_us - (seconds * 1_000_000 + micros) <= 60_000_000


@pytest.mark.parametrize("local_cache_size", [10_000, 0], ids=["deny-cache", "no-cache"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_concurrent_checks_admit_exactly_the_limit(
    redis_url: str, redis_client: redis.Redis, algorithm: str, local_cache_size: int
) -> None:
    policies = {"login": Policy(LIMIT, DAY, algorithm)}
    async with AsyncRateLimiter(
        policies, store=redis_url, timeout=TIMEOUT, local_cache_size=local_cache_size
    ) as limiter:
        decisions = await asyncio.gather(
            *(limiter.check("user_123", "login") for _ in range(CONCURRENT))
        )
        assert not any(decision.degraded for decision in decisions)
        admitted = [decision for decision in decisions if decision.allowed]
        assert len(admitted) == LIMIT
        # Each admission saw its own count: the remaining values are LIMIT-1 .. 0, once each.
        assert sorted(decision.remaining for decision in admitted) == list(range(LIMIT))
        refused = [decision for decision in decisions if not decision.allowed]
        assert all(d.remaining == 0 and d.retry_after and d.retry_after > 0 for d in refused)
        assert not (await limiter.peek("user_123", "login")).allowed
    assert _pttl(redis_client) > 0


async def test_concurrent_checks_over_several_nodes_admit_exactly_the_limit(
    redis_url: str,
) -> None:
    # Four limiter instances (four "nodes") share the server; their callers interleave.
    policies = {"login": Policy(LIMIT, DAY)}
    nodes = [AsyncRateLimiter(policies, store=redis_url, timeout=TIMEOUT) for _ in range(4)]
    try:
        decisions = await asyncio.gather(
            *(nodes[n % 4].check("user_123", "login") for n in range(CONCURRENT))
        )
    finally:
        for node in nodes:
            await node.aclose()
    assert sum(decision.allowed for decision in decisions) == LIMIT
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(LIMIT))


async def test_concurrent_checks_of_mixed_costs_never_overspend(
    redis_url: str, redis_client: redis.Redis
) -> None:
    policies = {"login": Policy(LIMIT, DAY)}
    costs = [1 + n % 4 for n in range(CONCURRENT)]
    async with AsyncRateLimiter(policies, store=redis_url, timeout=TIMEOUT) as limiter:
        decisions = await asyncio.gather(
            *(limiter.check("user_123", "login", cost=cost) for cost in costs)
        )
    spent = sum(cost for cost, d in zip(costs, decisions, strict=True) if d.allowed)
    stored = _get(redis_client)
    assert stored is not None
    assert decode_value(stored)[1][0] == spent  # fixed window: (count, end)
    # Cost-1 requests keep coming until the very end, so the limit is filled exactly.
    assert spent == LIMIT
    # A request was refused only when it no longer fitted.
    for cost, decision in zip(costs, decisions, strict=True):
        if not decision.allowed:
            assert decision.remaining < cost


async def test_concurrent_checks_of_many_identities_are_independent(redis_url: str) -> None:
    policies = {"login": Policy(2, DAY)}
    identities = [f"user_{n % 50}" for n in range(CONCURRENT)]  # 4 requests each
    async with AsyncRateLimiter(policies, store=redis_url, timeout=TIMEOUT) as limiter:
        decisions = await asyncio.gather(*(limiter.check(i, "login") for i in identities))
    admitted: dict[str, int] = {}
    for identity, decision in zip(identities, decisions, strict=True):
        admitted[identity] = admitted.get(identity, 0) + decision.allowed
    assert admitted == {f"user_{n}": 2 for n in range(50)}
