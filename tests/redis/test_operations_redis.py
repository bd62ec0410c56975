"""Shadow mode, exemptions, overrides, tiers and reload on real servers."""

from __future__ import annotations

import asyncio

import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Policy, RateLimiter

TIMEOUT = 5.0  # these tests are about decisions, not latency


def test_shadow_refusals_pass_even_from_the_deny_cache(redis_url: str) -> None:
    with RateLimiter({"login": Policy(2, 60, shadow=True)}, redis_url, timeout=TIMEOUT) as limiter:
        decisions = [limiter.check("u", "login") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.shadowed for d in decisions] == [False, False, True, True, True]
    assert [d.source for d in decisions] == ["store", "store", "store", "cache", "cache"]


def test_exempt_identities_write_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    policy = Policy(1, 60, exempt=["healthcheck"])
    with RateLimiter({"api": policy}, redis_url, timeout=TIMEOUT) as limiter:
        assert all(limiter.check("healthcheck", "api").allowed for _ in range(3))
        limiter.reset("healthcheck", "api")
    assert redis_client.keys("*") == []


def test_overrides_and_tiers_share_one_key(redis_url: str, redis_client: redis.Redis) -> None:
    policy = Policy(2, 60, overrides={"partner": {"limit": 10}}, tiers={"pro": {"limit": 4}})
    with RateLimiter({"api": policy}, redis_url, timeout=TIMEOUT) as limiter:
        assert sum(limiter.check("partner", "api").allowed for _ in range(12)) == 10
        assert [limiter.check("u", "api").allowed for _ in range(3)] == [True, True, False]
        # Moving to a bigger tier keeps what was consumed: 2 of 4 used.
        assert limiter.check("u", "api", tier="pro").remaining == 1
    assert sorted(redis_client.keys("*")) == [b"ratelimit:{partner}:api", b"ratelimit:{u}:api"]


def test_reload_to_another_algorithm_never_misreads_state(redis_url: str) -> None:
    """Each algorithm tags what it writes; a reload to another one starts the identity
    afresh instead of reading the old algorithm's state as its own."""
    with RateLimiter({"api": Policy(3, 60)}, redis_url, timeout=TIMEOUT) as limiter:
        for algorithm in [*ALGORITHMS, "fixed_window"]:
            limiter.reload({"api": {"limit": 3, "window": 60, "algorithm": algorithm}})
            first = limiter.check("u", "api")
            assert (first.allowed, first.remaining) == (True, 2), algorithm
            limiter.check("u", "api")
            limiter.check("u", "api")
            assert not limiter.check("u", "api").allowed, algorithm


async def test_async_reload_keeps_unchanged_state(redis_url: str) -> None:
    async with AsyncRateLimiter(
        {"login": Policy(2, 60), "api": Policy(5, 60)}, redis_url, timeout=TIMEOUT
    ) as limiter:
        await asyncio.gather(*(limiter.check("u", "login") for _ in range(2)))
        await limiter.reload(
            {"login": {"limit": 2, "window": 60}, "api": {"limit": 9, "window": 60}}
        )
        assert not (await limiter.check("u", "login")).allowed
        assert (await limiter.check("u", "api")).limit == 9
