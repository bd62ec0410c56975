"""Automatic batching of async decisions on a real server: how many script calls concurrent
callers share, that the requests sharing one stay each all or nothing, and that a failure
or a cancellation touches only the calls it concerns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, Policy, StoreError
from ratewall.embedded import LocalServer
from ratewall.observer import BaseObserver
from ratewall.stores.batching import AsyncRedisStore
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, unloaded_time
from ._stats import script_calls

DAY = 86_400
# Generous: these tests count round trips and check replies, they do not time anything.
TIMEOUT = 5.0


async def _warm(limiter: AsyncRateLimiter, client: redis.Redis, policy: str) -> None:
    """Open the connection and load the script, then count script calls from zero."""
    await limiter.peek("warm-up", policy)
    client.config_resetstat()


async def test_a_lone_call_is_one_script_call(redis_url: str, redis_client: redis.Redis) -> None:
    async with AsyncRateLimiter({"p": Policy(5, DAY)}, store=redis_url, timeout=TIMEOUT) as limiter:
        await _warm(limiter, redis_client, "p")
        for expected in range(4, 1, -1):
            assert (await limiter.check("user_1", "p")).remaining == expected
        assert script_calls(redis_client) == 3


async def test_concurrent_callers_share_script_calls(
    redis_url: str, redis_client: redis.Redis
) -> None:
    callers = 64
    async with AsyncRateLimiter(
        {"p": Policy(1000, DAY)}, store=redis_url, timeout=TIMEOUT
    ) as limiter:
        await _warm(limiter, redis_client, "p")
        decisions = await asyncio.gather(
            *(limiter.check(f"user_{n % 8}", "p") for n in range(callers))
        )
        # The first goes alone; the 63 that queue behind it in the same loop turn leave in
        # even shares of the two script calls that may be in flight: 32, then 31 (or 16
        # and 15, if both calls in flight have returned by then).
        assert script_calls(redis_client) <= 4
    assert all(decision.allowed for decision in decisions)
    remaining = sorted(d.remaining for d in decisions)
    # Eight identities, eight calls each: every identity saw 999 down to 992, once each.
    assert remaining == sorted(list(range(992, 1000)) * 8)


async def test_requests_sharing_a_script_call_stay_all_or_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Adjacent check_many requests in one script call: a refused one must neither consume
    # its other policy nor drag the next request (an allowed one) down with it.
    policies = {"tight": Policy(1, DAY), "loose": Policy(10, DAY)}
    async with AsyncRateLimiter(
        policies, store=redis_url, timeout=TIMEOUT, local_cache_size=0
    ) as limiter:
        assert (await limiter.check("spent", "tight")).allowed
        await _warm(limiter, redis_client, "loose")
        calls: list[Awaitable[Any]] = [
            limiter.peek("someone", "loose"),  # goes alone: the next ones queue together
            limiter.check_many([("spent", "tight"), ("spent", "loose")]),
            limiter.check_many([("fresh", "tight"), ("fresh", "loose")]),
            *(limiter.check(f"single_{n}", "loose") for n in range(10)),
            limiter.check_many([("spent", "loose"), ("other", "loose")]),
        ]
        lone, refused, allowed, *singles, last = await asyncio.gather(*calls)
        # 1 call in flight and 16 queued: the first script call after the lone one takes
        # an even share, 8 calls, the two check_many requests first.
        assert script_calls(redis_client) <= 4
        assert lone.allowed
        assert [d.allowed for d in refused] == [False, True]
        assert [d.allowed for d in allowed] == [True, True]
        assert [d.remaining for d in allowed] == [0, 9]
        assert all(d.remaining == 9 for d in singles)
        assert [d.remaining for d in last] == [9, 9]
        # The refused request consumed nothing: "spent" lost one unit of "loose" only in
        # the last request (a peek tells what would remain after one more).
        assert (await limiter.peek("spent", "loose")).remaining == 8


async def test_replies_reach_their_own_callers(redis_url: str) -> None:
    # Each caller checks its own identity with its own cost: a reply handed to the wrong
    # caller would show up as a wrong remaining count.
    callers = 300
    async with AsyncRateLimiter(
        {"p": Policy(1000, DAY)}, store=redis_url, timeout=TIMEOUT
    ) as limiter:
        decisions = await asyncio.gather(
            *(limiter.check(f"user_{n}", "p", cost=1 + n % 7) for n in range(callers))
        )
    assert [d.remaining for d in decisions] == [999 - n % 7 for n in range(callers)]


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis_url: str) -> None:
    async with AsyncRateLimiter(
        {"p": Policy(1000, DAY)}, store=redis_url, timeout=TIMEOUT
    ) as limiter:
        tasks = [
            asyncio.ensure_future(limiter.check(f"user_{n}", "p", cost=1 + n % 5))
            for n in range(40)
        ]
        await asyncio.sleep(0)  # every task has queued or sent its call
        tasks[0].cancel()  # the lone first call, in flight
        tasks[7].cancel()  # a call in a batch
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert isinstance(done[7], asyncio.CancelledError)
        for n, decision in enumerate(done):
            if n not in (0, 7):
                assert isinstance(decision, Decision)
                assert decision.remaining == 1000 - (1 + n % 5)
        # The connection is still in step: the next call gets its own reply.
        assert (await limiter.check("user_1", "p")).remaining == 1000 - 2 - 1


async def test_a_timed_out_call_fails_alone_and_its_late_reply_is_dropped(
    fresh_server: LocalServer,
) -> None:
    # Different limits, so that a late reply handed to the next caller would show.
    policies = {
        "five": Policy(5, DAY, failure_mode="raise"),
        "seven": Policy(7, DAY, failure_mode="raise"),
    }
    # A timeout a loaded CI machine can hold for the calls right after the server wakes
    # (it answers the timed-out call first); the freeze still outlasts it.
    async with AsyncRateLimiter(
        policies, store=fresh_server.url, timeout=DEADLINE_TIMEOUT, clock=FakeClock()
    ) as limiter:
        assert (await limiter.check("user_1", "five")).remaining == 4
        fresh_server.pause()
        try:
            with pytest.raises(StoreError) as caught:
                await limiter.check("user_1", "five")
            assert isinstance(caught.value.__cause__, TimeoutError)
        finally:
            fresh_server.resume()
        # The same connection (one timeout does not replace it) answers the timed-out
        # call first, late; that reply is dropped and this caller gets its own.
        decisions = await asyncio.gather(
            limiter.check("user_2", "seven"), limiter.check("user_3", "seven", cost=2)
        )
        assert [d.remaining for d in decisions] == [6, 5]
        # The timed-out call did reach the server, late: it was counted (never zero times),
        # so a peek finds 5 - 2 - 1 left.
        assert (await limiter.peek("user_1", "five")).remaining == 2


async def test_concurrent_callers_recover_from_a_script_flush(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with AsyncRateLimiter(
        {"p": Policy(1000, DAY)}, store=redis_url, timeout=TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_1", "p")).remaining == 999
        redis_client.script_flush()
        decisions = await asyncio.gather(*(limiter.check("user_1", "p") for _ in range(100)))
    assert not any(d.degraded for d in decisions)
    assert sorted(d.remaining for d in decisions) == list(range(899, 999))


async def test_concurrent_callers_survive_a_restart(fresh_server: LocalServer) -> None:
    async with AsyncRateLimiter(
        {"p": Policy(1000, DAY)}, store=fresh_server.url, timeout=TIMEOUT
    ) as limiter:
        assert (await limiter.check("user_1", "p")).remaining == 999
        fresh_server.restart()  # the connection dies; data and scripts are lost
        decisions = await asyncio.gather(*(limiter.check("user_1", "p") for _ in range(100)))
    assert not any(d.degraded for d in decisions)
    assert sorted(d.remaining for d in decisions) == list(range(900, 1000))


async def test_calls_after_aclose_fail(redis_url: str) -> None:
    limiter = AsyncRateLimiter(
        {"p": Policy(5, DAY, failure_mode="raise")}, store=redis_url, timeout=TIMEOUT
    )
    assert (await limiter.check("user_1", "p")).allowed
    await limiter.aclose()
    with pytest.raises(StoreError) as caught:
        await limiter.check("user_1", "p")
    assert isinstance(caught.value.__cause__, ConnectionError)


async def test_a_caller_queued_behind_a_stalled_call_waits_one_timeout_not_two(
    fresh_server: LocalServer,
) -> None:
    """With the server frozen, callers that queue behind the calls in flight (two at most)
    fail within the store timeout of their own start: their batch inherits the oldest
    waiter's deadline instead of starting a fresh timeout once the stalled calls give up
    (before: up to twice the timeout)."""
    timeout = 0.5
    bound = timeout * 1.5  # the stated slack; the old behaviour took ~1.8 × timeout
    policies = {"api": Policy(1000, 60, failure_mode="open")}
    async with AsyncRateLimiter(policies, fresh_server.url, timeout=timeout) as limiter:
        assert (await limiter.check("warm", "api")).allowed
        fresh_server.pause()
        try:

            async def timed(delay: float) -> float:
                await asyncio.sleep(delay)
                started = unloaded_time()
                decision = await limiter.check(f"user_{delay}", "api")
                assert decision.degraded
                return unloaded_time() - started

            elapsed = await asyncio.gather(*(timed(d) for d in (0.0, 0.02, 0.04, 0.06)))
        finally:
            fresh_server.resume()
    assert max(elapsed) < bound, [round(e, 3) for e in elapsed]


class _BatchSizes(BaseObserver):
    """Records how many calls each script call carried, in the order the replies came."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        self.sizes.append(calls)


async def _one_per_loop_turn(limiter: AsyncRateLimiter, identities: list[str]) -> list[Decision]:
    """Start one check per event-loop turn, as grpc.aio hands a server one RPC per turn."""
    tasks = []
    for identity in identities:
        tasks.append(asyncio.ensure_future(limiter.check(identity, "p")))
        await asyncio.sleep(0)  # one loop turn, no time
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("window", [0.0, 0.5])
async def test_a_batch_window_gathers_calls_that_arrive_one_per_loop_turn(
    fresh_server: LocalServer, window: float
) -> None:
    """With the server frozen so the first call stays in flight, 19 calls arrive one loop
    turn apart. Without a window the second leaves at the end of its own turn (two script
    calls in flight, one call each); with one, it waits for the calls behind it and they
    share the script calls: 1, then 10 and 9. Counts stay exact either way."""
    store = AsyncRedisStore(fresh_server.url, timeout=TIMEOUT, batch_window=window)
    sizes = _BatchSizes()
    async with AsyncRateLimiter({"p": Policy(1000, DAY)}, store, timeout=TIMEOUT) as limiter:
        await limiter.peek("warm-up", "p")
        store.observe(sizes)
        # Frozen before the first call leaves, so that its reply cannot come back before the
        # freeze (a race the server wins when this process is descheduled in between).
        fresh_server.pause()
        try:
            first = asyncio.ensure_future(limiter.check("user_0", "p"))
            await asyncio.sleep(0)
            pending = asyncio.ensure_future(
                _one_per_loop_turn(limiter, [f"user_{n % 4}" for n in range(1, 20)])
            )
            for _ in range(40):  # let every call queue (or leave), in loop turns only
                await asyncio.sleep(0)
        finally:
            fresh_server.resume()
        decisions = [await first, *await pending]
        await store.aclose()
    if window:
        assert sizes.sizes == [1, 10, 9]
    else:
        assert sizes.sizes[:2] == [1, 1]
    assert all(d.allowed for d in decisions)
    # Four identities, five calls each: each saw 999 down to 995, once each.
    assert sorted(d.remaining for d in decisions) == sorted(list(range(995, 1000)) * 4)


async def test_a_batch_window_never_delays_a_caller_alone(redis_url: str) -> None:
    """A caller that waits for each reply before its next call finds nothing in flight: its
    calls leave at once, never held for the (here 1 s) window."""
    store = AsyncRedisStore(redis_url, timeout=TIMEOUT, batch_window=1.0)
    sizes = _BatchSizes()
    async with AsyncRateLimiter({"p": Policy(1000, DAY)}, store, timeout=TIMEOUT) as limiter:
        await limiter.peek("warm-up", "p")
        store.observe(sizes)
        started = unloaded_time()
        for expected in range(999, 994, -1):
            assert (await limiter.check("user_1", "p")).remaining == expected
        elapsed = unloaded_time() - started
        await store.aclose()
    assert sizes.sizes == [1] * 5
    assert elapsed < 0.9, elapsed  # five round trips, not five windows


def test_a_batch_window_out_of_range_is_refused() -> None:
    for window in (-0.001, 1.5):
        with pytest.raises(ValueError, match="batch_window must be 0 to 1 seconds"):
            AsyncRedisStore("redis://127.0.0.1:1/0", batch_window=window)


async def test_an_observer_that_fails_on_a_store_call_fails_no_caller(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The async store reports each round trip to the observer itself (no helper in
    between): an observer's bug is logged, and every caller still gets its decision."""

    class Broken(BaseObserver):
        def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
            raise RuntimeError("observer bug")

    policies = {"p": Policy(100, DAY)}
    async with AsyncRateLimiter(policies, redis_url, timeout=TIMEOUT, observer=Broken()) as limiter:
        with caplog.at_level(logging.ERROR, logger="ratewall"):
            lone = await limiter.check("lone", "p")
            crowd = await asyncio.gather(*(limiter.check(f"u{n}", "p") for n in range(20)))
    assert lone.allowed
    assert all(decision.allowed for decision in crowd)
    assert {r.getMessage() for r in caplog.records} == {"ratewall observer failed on a store call"}


class _ShiftedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is not time.monotonic() (as uvloop's is its own)."""

    def time(self) -> float:
        return super().time() + 10_000.0


def test_deadlines_are_in_the_loops_own_time(redis_url: str) -> None:
    """A queued call's deadline is taken from the loop's clock: from time.monotonic()
    directly on asyncio's own loops (one Python call less), from loop.time() on any other.
    Were the shifted loop's deadlines read from time.monotonic(), they would lie 10,000 s
    in its past and every call would time out at once."""

    async def decide() -> list[Decision]:
        async with AsyncRateLimiter({"p": Policy(100, DAY)}, redis_url, timeout=TIMEOUT) as limiter:
            lone = await limiter.check("lone", "p")
            crowd = await asyncio.gather(*(limiter.check(f"u{n}", "p") for n in range(20)))
            return [lone, *crowd]

    for factory in (_ShiftedLoop, asyncio.SelectorEventLoop):
        with asyncio.Runner(loop_factory=factory) as runner:
            decisions = runner.run(decide())
        assert all(d.allowed and not d.degraded for d in decisions), factory
