"""One deadline per decision: however many steps a call takes (resolving the name,
connecting, the TLS and command handshakes, reloading the script), a sync decision is
answered by the policy's failure mode within the store timeout, not within a timeout per
step. The async store already runs each call under one timer; it is held to the same
bound here."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from ratewall import AsyncRateLimiter, Policy, RateLimiter, StoreError
from ratewall._calls import CHECK
from ratewall.embedded import LocalServer
from ratewall.stores._arguments import Arguments
from ratewall.stores._connection import ConnectionPool
from ratewall.stores._lua import SCRIPT
from ratewall.stores._resp import Endpoint, Script
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, deadline_bound, unloaded_time
from ._proxy import FaultProxy

# Long enough that a loaded CI machine's scheduling fits in the stated 50 % slack.
TIMEOUT = DEADLINE_TIMEOUT
BOUND = deadline_bound(TIMEOUT)
# Each step through the delaying proxy takes 2 x DELAY (there and back): under the timeout,
# so a per-step timeout never fires, while the six steps of a first call (AUTH, SELECT,
# CLIENT SETNAME, FCALL, FUNCTION LOAD, FCALL) take 6 x 0.4 x TIMEOUT = 2.4 x TIMEOUT: a
# deadline per step would exceed BOUND.
DELAY = TIMEOUT * 0.2


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def _policies(mode: str) -> dict[str, Policy]:
    return {"p": Policy(5, 60, failure_mode=mode)}


def _answered_in_time(limiter: RateLimiter, mode: str) -> None:
    started = unloaded_time()
    if mode == "raise":
        with pytest.raises(StoreError):
            limiter.check("user_1", "p")
    else:
        decision = limiter.check("user_1", "p")
        assert decision.degraded
        assert decision.allowed is (mode == "open")
    elapsed = unloaded_time() - started
    assert elapsed < BOUND, f"the decision took {elapsed:.3f} s (timeout {TIMEOUT} s)"


async def _aanswered_in_time(limiter: AsyncRateLimiter, mode: str) -> None:
    started = unloaded_time()
    if mode == "raise":
        with pytest.raises(StoreError):
            await limiter.check("user_1", "p")
    else:
        decision = await limiter.check("user_1", "p")
        assert decision.degraded
        assert decision.allowed is (mode == "open")
    elapsed = unloaded_time() - started
    assert elapsed < BOUND, f"the decision took {elapsed:.3f} s (timeout {TIMEOUT} s)"


MODES = pytest.mark.parametrize("mode", ["open", "closed", "raise"])


@MODES
def test_a_server_that_never_answers(silent_port: int, mode: str) -> None:
    url = f"redis://user:pw@127.0.0.1:{silent_port}/2"
    with RateLimiter(_policies(mode), store=url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        _answered_in_time(limiter, mode)


@MODES
async def test_an_async_server_that_never_answers(silent_port: int, mode: str) -> None:
    url = f"redis://user:pw@127.0.0.1:{silent_port}/2"
    async with AsyncRateLimiter(
        _policies(mode), store=url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        await _aanswered_in_time(limiter, mode)


@pytest.fixture
def slow_proxy(fresh_server: LocalServer) -> Iterator[FaultProxy]:
    """A proxy delaying every chunk by DELAY, before a server that requires a password (a
    dedicated server: the password goes with it)."""
    with redis.Redis(port=fresh_server.port, socket_timeout=5.0) as admin:
        admin.config_set("requirepass", "pw")
    with FaultProxy(("127.0.0.1", fresh_server.port)) as proxy:
        proxy.set_mode("delay", DELAY)
        yield proxy


def _slow_url(proxy: FaultProxy) -> str:
    # A password and a database: the handshake has three steps.
    return f"redis://default:pw@127.0.0.1:{proxy.port}/2"


@MODES
def test_a_slow_handshake_and_script_load_share_one_deadline(
    slow_proxy: FaultProxy, mode: str
) -> None:
    with RateLimiter(
        _policies(mode), store=_slow_url(slow_proxy), timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        _answered_in_time(limiter, mode)
    # The same steps without the delay succeed: the timeout was the only obstacle.
    slow_proxy.set_mode("forward")
    with RateLimiter(_policies("raise"), store=_slow_url(slow_proxy), timeout=TIMEOUT) as limiter:
        assert not limiter.check("user_1", "p").degraded


@MODES
async def test_an_async_slow_handshake_and_script_load_share_one_deadline(
    slow_proxy: FaultProxy, mode: str
) -> None:
    async with AsyncRateLimiter(
        _policies(mode), store=_slow_url(slow_proxy), timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        await _aanswered_in_time(limiter, mode)


@MODES
def test_an_unresolvable_host(mode: str) -> None:
    url = "redis://nonexistent.invalid:6379"
    with RateLimiter(_policies(mode), store=url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        _answered_in_time(limiter, mode)


@MODES
async def test_an_async_unresolvable_host(mode: str) -> None:
    url = "redis://nonexistent.invalid:6379"
    async with AsyncRateLimiter(
        _policies(mode), store=url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        await _aanswered_in_time(limiter, mode)


def test_a_resolver_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The system resolver can wait seconds per DNS server and attempt; here it hangs until
    # the test releases it (a fault injected into the resolver: no server is faked).
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging_getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        if host == "hangs.example":
            release.wait(10)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    try:
        url = "redis://hangs.example:6379"
        with RateLimiter(
            _policies("closed"), store=url, timeout=TIMEOUT, clock=FakeClock()
        ) as limiter:
            _answered_in_time(limiter, "closed")
    finally:
        release.set()


def test_a_pooled_connection_gets_the_whole_timeout_back_for_its_next_call(
    redis_url: str,
) -> None:
    """The first send of a call on a pooled connection reads no clock: it trusts the
    socket's timeout when that is (within the slack) the store timeout. A previous call
    may have shortened it (its reply took a while): the next call restores it before
    sending, so that it never fails early."""
    call = RateLimiter({"p": Policy(5, 60)})._core.plan("user_1", "p", CHECK, 1).call
    assert call is not None
    arguments = Arguments(None)
    pool = ConnectionPool(Endpoint.from_url(redis_url, TIMEOUT), Script(SCRIPT))
    try:
        runs: list[Callable[[], object]] = [
            lambda: pool.command("PING"),  # not fresh: reads the clock before sending
            lambda: pool.run_script(*arguments.pack_one(call)),  # fresh
        ]
        for run in runs:
            run()
            (connection,) = pool._idle
            connection._sock.settimeout(0.001)  # what a call that ran out of time leaves
            connection._timeout = 0.001
            run()
            assert connection._timeout > TIMEOUT - 0.01
            assert connection._sock.gettimeout() == pytest.approx(connection._timeout, abs=1e-6)
    finally:
        pool.close()
