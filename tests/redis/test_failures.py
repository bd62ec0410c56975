"""Store failures on real server processes: a stopped server, a frozen one (SIGSTOP), lost
scripts, a restart. Every failure is answered within a bound, as the policy's failure mode
says, with the original error chained; the circuit breaker fails fast; recovery needs no help
from the caller.

Limiters that meet a frozen server use DEADLINE_TIMEOUT and are held to the timeout plus 50 %;
the others use STORE_TIMEOUT, so that a loaded machine cannot turn a decision the store should
make into a failure (a stopped server refuses at once, whatever the timeout).

The breaker runs on the limiter's clock, so tests that cross its cooldown inject a FakeClock
(which then also drives the script's time) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import pytest
import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Decision, Policy, RateLimiter, StoreError
from ratewall.core import BreakerOpenError
from ratewall.embedded import LocalServer
from ratewall.observer import BaseObserver
from ratewall.stores._resp import Script
from ratewall.stores.redis import SCRIPT
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, STORE_TIMEOUT, deadline_bound, unloaded_time
from ._stats import libraries

POLICY = "login"
LIMIT = 5
POLICIES = {POLICY: Policy(LIMIT, 60)}
BREAKER_THRESHOLD = 3  # consecutive failures that open the breaker
BREAKER_COOLDOWN = 1.0  # seconds on the limiter's clock
# A frozen server fails each call at the timeout: within it plus the stated slack.
FAILURE_BOUND = deadline_bound(DEADLINE_TIMEOUT)
FAST_CALLS = 100
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
LIBRARY = Script(SCRIPT).library


class _StoreCalls(BaseObserver):
    """Counts the limiter's round trips to its store (attempted ones included)."""

    def __init__(self) -> None:
        self.count = 0

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        self.count += 1


def _policies(failure_mode: str) -> dict[str, Policy]:
    return {POLICY: Policy(LIMIT, 60, failure_mode=failure_mode)}


def _raises_in_time(limiter: RateLimiter, cause: type[BaseException]) -> StoreError:
    """``check`` raises StoreError, chained from ``cause``, within FAILURE_BOUND."""
    started = unloaded_time()
    with pytest.raises(StoreError) as caught:
        limiter.check("user_123", POLICY)
    elapsed = unloaded_time() - started
    assert elapsed < FAILURE_BOUND, f"StoreError took {elapsed:.3f} s"
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
    assert POLICY in str(caught.value)
    return caught.value


async def _araises_in_time(limiter: AsyncRateLimiter, cause: type[BaseException]) -> StoreError:
    started = unloaded_time()
    with pytest.raises(StoreError) as caught:
        await limiter.check("user_123", POLICY)
    elapsed = unloaded_time() - started
    assert elapsed < FAILURE_BOUND, f"StoreError took {elapsed:.3f} s"
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
    return caught.value


# -- (a) a stopped server -----------------------------------------------------------------


@pytest.mark.parametrize("connected", [True, False], ids=["pooled", "never-connected"])
def test_a_stopped_server_raises_store_error_quickly(
    fresh_server: LocalServer, connected: bool
) -> None:
    with RateLimiter(POLICIES, store=fresh_server.url, timeout=STORE_TIMEOUT) as limiter:
        if connected:
            assert limiter.check("user_123", POLICY).allowed
        fresh_server.stop()
        _raises_in_time(limiter, ConnectionError)


async def test_async_a_stopped_server_raises_store_error_quickly(
    fresh_server: LocalServer,
) -> None:
    async with AsyncRateLimiter(POLICIES, store=fresh_server.url, timeout=STORE_TIMEOUT) as limiter:
        assert (await limiter.check("user_123", POLICY)).allowed
        fresh_server.stop()
        await _araises_in_time(limiter, ConnectionError)


# -- (b) a frozen server ------------------------------------------------------------------


def test_a_frozen_server_raises_store_error_quickly_then_recovers(
    fresh_server: LocalServer,
) -> None:
    # redis-py's own defaults would wait about a minute here.
    with RateLimiter(
        POLICIES, store=fresh_server.url, clock=FakeClock(), timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).allowed
        fresh_server.pause()
        try:
            _raises_in_time(limiter, TimeoutError)
        finally:
            fresh_server.resume()
        # One failure does not open the breaker: the very next call reaches the server.
        # (The timed-out call may still have been counted once the server woke up.)
        decision = limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded


def test_after_a_freeze_the_open_breaker_waits_for_its_cooldown(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    with RateLimiter(
        POLICIES, store=fresh_server.url, clock=clock, timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).allowed
        fresh_server.pause()
        try:
            for _ in range(BREAKER_THRESHOLD):
                _raises_in_time(limiter, TimeoutError)
        finally:
            fresh_server.resume()
        # The server is back, but the breaker is open until its cooldown ends: fail fast.
        _raises_in_time(limiter, BreakerOpenError)
        clock.advance(BREAKER_COOLDOWN + 0.001)
        decision = limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded
        assert limiter.check("user_123", POLICY).allowed  # closed again


async def test_async_a_frozen_server_raises_store_error_quickly_then_recovers(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    async with AsyncRateLimiter(
        POLICIES, store=fresh_server.url, clock=clock, timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_123", POLICY)).allowed
        fresh_server.pause()
        try:
            for _ in range(BREAKER_THRESHOLD):
                await _araises_in_time(limiter, TimeoutError)
        finally:
            fresh_server.resume()
        await _araises_in_time(limiter, BreakerOpenError)
        clock.advance(BREAKER_COOLDOWN + 0.001)
        decision = await limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded


# -- (c) failure modes --------------------------------------------------------------------


def _stop(server: LocalServer) -> None:
    server.stop()


def _pause(server: LocalServer) -> None:
    server.pause()


FAULTS = pytest.mark.parametrize("fault", [_stop, _pause], ids=["stopped", "frozen"])


@FAULTS
def test_failure_mode_open_allows_degraded(
    fresh_server: LocalServer, fault: Callable[[LocalServer], None]
) -> None:
    clock = FakeClock()
    with RateLimiter(
        _policies("open"), store=fresh_server.url, clock=clock, timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY) == Decision(
            True, POLICY, LIMIT, LIMIT - 1, 60.0, None
        )
        fault(fresh_server)
        # Network failures first, then the open breaker: neither raises.
        for _ in range(BREAKER_THRESHOLD + 2):
            started = unloaded_time()
            decision = limiter.check("user_123", POLICY)
            assert unloaded_time() - started < FAILURE_BOUND
            assert decision.allowed
            assert decision.degraded
            assert decision.retry_after is None
        assert limiter.peek("user_123", POLICY).degraded
        assert all(d.allowed and d.degraded for d in limiter.check_many([("user_123", POLICY)]))
        fresh_server.resume()


@FAULTS
def test_failure_mode_closed_refuses_degraded(
    fresh_server: LocalServer, fault: Callable[[LocalServer], None]
) -> None:
    clock = FakeClock()
    with RateLimiter(
        _policies("closed"), store=fresh_server.url, clock=clock, timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).allowed
        fault(fresh_server)
        for _ in range(BREAKER_THRESHOLD + 2):
            started = unloaded_time()
            decision = limiter.check("user_123", POLICY)
            assert unloaded_time() - started < FAILURE_BOUND
            assert not decision.allowed
            assert decision.degraded
            assert decision.retry_after is not None
            assert decision.retry_after > 0
        assert limiter.peek("user_123", POLICY).degraded
        assert all(not d.allowed and d.degraded for d in limiter.check_many([("user_123", POLICY)]))
        fresh_server.resume()


# -- (d) the circuit breaker --------------------------------------------------------------


def test_the_open_breaker_fails_fast_without_touching_the_network(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()  # the breaker's cooldown cannot end while the test measures
    store_calls = _StoreCalls()
    with RateLimiter(
        POLICIES,
        store=fresh_server.url,
        clock=clock,
        observer=store_calls,
        timeout=DEADLINE_TIMEOUT,
    ) as limiter:
        assert limiter.check("user_123", POLICY).allowed
        fresh_server.pause()
        try:
            for _ in range(BREAKER_THRESHOLD):
                _raises_in_time(limiter, TimeoutError)
            causes = []
            calls_before = store_calls.count
            assert calls_before >= BREAKER_THRESHOLD + 1  # the counter sees real round trips
            started = unloaded_time()
            for _ in range(FAST_CALLS):
                try:
                    limiter.check("user_123", POLICY)
                except StoreError as error:
                    causes.append(error.__cause__)
            elapsed = unloaded_time() - started
            # Not one of them reached the store, and none waited for it: all of them together
            # took less than one call that waits for the frozen server.
            assert store_calls.count == calls_before
            assert elapsed < DEADLINE_TIMEOUT, f"{FAST_CALLS} calls took {elapsed:.3f} s"
            assert len(causes) == FAST_CALLS
            assert all(isinstance(cause, BreakerOpenError) for cause in causes)
            # After the cooldown one call probes the (still frozen) server, fails, and
            # opens the breaker again.
            clock.advance(BREAKER_COOLDOWN + 0.001)
            _raises_in_time(limiter, TimeoutError)
            _raises_in_time(limiter, BreakerOpenError)
        finally:
            fresh_server.resume()
        clock.advance(BREAKER_COOLDOWN + 0.001)
        assert limiter.check("user_123", POLICY).allowed


CONCURRENT = 20  # callers caught by one stall: more than the breaker's threshold


async def _concurrent_failures(limiter: AsyncRateLimiter) -> None:
    """CONCURRENT checks at once against the frozen server: every one fails in time."""
    started = unloaded_time()
    outcomes = await asyncio.gather(
        *(limiter.check(f"user_{n}", POLICY) for n in range(CONCURRENT)), return_exceptions=True
    )
    assert unloaded_time() - started < FAILURE_BOUND
    assert all(isinstance(outcome, StoreError) for outcome in outcomes), outcomes
    causes = [outcome.__cause__ for outcome in outcomes if isinstance(outcome, StoreError)]
    assert all(isinstance(cause, TimeoutError) for cause in causes), causes


@pytest.mark.parametrize("rounds", [1, BREAKER_THRESHOLD - 1, BREAKER_THRESHOLD])
async def test_calls_caught_by_one_stall_count_as_one_failure(
    fresh_server: LocalServer, rounds: int
) -> None:
    # Concurrent callers share script calls, so one stall fails many decisions at once.
    # They are one piece of evidence: below the threshold's worth of rounds (each planned
    # after the previous one failed) the next call goes to the server; at it, the store
    # that stayed down has opened the breaker.
    async with AsyncRateLimiter(
        POLICIES, store=fresh_server.url, clock=FakeClock(), timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_0", POLICY)).allowed
        fresh_server.pause()
        try:
            for _ in range(rounds):
                await _concurrent_failures(limiter)
            if rounds >= BREAKER_THRESHOLD:
                await _araises_in_time(limiter, BreakerOpenError)
        finally:
            fresh_server.resume()
        if rounds < BREAKER_THRESHOLD:
            decision = await limiter.check("user_0", POLICY)
            assert decision.allowed
            assert not decision.degraded


# -- (e) scripts and functions flushed ---------------------------------------------------


def _loaded(client: redis.Redis) -> bool:
    """ratewall's code is on the server: its function library or its cached script."""
    return LIBRARY in libraries(client) or client.script_exists(SCRIPT_SHA) == [True]


def _flush_code(client: redis.Redis) -> None:
    client.function_flush()
    client.script_flush()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flushed_code_between_two_checks_is_recovered(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    policies = {POLICY: Policy(LIMIT, 60, algorithm)}
    with RateLimiter(
        policies, store=redis_url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).remaining == LIMIT - 1
        assert _loaded(redis_client)
        _flush_code(redis_client)
        assert not _loaded(redis_client)
        decision = limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded
        assert decision.remaining == LIMIT - 2  # the count continued
        assert _loaded(redis_client)


async def test_async_flushed_code_between_two_checks_is_recovered(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with AsyncRateLimiter(
        POLICIES, store=redis_url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_123", POLICY)).remaining == LIMIT - 1
        _flush_code(redis_client)
        assert not _loaded(redis_client)
        decision = await limiter.check("user_123", POLICY)
        assert decision.allowed
        assert decision.remaining == LIMIT - 2
        assert _loaded(redis_client)


# -- (f) a restart ------------------------------------------------------------------------


def test_a_restart_is_invisible_to_the_caller(fresh_server: LocalServer) -> None:
    with RateLimiter(
        POLICIES, store=fresh_server.url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).remaining == LIMIT - 1
        fresh_server.restart()  # data and scripts lost, pooled connection dead
        # Zero errors: the dead pooled connection is replaced and the script reloaded.
        decision = limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded
        assert decision.remaining == LIMIT - 1  # a new window: the count was lost


async def test_async_a_restart_is_invisible_to_the_caller(fresh_server: LocalServer) -> None:
    async with AsyncRateLimiter(
        POLICIES, store=fresh_server.url, clock=FakeClock(), timeout=STORE_TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_123", POLICY)).remaining == LIMIT - 1
        fresh_server.restart()
        decision = await limiter.check("user_123", POLICY)
        assert decision.allowed
        assert not decision.degraded
        assert decision.remaining == LIMIT - 1


# -- (g) reset on a dead store ------------------------------------------------------------


@pytest.mark.parametrize("failure_mode", ["raise", "open", "closed"])
def test_reset_on_a_dead_store_raises_whatever_the_failure_mode(
    fresh_server: LocalServer, failure_mode: str
) -> None:
    with RateLimiter(
        _policies(failure_mode), store=fresh_server.url, timeout=STORE_TIMEOUT
    ) as limiter:
        assert limiter.check("user_123", POLICY).allowed
        fresh_server.stop()
        started = unloaded_time()
        with pytest.raises(StoreError) as caught:
            limiter.reset("user_123", POLICY)
        assert unloaded_time() - started < FAILURE_BOUND
        assert isinstance(caught.value.__cause__, ConnectionError)


async def test_async_reset_on_a_dead_store_raises(fresh_server: LocalServer) -> None:
    async with AsyncRateLimiter(
        _policies("open"), store=fresh_server.url, timeout=STORE_TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_123", POLICY)).allowed
        fresh_server.stop()
        with pytest.raises(StoreError) as caught:
            await limiter.reset("user_123", POLICY)
        assert isinstance(caught.value.__cause__, ConnectionError)
