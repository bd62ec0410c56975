"""The script as a function library (Redis 7+, Valkey): loaded once per server, loaded again
when it is gone, never replacing another ratewall version's library, and plain scripts
(EVALSHA, EVAL) where the server has no functions or the user may not use them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.stores import redis as redis_store
from ratewall.stores._resp import Script

from ._stats import libraries

POLICIES = {"p": Policy(5, 60)}
# Generous: these tests count commands, they do not time anything.
TIMEOUT = 5.0
LIBRARY = Script(redis_store.SCRIPT).library


def _ran(client: redis.Redis, command: str) -> int:
    """Calls of ``command`` since the last CONFIG RESETSTAT that did not fail."""
    stats = cast("dict[str, dict[str, Any]]", client.info("commandstats"))
    entry = stats.get(f"cmdstat_{command}", {})
    return int(entry.get("calls", 0)) - int(entry.get("failed_calls", 0))


def _errors(client: redis.Redis) -> int:
    """Error replies the server sent since the last CONFIG RESETSTAT."""
    stats = cast("dict[str, dict[str, Any]]", client.info("errorstats"))
    return sum(int(entry["count"]) for entry in stats.values())


def _remaining(limiter: RateLimiter, times: int) -> list[int]:
    return [limiter.check("user_1", "p").remaining for _ in range(times)]


async def _remaining_async(limiter: AsyncRateLimiter, times: int) -> list[int]:
    return [(await limiter.check("user_1", "p")).remaining for _ in range(times)]


def test_decisions_run_as_a_function(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.config_resetstat()
    with RateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        assert _remaining(limiter, 3) == [4, 3, 2]
    assert _ran(redis_client, "fcall") == 3
    assert _ran(redis_client, "evalsha") == _ran(redis_client, "eval") == 0
    assert _ran(redis_client, "function|load") == 1
    assert libraries(redis_client) == {LIBRARY}


async def test_async_decisions_run_as_a_function(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.config_resetstat()
    async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        assert await _remaining_async(limiter, 3) == [4, 3, 2]
    assert _ran(redis_client, "fcall") == 3
    assert _ran(redis_client, "evalsha") == _ran(redis_client, "eval") == 0
    assert libraries(redis_client) == {LIBRARY}


def test_a_flushed_library_is_loaded_again(redis_url: str, redis_client: redis.Redis) -> None:
    with RateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        assert _remaining(limiter, 1) == [4]
        redis_client.config_resetstat()
        # As after a restart without persistence, or a failover to a server without it.
        redis_client.function_flush()
        assert _remaining(limiter, 2) == [3, 2]
    assert _ran(redis_client, "function|load") == 1
    assert _ran(redis_client, "fcall") == 2
    assert libraries(redis_client) == {LIBRARY}


async def test_a_flushed_library_is_loaded_again_async(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with AsyncRateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as limiter:
        assert await _remaining_async(limiter, 1) == [4]
        redis_client.config_resetstat()
        redis_client.function_flush()
        assert await _remaining_async(limiter, 2) == [3, 2]
    assert _ran(redis_client, "function|load") == 1
    assert _ran(redis_client, "fcall") == 2
    assert libraries(redis_client) == {LIBRARY}


def test_rules_beyond_what_the_library_keeps_parsed_are_read_afresh(redis_url: str) -> None:
    # The loaded library keeps the rules it parsed, up to 1,000 (RULES_KEPT in _main.lua),
    # then starts afresh: 1,100 policies, each a rule of its own, decided twice in turn.
    policies = {f"p{limit}": Policy(limit, 60) for limit in range(2, 1102)}
    with RateLimiter(policies, store=redis_url, timeout=TIMEOUT) as limiter:
        for used in (1, 2):
            remaining = {name: limiter.check("user_1", name).remaining for name in policies}
            assert remaining == {name: policy.limit - used for name, policy in policies.items()}


def test_another_version_keeps_its_own_library(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as current:
        assert _remaining(current, 1) == [4]
        # Another release of ratewall, deployed next to this one on the same server.
        other_script = "-- another ratewall release\n" + redis_store.SCRIPT
        monkeypatch.setattr(redis_store, "SCRIPT", other_script)
        with RateLimiter(POLICIES, store=redis_url, timeout=TIMEOUT) as other:
            assert _remaining(other, 1) == [3]
        assert libraries(redis_client) == {LIBRARY, Script(other_script).library}
        redis_client.config_resetstat()
        # Its own library is still there: no reload, and the count goes on.
        assert _remaining(current, 1) == [2]
        assert _ran(redis_client, "function|load") == 0
        assert _ran(redis_client, "fcall") == 1


@pytest.fixture
def user_without_functions(
    request: pytest.FixtureRequest, redis_server: LocalServer, redis_client: redis.Redis
) -> Iterator[str]:
    """The URL of a user the shared server denies ``request.param`` (ACL rules)."""
    user = "ratewall_test_no_functions"
    redis_client.acl_setuser(
        user,
        enabled=True,
        reset=True,
        passwords=["+secret"],
        keys=["*"],
        commands=["+@all", *request.param.split()],
    )
    try:
        yield f"redis://{user}:secret@127.0.0.1:{redis_server.port}/0"
    finally:
        redis_client.acl_deluser(user)


DENIALS = pytest.mark.parametrize(
    "user_without_functions",
    ["-fcall -fcall_ro -function", "-function|load"],
    ids=["no functions at all", "no function load"],
    indirect=True,
)


@DENIALS
def test_a_user_denied_functions_decides_through_plain_scripts(
    user_without_functions: str, redis_client: redis.Redis
) -> None:
    redis_client.config_resetstat()
    with RateLimiter(POLICIES, store=user_without_functions, timeout=TIMEOUT) as limiter:
        assert _remaining(limiter, 3) == [4, 3, 2]
    assert _ran(redis_client, "fcall") == 0
    assert _ran(redis_client, "evalsha") + _ran(redis_client, "eval") == 3
    # Found out once: the denied FCALL (or FUNCTION LOAD) and the first NOSCRIPT, then
    # straight to EVALSHA.
    assert _errors(redis_client) <= 3
    assert libraries(redis_client) == set()


@DENIALS
async def test_a_user_denied_functions_decides_through_plain_scripts_async(
    user_without_functions: str, redis_client: redis.Redis
) -> None:
    redis_client.config_resetstat()
    async with AsyncRateLimiter(POLICIES, store=user_without_functions, timeout=TIMEOUT) as limiter:
        assert await _remaining_async(limiter, 3) == [4, 3, 2]
    assert _ran(redis_client, "fcall") == 0
    assert _ran(redis_client, "evalsha") + _ran(redis_client, "eval") == 3
    # Found out once: the denied FCALL (or FUNCTION LOAD) and the first NOSCRIPT, then
    # straight to EVALSHA.
    assert _errors(redis_client) <= 3
    assert libraries(redis_client) == set()


@pytest.fixture
def server_without_functions(redis_server: LocalServer) -> Iterator[LocalServer]:
    """A server of the shared one's kind with FCALL renamed away: it answers "unknown
    command", as Redis 6 does."""
    with LocalServer(redis_server.binary, extra_args=["--rename-command", "FCALL", ""]) as server:
        yield server


@pytest.fixture
def observer(server_without_functions: LocalServer) -> Iterator[redis.Redis]:
    """A client of that server; its statistics count from zero."""
    client = redis.Redis.from_url(server_without_functions.url)
    try:
        client.config_resetstat()  # after this client's own handshake
        yield client
    finally:
        client.close()


def test_a_server_without_functions_gets_plain_scripts(
    server_without_functions: LocalServer, observer: redis.Redis
) -> None:
    url = server_without_functions.url
    with RateLimiter(POLICIES, store=url, timeout=TIMEOUT) as limiter:
        assert _remaining(limiter, 3) == [4, 3, 2]
    assert _ran(observer, "evalsha") + _ran(observer, "eval") == 3
    assert _errors(observer) == 2  # the unknown FCALL and NOSCRIPT, once each
    assert libraries(observer) == set()


async def test_a_server_without_functions_gets_plain_scripts_async(
    server_without_functions: LocalServer, observer: redis.Redis
) -> None:
    url = server_without_functions.url
    async with AsyncRateLimiter(POLICIES, store=url, timeout=TIMEOUT) as limiter:
        assert await _remaining_async(limiter, 3) == [4, 3, 2]
    assert _ran(observer, "evalsha") + _ran(observer, "eval") == 3
    assert _errors(observer) == 2
