"""Chaos between the limiter and a real server: a fault proxy refuses, blackholes, resets or
delays the traffic. Sync and async limiters, every failure mode: each decision is answered
within the timeout (+50 % slack) as its failure mode says; once the
fault ends the limiter recovers (the breaker's cooldown passes on a FakeClock, not in
sleep); and 20 fault/recover cycles leave no file descriptor and no server connection
behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, deadline_bound, unloaded_time
from ._proxy import FaultProxy, Mode

# Long enough that a loaded CI machine's scheduling (the proxy's threads and the server
# compete with the test) fits in the stated 50 % slack; a decision that waited twice the
# timeout exceeds BOUND.
TIMEOUT = DEADLINE_TIMEOUT
BOUND = deadline_bound(TIMEOUT)
BREAKER_COOLDOWN = 1.0
BREAKER_THRESHOLD = 3
# After the fault ends and the cooldown has passed, the limiter decides normally within
# one second (the decision itself: a reconnect and a script load).
RECOVERY_BOUND = 1.0
FAULTS: tuple[Mode, ...] = ("refuse", "blackhole", "reset", "delay")
CYCLES = 20


def _fault(proxy: FaultProxy, fault: Mode) -> None:
    # A delay of twice the timeout: every call times out, late replies come later still.
    proxy.set_mode(fault, delay=2 * TIMEOUT if fault == "delay" else 0.0)


@pytest.fixture
def proxy(redis_url: str, redis_server: LocalServer) -> Iterator[FaultProxy]:
    del redis_url  # asked for to empty the shared server first
    with FaultProxy(("127.0.0.1", redis_server.port)) as running:
        yield running


def _policies(mode: str) -> dict[str, Policy]:
    return {"p": Policy(1000, 3600, failure_mode=mode)}


def _check_degraded(outcome: Decision | BaseException, mode: str, elapsed: float) -> None:
    assert elapsed < BOUND, f"a decision took {elapsed:.3f} s (timeout {TIMEOUT} s)"
    if mode == "raise":
        assert isinstance(outcome, StoreError), outcome
    else:
        assert isinstance(outcome, Decision), outcome
        assert outcome.degraded
        assert outcome.allowed is (mode == "open")


def _sync_decide(limiter: RateLimiter) -> tuple[Decision | BaseException, float]:
    started = unloaded_time()
    try:
        outcome: Decision | BaseException = limiter.check("user_1", "p")
    except StoreError as error:
        outcome = error
    return outcome, unloaded_time() - started


async def _async_decide(limiter: AsyncRateLimiter) -> tuple[Decision | BaseException, float]:
    started = unloaded_time()
    try:
        outcome: Decision | BaseException = await limiter.check("user_1", "p")
    except StoreError as error:
        outcome = error
    return outcome, unloaded_time() - started


def _recovered(outcome: Decision | BaseException) -> bool:
    return isinstance(outcome, Decision) and not outcome.degraded


@pytest.mark.parametrize("mode", ["open", "closed", "raise"])
@pytest.mark.parametrize("fault", FAULTS)
def test_sync_decisions_during_and_after_a_fault(proxy: FaultProxy, fault: Mode, mode: str) -> None:
    clock = FakeClock()
    with RateLimiter(_policies(mode), store=proxy.url, timeout=TIMEOUT, clock=clock) as limiter:
        assert _recovered(_sync_decide(limiter)[0])
        _fault(proxy, fault)
        for _ in range(BREAKER_THRESHOLD + 2):  # through the breaker's opening
            outcome, elapsed = _sync_decide(limiter)
            _check_degraded(outcome, mode, elapsed)
        proxy.set_mode("forward")
        clock.advance(BREAKER_COOLDOWN + 0.001)
        started = unloaded_time()
        outcome, _ = _sync_decide(limiter)
        assert _recovered(outcome), outcome
        assert unloaded_time() - started < RECOVERY_BOUND


@pytest.mark.parametrize("mode", ["open", "closed", "raise"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_async_decisions_during_and_after_a_fault(
    proxy: FaultProxy, fault: Mode, mode: str
) -> None:
    clock = FakeClock()
    async with AsyncRateLimiter(
        _policies(mode), store=proxy.url, timeout=TIMEOUT, clock=clock
    ) as limiter:
        assert _recovered((await _async_decide(limiter))[0])
        _fault(proxy, fault)
        for _ in range(BREAKER_THRESHOLD + 2):
            outcome, elapsed = await _async_decide(limiter)
            _check_degraded(outcome, mode, elapsed)
        proxy.set_mode("forward")
        clock.advance(BREAKER_COOLDOWN + 0.001)
        started = unloaded_time()
        outcome, _ = await _async_decide(limiter)
        assert _recovered(outcome), outcome
        assert unloaded_time() - started < RECOVERY_BOUND


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _server_connections(port: int) -> int:
    with redis.Redis(port=port, socket_timeout=5.0) as admin:
        return len(admin.client_list()) - 1  # not this one


def _settled(count: Callable[[], int], expected: int) -> int:
    """``count()`` once it is at most ``expected``, or after 2 s: sockets closed by a peer
    leave the proxy's threads (and the server) within a poll interval or two."""
    deadline = time.monotonic() + 2.0
    value = count()
    while value > expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = count()
    return value


@pytest.mark.parametrize("fault", FAULTS)
def test_sync_fault_cycles_leak_nothing(
    proxy: FaultProxy, redis_server: LocalServer, fault: Mode
) -> None:
    clock = FakeClock()
    with RateLimiter(_policies("open"), store=proxy.url, timeout=TIMEOUT, clock=clock) as limiter:
        baseline_fds = baseline_server = 0
        for cycle in range(CYCLES):
            _fault(proxy, fault)
            outcome, elapsed = _sync_decide(limiter)  # one failure: the breaker stays shut
            _check_degraded(outcome, "open", elapsed)
            proxy.set_mode("forward")
            assert _recovered(_sync_decide(limiter)[0])
            if cycle == 0:
                time.sleep(0.1)  # the first cycle's closed sockets leave the proxy
                baseline_fds = _open_fds()
                baseline_server = _server_connections(redis_server.port)
        assert _settled(_open_fds, baseline_fds) <= baseline_fds
        port = redis_server.port
        assert _settled(lambda: _server_connections(port), baseline_server) <= baseline_server


@pytest.mark.parametrize("fault", FAULTS)
async def test_async_fault_cycles_leak_nothing(
    proxy: FaultProxy, redis_server: LocalServer, fault: Mode
) -> None:
    clock = FakeClock()
    async with AsyncRateLimiter(
        _policies("open"), store=proxy.url, timeout=TIMEOUT, clock=clock
    ) as limiter:
        baseline_fds = baseline_server = 0
        for cycle in range(CYCLES):
            _fault(proxy, fault)
            outcome, elapsed = await _async_decide(limiter)
            _check_degraded(outcome, "open", elapsed)
            proxy.set_mode("forward")
            outcome, _ = await _async_decide(limiter)
            if not _recovered(outcome):
                # A call answered late by the same connection may fail once more
                # (replies are matched in order); the next one must not.
                outcome, _ = await _async_decide(limiter)
            assert _recovered(outcome), (cycle, outcome)
            if cycle == 0:
                time.sleep(0.1)
                baseline_fds = _open_fds()
                baseline_server = _server_connections(redis_server.port)
        assert _settled(_open_fds, baseline_fds) <= baseline_fds
        port = redis_server.port
        assert _settled(lambda: _server_connections(port), baseline_server) <= baseline_server
