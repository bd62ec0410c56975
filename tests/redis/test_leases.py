"""Leases (Policy.lease) on real servers: the store's lease op, round trips saved, and the
documented worst case of ``nodes × lease`` units over the limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratewall import ALGORITHMS, AsyncRateLimiter, Policy, RateLimiter
from ratewall._calls import CHECK, LEASE, Call
from ratewall.algorithms import FUNCTIONS, lease, rule_for
from ratewall.stores.redis import RedisStore
from ratewall.testing import FakeClock

from ._stats import script_calls

START_US = 1_700_000_000_000_000
TIMEOUT = 5.0  # these tests are about counts, not latency


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    limit=st.integers(1, 40),
    size=st.integers(1, 40),
    ops=st.lists(
        st.tuples(st.sampled_from([0, 1, 250_000, 2_000_000]), st.booleans(), st.integers(1, 5)),
        min_size=1,
        max_size=30,
    ),
)
def test_the_lease_op_is_the_reference_lease(
    redis_url: str,
    redis_client: redis.Redis,
    algorithm: str,
    limit: int,
    size: int,
    ops: list[tuple[int, bool, int]],
) -> None:
    """Every reply of the script's lease op (and of checks in between) equals
    ``algorithms.lease`` run on the reference state."""
    redis_client.flushdb()
    rule = rule_for(Policy(limit, 10, algorithm, lease=min(size, limit)))
    now = [START_US]
    store = RedisStore(redis_url, timeout=TIMEOUT, clock=lambda: now[0])
    state: tuple[int, ...] = ()
    try:
        for step, leasing, raw_cost in ops:
            now[0] += step
            cost = min(raw_cost, rule.capacity)
            reply = store.run_one(Call("ratelimit:{u}:p", LEASE if leasing else CHECK, cost, rule))
            if leasing:
                outcome, granted = lease(FUNCTIONS[rule.algorithm], state, now[0], cost, rule)
            else:
                outcome = FUNCTIONS[rule.algorithm](state, now[0], cost, rule)
                granted = cost if outcome.allowed else 0
            assert tuple(reply[:4]) == (
                int(outcome.allowed),
                outcome.remaining,
                outcome.reset,
                outcome.retry,
            )
            if outcome.allowed:
                assert granted <= max(cost, rule.lease)
                if leasing:
                    assert reply[5] == granted
                assert outcome.state is not None
                state = outcome.state
    finally:
        store.close()


def test_a_hot_key_costs_one_script_call_per_lease(
    redis_url: str, redis_client: redis.Redis
) -> None:
    policies = {"api": Policy(1_000_000, 3600, lease=50)}
    with RateLimiter(policies, store=redis_url, timeout=TIMEOUT) as limiter:
        limiter.check("warm-up", "api")  # loads the script (a NOSCRIPT reply counts too)
        before = script_calls(redis_client)
        decisions = [limiter.check("hot", "api") for _ in range(1000)]
        calls = script_calls(redis_client) - before
    assert all(d.allowed for d in decisions)
    assert calls == 1000 // 50
    # The store counted every leased unit: 20 leases of 50.
    assert limiter.policies["api"].limit - decisions[-1].remaining == 1000


def test_slices_shrink_near_the_limit_and_the_limit_holds_on_one_clock(
    redis_url: str,
) -> None:
    """On one clock (store and node agree), leases end with the store's window: three nodes
    admit exactly the limit per window, and the last units are spread in shrinking slices."""
    clock = FakeClock()
    policies = {"api": Policy(100, 60, lease=30)}
    nodes = [RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=clock) for _ in range(3)]
    try:
        for _window in range(3):
            admitted = 0
            for _ in range(60):
                for node in nodes:
                    admitted += node.check("alice", "api").allowed
            assert admitted == 100
            clock.advance(60)
    finally:
        for node in nodes:
            node.close()


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limit=st.integers(3, 30),
    size=st.integers(2, 30),
    rates=st.lists(st.sampled_from([0.5, 0.9, 1.0, 1.0, 1.1, 2.0]), min_size=1, max_size=4),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1500)), min_size=1, max_size=200),
)
def test_the_worst_case_is_nodes_times_lease_over_the_limit(
    redis_url: str,
    redis_client: redis.Redis,
    limit: int,
    size: int,
    rates: list[float],
    steps: list[tuple[int, int]],
) -> None:
    """Nodes spend leases after the store's window moved on, some with clocks that run at
    half or twice the store's speed (so their leases last twice as long, or half). Over
    every interval of one window (store time) a sliding log admits at most
    ``limit + nodes × lease``."""
    redis_client.flushdb()
    window_us = 10_000_000
    lease_size = min(size, limit)
    policies = {"api": Policy(limit, window_us / 1_000_000, "sliding_log", lease=lease_size)}
    store_now = [START_US]
    nodes = []
    for rate in rates:
        # The injected clock is the store's time; the node's own clock (which times its
        # leases) runs at another rate. The public API has one clock for both, on purpose.
        node = RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=_seconds(store_now))
        node._core._now = _drifting(store_now, rate)
        nodes.append(node)
    admitted: list[int] = []  # store times of admitted units
    try:
        for node_index, step_ms in steps:
            store_now[0] += step_ms * 1000
            if nodes[node_index % len(nodes)].check("alice", "api").allowed:
                admitted.append(store_now[0])
    finally:
        for node in nodes:
            node.close()
    bound = limit + len(nodes) * lease_size
    for start in admitted:
        inside = sum(1 for t in admitted if start <= t < start + window_us)
        assert inside <= bound


def _drifting(store_now: list[int], rate: float) -> Callable[[], int]:
    return lambda: START_US + round((store_now[0] - START_US) * rate)


def _seconds(store_now: list[int]) -> Callable[[], float]:
    return lambda: store_now[0] / 1_000_000


def test_a_lease_spent_late_is_the_overshoot(redis_url: str) -> None:
    """The worst case, built on purpose: node A leases at t=0 and spends its units just
    before its lease ends, while node B takes everything the store's sliding window frees.
    The store never granted more than the limit in any window; the spending exceeds it by
    A's lease, within the documented ``nodes × lease``."""
    clock = FakeClock()
    start = clock()
    limit, lease_size = 10, 5
    policies = {"api": Policy(limit, 10, "sliding_log", lease=lease_size)}
    spent: list[float] = []

    def spend(node: RateLimiter) -> None:
        while node.check("alice", "api").allowed:
            spent.append(clock() - start)

    with (
        RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=clock) as a,
        RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=clock) as b,
    ):
        assert a.check("alice", "api").allowed  # A leases 5: spends 1, holds 4
        spent.append(0.0)
        clock.advance(1)
        spend(b)  # B takes the 5 the store has left
        clock.advance(8.9)
        spend(a)  # t=9.9: A spends its 4 held units, which the store counted at t=0
        clock.advance(0.1)
        spend(b)  # t=10: A's grant left the store's window; B takes 5 more
    in_window = max(sum(1 for t in spent if s <= t < s + 10) for s in spent)
    assert limit < in_window <= limit + 2 * lease_size
    assert in_window == 14


async def test_async_callers_share_one_lease_request_at_a_time(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """64 concurrent callers on a cold key: one asks for a lease, the others make plain
    checks meanwhile, so the node never holds more than one lease's units."""
    policies = {"api": Policy(1000, 3600, lease=100)}
    async with AsyncRateLimiter(policies, store=redis_url, timeout=TIMEOUT) as limiter:
        decisions = await asyncio.gather(*(limiter.check("hot", "api") for _ in range(64)))
        assert all(d.allowed for d in decisions)
        remaining = (await limiter.peek("hot", "api")).remaining
    # Consumed in the store: 63 plain checks (or fewer, if the lease came back first and
    # served some) plus one lease of at most 100 units.
    assert 1000 - remaining <= 64 + 100
