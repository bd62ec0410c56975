"""ACL users: the limiter works as a user granted only what it needs (no ``client|setname``
among it), and a refused login closes its socket at once."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer
from ratewall.testing import FakeClock

# The least a limiter needs: its script's commands (FCALL after one FUNCTION LOAD; EVALSHA
# and EVAL where functions are denied or missing), the commands the script itself calls,
# PING for readiness, on its own keys only.
MINIMAL_ACL = (
    "on >limiter-secret resetkeys ~ratelimit:* resetchannels -@all "
    "+fcall +function|load +evalsha +eval +ping "
    "+get +set +del +pexpire +time +llen +lindex +lrange +lset +ltrim +rpush "
    "+zadd +zcard +zcount +zrange +zrangebyscore +zrem +zremrangebyscore +zscore"
)
WITHOUT_FUNCTIONS = MINIMAL_ACL.replace("+fcall +function|load ", "")
TIMEOUT = 2.0


@pytest.fixture
def acl_server(fresh_server: LocalServer) -> LocalServer:
    with redis.Redis(port=fresh_server.port, socket_timeout=5.0) as admin:
        admin.execute_command("ACL", "SETUSER", "limiter", *MINIMAL_ACL.split())
        admin.execute_command("ACL", "SETUSER", "scripts_only", *WITHOUT_FUNCTIONS.split())
    return fresh_server


def _url(server: LocalServer, user: str = "limiter", password: str = "limiter-secret") -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def _policies() -> dict[str, Policy]:
    return {name: Policy(3, 60, algorithm=name, failure_mode="raise") for name in ALGORITHMS}


@pytest.mark.parametrize("user", ["limiter", "scripts_only"])
def test_a_user_with_the_minimal_acl_gets_every_decision(
    acl_server: LocalServer, user: str
) -> None:
    with RateLimiter(_policies(), store=_url(acl_server, user), timeout=TIMEOUT) as limiter:
        for name in ALGORITHMS:
            outcomes = [limiter.check("user_1", name).allowed for _ in range(4)]
            assert outcomes == [True, True, True, False], name
            assert limiter.peek("user_1", name).remaining == 0
            limiter.reset("user_1", name)
            assert limiter.check("user_1", name).remaining == 2


@pytest.mark.parametrize("user", ["limiter", "scripts_only"])
async def test_an_async_user_with_the_minimal_acl_gets_every_decision(
    acl_server: LocalServer, user: str
) -> None:
    async with AsyncRateLimiter(
        _policies(), store=_url(acl_server, user), timeout=TIMEOUT
    ) as limiter:
        for name in ALGORITHMS:
            outcomes = [(await limiter.check("user_1", name)).allowed for _ in range(4)]
            assert outcomes == [True, True, True, False], name


@pytest.mark.parametrize("user", ["limiter", "scripts_only"])
def test_a_user_with_the_minimal_acl_holds_concurrency_slots(
    acl_server: LocalServer, user: str
) -> None:
    policies = {"exports": Policy(2, 60, algorithm="concurrency", failure_mode="raise")}
    with RateLimiter(policies, store=_url(acl_server, user), timeout=TIMEOUT) as limiter:
        first = limiter.acquire_slot("user_1", "exports")
        with limiter.slot("user_1", "exports") as second:
            assert (first.allowed, second.allowed) == (True, True)
            with limiter.slot("user_1", "exports") as third:
                assert not third.allowed
        assert limiter.peek("user_1", "exports").remaining == 1  # the first is held
        first.release()
        assert limiter.peek("user_1", "exports").remaining == 2
        limiter.reset("user_1", "exports")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_refused_login_closes_its_socket_at_once(acl_server: LocalServer) -> None:
    url = _url(acl_server, password="wrong")
    with RateLimiter(
        {"p": Policy(3, 60, failure_mode="raise")}, store=url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        errors = []
        before = _open_fds()
        for _ in range(2):  # below the breaker's threshold: each call connects
            with pytest.raises(StoreError) as caught:
                limiter.check("user_1", "p")
            errors.append(caught.value)  # kept alive, as a logging handler might
        assert "WRONGPASS" in str(errors[0].__cause__)
        assert _open_fds() == before


async def test_an_async_refused_login_closes_its_socket_at_once(acl_server: LocalServer) -> None:
    url = _url(acl_server, password="wrong")
    async with AsyncRateLimiter(
        {"p": Policy(3, 60, failure_mode="raise")}, store=url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        errors = []
        before = _open_fds()
        for _ in range(2):
            with pytest.raises(StoreError) as caught:
                await limiter.check("user_1", "p")
            errors.append(caught.value)
        await asyncio.sleep(0)  # the transport closes its socket in a callback
        assert "WRONGPASS" in str(errors[0].__cause__)
        assert _open_fds() == before


@pytest.mark.parametrize(
    ("denied", "algorithm"), [("llen", "sliding_log"), ("get", "fixed_window")]
)
def test_a_user_denied_a_read_gets_an_error_not_an_open_gate(
    acl_server: LocalServer, denied: str, algorithm: str
) -> None:
    """The script reads state with pcall so that another algorithm's value counts as none;
    any other refusal (here the ACL) must fail the decision, never admit it silently."""
    with redis.Redis(port=acl_server.port, socket_timeout=5.0) as admin:
        admin.execute_command("ACL", "SETUSER", "partial", *MINIMAL_ACL.split(), f"-{denied}")
    policies = {"p": Policy(3, 60, algorithm=algorithm, failure_mode="raise")}
    with (
        RateLimiter(policies, _url(acl_server, "partial"), timeout=TIMEOUT) as limiter,
        pytest.raises(StoreError, match=r"NOPERM|permission|can.t run this command"),
    ):
        limiter.check("u", "p")
