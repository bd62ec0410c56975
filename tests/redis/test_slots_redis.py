"""Concurrency slots on real servers: the Lua script decides exactly like the memory store,
keys always carry a TTL, and the limiter's slot API works on Redis, sync and asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall._calls import SlotCall
from ratewall.algorithms import (
    SLOT_ACQUIRE,
    SLOT_PEEK,
    SLOT_RELEASE,
    SLOT_RENEW,
    SLOT_RESET,
    Rule,
    rule_for,
)
from ratewall.stores import MemoryStore
from ratewall.stores.batching import AsyncRedisStore
from ratewall.stores.redis import RedisStore
from ratewall.testing import FailingStore, FakeClock

from .._timing import STORE_TIMEOUT

START_US = 1_700_000_000_000_000
KEYS = ("ratelimit:{a}:p", "ratelimit:{b}:p")
TOKENS = ("t1", "t2", "t3", "t4", "t5")
# Leases of seconds: Redis expires keys in real time while the injected clock stands still,
# and a key must not vanish in real time while it is alive on the fake clock.
RULES = st.builds(
    lambda limit, lease: rule_for(Policy(limit, lease, algorithm="concurrency")),
    limit=st.integers(1, 4),
    lease=st.integers(5, 30),
)
OPS = st.sampled_from((SLOT_ACQUIRE, SLOT_ACQUIRE, SLOT_RENEW, SLOT_RELEASE, SLOT_PEEK))
STEP = st.tuples(
    st.integers(0, 12_000_000),  # µs to advance before the call
    st.sampled_from(KEYS),
    OPS,
    st.sampled_from(TOKENS),
    st.integers(1, 4),  # a peek's cost (capped at the limit)
    st.integers(0, 1),  # which of the two rules (a policy's own, or an override's)
)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rules=st.tuples(RULES, RULES), steps=st.lists(STEP, min_size=1, max_size=40))
def test_the_script_decides_exactly_like_the_memory_store(
    redis_url: str,
    rules: tuple[Rule, Rule],
    steps: list[tuple[int, str, int, str, int, int]],
) -> None:
    now = [START_US]
    store = RedisStore(redis_url, timeout=5.0, clock=lambda: now[0])
    memory = MemoryStore(lambda: now[0])
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*KEYS)
        for advance, key, op, token, cost, which in steps:
            now[0] += advance
            rule = rules[which]
            call = SlotCall(key, op, token, min(cost, rule.limit), rule)
            assert list(store.run_slot(call)) == list(memory.run_slot(call)), call
            ttl = client.pttl(key)
            if client.exists(key):
                assert client.type(key) == b"zset"
                assert 0 < ttl <= max(r.window for r in rules) // 1000
        for key in KEYS:
            reset = SlotCall(key, SLOT_RESET, "", 1, rules[0])
            assert list(store.run_slot(reset)) == list(memory.run_slot(reset))
            assert not client.exists(key)
    finally:
        store.close()
        client.close()


def test_a_value_of_another_algorithm_under_the_key_counts_as_no_state(
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """A policy switched between a rate algorithm and concurrency keeps its name: each
    script treats the other's value as no state, and neither fails."""
    rate = {"p": Policy(5, 60)}
    slots = {"p": Policy(1, 60, algorithm="concurrency")}
    with RateLimiter(rate, redis_url, timeout=STORE_TIMEOUT) as limiter:
        assert limiter.check("u", "p").allowed
    with RateLimiter(slots, redis_url, timeout=STORE_TIMEOUT) as limiter:
        assert limiter.peek("u", "p").allowed
        with limiter.slot("u", "p") as decision:
            assert decision.allowed
            assert redis_client.type("ratelimit:{u}:p") == b"zset"
            with RateLimiter(rate, redis_url, timeout=STORE_TIMEOUT) as other:
                assert other.check("u", "p").remaining == 4


def test_the_sync_limiter_holds_slots_on_redis(redis_client: redis.Redis, redis_url: str) -> None:
    policies = {"exports": Policy(2, 30, algorithm="concurrency")}
    with RateLimiter(policies, redis_url, timeout=2.0) as limiter:
        with limiter.slot("c", "exports") as one, limiter.slot("c", "exports") as two:
            assert one.allowed
            assert two.allowed
            assert two.remaining == 0
            assert 0 < redis_client.pttl("ratelimit:{c}:exports") <= 30_000
            with limiter.slot("c", "exports") as three:
                assert not three.allowed
                assert 29 < (three.retry_after or 0) <= 30
        assert not redis_client.exists("ratelimit:{c}:exports")  # the last release emptied it
        held = limiter.acquire_slot("c", "exports")
        limiter.reset("c", "exports")
        assert not held.renew()
        assert not held.held


async def test_the_async_limiter_holds_slots_on_redis(
    redis_client: redis.Redis, redis_url: str
) -> None:
    policies = {"exports": Policy(1, 30, algorithm="concurrency")}
    async with AsyncRateLimiter(policies, redis_url, timeout=2.0) as limiter:
        async with limiter.slot("c", "exports") as one:
            assert one.allowed
            async with limiter.slot("c", "exports") as two:
                assert not two.allowed
        assert (await limiter.peek("c", "exports")).allowed
        slot = await limiter.acquire_slot("c", "exports")
        assert slot.held
        assert await slot.renew()
        await slot.release()
        assert not redis_client.exists("ratelimit:{c}:exports")


async def test_an_acquisition_cancelled_in_flight_gives_its_slot_back(redis_url: str) -> None:
    policies = {"exports": Policy(1, 30, algorithm="concurrency")}
    async with AsyncRateLimiter(policies, redis_url, timeout=2.0) as limiter:
        for _ in range(20):  # cancel at several points of the round trip
            task = asyncio.create_task(limiter.acquire_slot("c", "exports"))
            await asyncio.sleep(0)
            task.cancel()
            try:
                slot = await task
            except asyncio.CancelledError:
                pass
            else:
                await slot.release()
            for _ in range(200):  # a give-back is one round trip away
                if (await limiter.peek("c", "exports")).allowed:
                    break
                await asyncio.sleep(0.005)
            assert (await limiter.peek("c", "exports")).allowed


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_long_holders_keep_their_slot_by_renewing_in_the_background(
    redis_url: str, kind: str
) -> None:
    """A real lease of 1.5 s held for 3.5 s: only the background renewals (every 0.5 s) can
    keep it. Bounded real time: no clock can stand in for the server's expiring a lease."""
    policies = {"exports": Policy(1, 1.5, algorithm="concurrency")}
    hold = 3.5

    def sync_run() -> tuple[bool, bool, bool]:
        with RateLimiter(policies, redis_url, timeout=2.0) as limiter:
            slot = limiter.acquire_slot("c", "exports")
            time.sleep(hold)
            competitor = limiter.acquire_slot("c", "exports")
            held = slot.held
            slot.release()
            return slot.allowed, held, competitor.allowed

    async def async_run() -> tuple[bool, bool, bool]:
        async with AsyncRateLimiter(policies, redis_url, timeout=2.0) as limiter:
            slot = await limiter.acquire_slot("c", "exports")
            await asyncio.sleep(hold)
            competitor = await limiter.acquire_slot("c", "exports")
            held = slot.held
            await slot.release()
            return slot.allowed, held, competitor.allowed

    result = sync_run() if kind == "sync" else asyncio.run(async_run())
    assert result == (True, True, False)


def test_the_async_store_serves_slots_through_its_own_connection(redis_url: str) -> None:
    async def run() -> list[int]:
        store = AsyncRedisStore(redis_url, timeout=2.0, clock=lambda: START_US)
        try:
            rule = rule_for(Policy(1, 10, algorithm="concurrency"))
            call = SlotCall("ratelimit:{z}:p", SLOT_ACQUIRE, "t", 1, rule)
            return [(await store.arun_slot(call))[0] for _ in range(2)] + [
                (await store.arun_slot(call._replace(token="u")))[0]
            ]
        finally:
            await store.aclose()

    assert asyncio.run(run()) == [1, 1, 0]  # a holder re-acquiring keeps its one slot


def test_renewals_the_store_does_not_answer_give_up_after_a_lease(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store = FailingStore(redis_url, failing=None, timeout=2.0)
    policies = {"exports": Policy(1, 60, algorithm="concurrency")}
    with RateLimiter(policies, store, clock=clock) as limiter:
        slot = limiter.acquire_slot("c", "exports")
        with store.failures("refuse"):
            clock.advance(59)
            assert slot.renew()  # within the lease (this process's clock): try again later
            assert "renewing a slot" in caplog.text
            clock.advance(1)
            assert not slot.renew()  # a whole lease without an answer: lost, renewals stop
        assert slot.held is False
        assert "did not answer renewals for a whole lease" in caplog.text
        slot.release()
        store.close()
