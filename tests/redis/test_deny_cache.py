"""The local deny cache on real servers: a refused flood costs about one script call per key,
the cache never grants what the store would refuse, it stays bounded, and it keeps a shared
limiter exact under threads.

Script calls are counted by the server itself (``INFO commandstats``: EVALSHA + EVAL), so a
call the limiter answers locally is proven not to have reached the store.
"""

from __future__ import annotations

import threading

import pytest
import redis

from ratewall import ALGORITHMS, Decision, Policy, RateLimiter
from ratewall.testing import FakeClock

from .._timing import STORE_TIMEOUT  # counts and exactness are under test, not latency
from ._stats import script_calls

LIMIT = 5
WINDOW = "1h"
POLICY = "login"
FLOOD = 1000
KEYS = 10
THREADS = 8
THREAD_LIMIT = 50
CHECKS_PER_THREAD = 100  # 8 x 100 = 800 offered for 50 admitted
JOIN_TIMEOUT = 60.0

EVERY_ALGORITHM = pytest.mark.parametrize("algorithm", ALGORITHMS)


def _policies(algorithm: str, limit: int = LIMIT, window: str = WINDOW) -> dict[str, Policy]:
    return {POLICY: Policy(limit, window, algorithm)}


def _fill(limiter: RateLimiter, identity: str) -> Decision:
    """Spend the whole limit, then return the first refusal (which came from the store)."""
    for _ in range(LIMIT):
        assert limiter.check(identity, POLICY).allowed
    refusal = limiter.check(identity, POLICY)
    assert not refusal.allowed
    return refusal


# -- (a) a refused flood costs one script call per key ------------------------------------


@EVERY_ALGORITHM
def test_a_refused_flood_on_one_key_costs_one_script_call(
    redis_url: str,
    redis_client: redis.Redis,
    algorithm: str,
) -> None:
    with RateLimiter(_policies(algorithm), store=redis_url, timeout=STORE_TIMEOUT) as limiter:
        for _ in range(LIMIT):
            assert limiter.check("user_123", POLICY).allowed
        before = script_calls(redis_client)
        flood = [limiter.check("user_123", POLICY) for _ in range(FLOOD)]
        calls = script_calls(redis_client) - before
    assert not any(decision.allowed for decision in flood)
    assert all(d.remaining == 0 and d.retry_after and d.retry_after > 0 for d in flood)
    # The first refusal came from the store and filled the cache; the rest were local.
    assert calls <= 1, f"{calls} script calls for a refused flood of {FLOOD}"


@EVERY_ALGORITHM
def test_a_refused_flood_on_ten_keys_costs_one_script_call_per_key(
    redis_url: str,
    redis_client: redis.Redis,
    algorithm: str,
) -> None:
    identities = [f"user_{n}" for n in range(KEYS)]
    with RateLimiter(_policies(algorithm), store=redis_url, timeout=STORE_TIMEOUT) as limiter:
        for identity in identities:
            for _ in range(LIMIT):
                assert limiter.check(identity, POLICY).allowed
        before = script_calls(redis_client)
        flood = [limiter.check(identities[n % KEYS], POLICY) for n in range(FLOOD)]
        calls = script_calls(redis_client) - before
    assert not any(decision.allowed for decision in flood)
    assert calls <= KEYS, f"{calls} script calls for a refused flood of {FLOOD} on {KEYS} keys"


# -- (b) the cache never grants -----------------------------------------------------------


@EVERY_ALGORITHM
def test_a_reset_on_another_node_is_seen_at_the_cached_retry_time(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    clock = FakeClock()
    node_a = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    node_b = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    with node_a, node_b:
        refusal = _fill(node_a, "user_123")
        assert refusal.retry_after is not None
        retry_at = clock() + refusal.retry_after
        node_b.reset("user_123", POLICY)

        clock.set(retry_at - 0.001)
        # The store would now grant (the key is gone) ...
        assert node_b.peek("user_123", POLICY).allowed
        before = script_calls(redis_client)
        # ... but node A still trusts its snapshot: a stale refusal, never a stale grant.
        stale = node_a.check("user_123", POLICY)
        assert not stale.allowed
        assert script_calls(redis_client) == before, "node A asked the store before retry time"

        clock.set(retry_at)
        before = script_calls(redis_client)
        fresh = node_a.check("user_123", POLICY)
        assert script_calls(redis_client) == before + 1, "node A must ask the store now"
        assert fresh.allowed
        # The store decided on the reset key: a full limit, one unit spent.
        assert fresh.remaining == LIMIT - 1


@EVERY_ALGORITHM
def test_a_snapshot_that_would_allow_defers_to_the_store(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    clock = FakeClock()
    node_a = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    node_b = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    with node_a, node_b:
        refusal = _fill(node_a, "user_123")
        assert refusal.retry_after is not None
        clock.advance(refusal.retry_after)
        # Node A's snapshot now allows one unit, but node B spends what became available.
        spent_by_b = 0
        while node_b.check("user_123", POLICY).allowed:
            spent_by_b += 1
            assert spent_by_b <= LIMIT
        assert spent_by_b >= 1
        before = script_calls(redis_client)
        decision = node_a.check("user_123", POLICY)
        assert script_calls(redis_client) == before + 1, "node A must ask the store"
        assert not decision.allowed, "the deny cache granted what the store refuses"


# -- (c) a smaller cost than the cached refusal -------------------------------------------


@EVERY_ALGORITHM
def test_a_smaller_cost_that_the_snapshot_allows_asks_the_store(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    with RateLimiter(
        _policies(algorithm), store=redis_url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY, cost=3).remaining == 2
        before = script_calls(redis_client)
        assert not limiter.check("user_123", POLICY, cost=3).allowed
        assert script_calls(redis_client) == before + 1  # the store refused; now cached
        assert not limiter.check("user_123", POLICY, cost=3).allowed
        assert script_calls(redis_client) == before + 1  # answered locally
        decision = limiter.check("user_123", POLICY, cost=2)
        assert script_calls(redis_client) == before + 2  # the snapshot allowed: store asked
        assert decision.allowed
        assert decision.remaining == 0


@EVERY_ALGORITHM
def test_a_smaller_cost_is_refused_when_another_node_spent_it(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    clock = FakeClock()
    node_a = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    node_b = RateLimiter(_policies(algorithm), store=redis_url, clock=clock, timeout=STORE_TIMEOUT)
    with node_a, node_b:
        assert node_a.check("user_123", POLICY, cost=3).allowed
        assert not node_a.check("user_123", POLICY, cost=3).allowed  # cached: 2 left
        assert node_b.check("user_123", POLICY, cost=2).allowed  # now 0 left
        before = script_calls(redis_client)
        decision = node_a.check("user_123", POLICY, cost=2)
        assert script_calls(redis_client) == before + 1
        assert not decision.allowed, "the deny cache granted what the store refuses"
        # The store's refusal refreshed the snapshot: a single unit is now refused locally.
        assert not node_a.check("user_123", POLICY, cost=1).allowed
        assert script_calls(redis_client) == before + 1


# -- (d) the cache is bounded -------------------------------------------------------------


def test_the_cache_keeps_at_most_local_cache_size_entries(
    redis_url: str, redis_client: redis.Redis
) -> None:
    identities = [f"user_{n}" for n in range(KEYS)]
    with RateLimiter(
        _policies("fixed_window"),
        store=redis_url,
        local_cache_size=3,
        clock=FakeClock(),
        timeout=STORE_TIMEOUT,
    ) as limiter:
        for identity in identities:
            _fill(limiter, identity)
            assert len(limiter._core.deny_cache) <= 3
        assert len(limiter._core.deny_cache) == 3
        # An evicted key costs a round trip again, never a wrong answer.
        before = script_calls(redis_client)
        assert not any(limiter.check(identity, POLICY).allowed for identity in identities)
        assert script_calls(redis_client) - before >= KEYS - 3
        assert len(limiter._core.deny_cache) <= 3


def test_a_zero_size_cache_remembers_nothing(redis_url: str, redis_client: redis.Redis) -> None:
    with RateLimiter(
        _policies("fixed_window"),
        store=redis_url,
        local_cache_size=0,
        clock=FakeClock(),
        timeout=STORE_TIMEOUT,
    ) as limiter:
        _fill(limiter, "user_123")
        before = script_calls(redis_client)
        assert not any(limiter.check("user_123", POLICY).allowed for _ in range(10))
        assert script_calls(redis_client) == before + 10
        assert len(limiter._core.deny_cache) == 0


# -- (e) one limiter shared by threads ----------------------------------------------------


@EVERY_ALGORITHM
def test_threads_sharing_a_limiter_admit_exactly_the_limit(
    redis_url: str,
    redis_client: redis.Redis,
    algorithm: str,
) -> None:
    # Server time and a one-day window: a bucket refills far less than a unit during the run.
    policies = _policies(algorithm, limit=THREAD_LIMIT, window="1d")
    barrier = threading.Barrier(THREADS)
    results: list[list[Decision]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []

    def flood(decisions: list[Decision]) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            decisions.extend(limiter.check("user_123", POLICY) for _ in range(CHECKS_PER_THREAD))
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    with RateLimiter(policies, store=redis_url, timeout=STORE_TIMEOUT) as limiter:
        limiter.peek("warmup", POLICY)  # load the script before the start line
        before = script_calls(redis_client)
        threads = [threading.Thread(target=flood, args=(result,)) for result in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        assert not any(thread.is_alive() for thread in threads)
        calls = script_calls(redis_client) - before
    assert errors == []
    decisions = [decision for result in results for decision in result]
    assert len(decisions) == THREADS * CHECKS_PER_THREAD
    admitted = [decision.remaining for decision in decisions if decision.allowed]
    assert len(admitted) == THREAD_LIMIT
    assert sorted(admitted) == list(range(THREAD_LIMIT))
    assert not any(decision.degraded for decision in decisions)
    # Every admission needed the store; most refusals did not.
    assert THREAD_LIMIT < calls < THREADS * CHECKS_PER_THREAD
