"""SPEC §1, request by request, on a real Redis and a real Valkey server.

``POST /login`` as ``user_123``, 5 requests per 60 s, from the seed config file. Every step
checks the answer, whether Redis was asked (script calls in ``INFO commandstats``), and the
key Redis holds: its value, and a TTL that is always set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, RateLimiter
from ratewall.stores._values import encode_value
from ratewall.testing import FakeClock

from ._stats import script_calls

KEY = "ratelimit:{user_123}:login"
NOON = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC).timestamp()
NOON_US = round(NOON * 1_000_000)
WINDOW_MS = 60_000


@dataclass(frozen=True)
class Step:
    """One request of the flow: when (seconds after 12:00:00), the answer, whether the
    request reached Redis, and the value Redis holds afterwards (see :func:`_fixed`)."""

    at: float
    decision: Decision
    asked_redis: bool
    stored: str


def _fixed(count: int, end_us: int) -> str:
    """A fixed-window value as lua/_main.lua writes it: "F", then count and window end (µs)."""
    return encode_value("F", (count, end_us)).decode()


def _allowed(remaining: int, reset_after: float) -> Decision:
    return Decision(True, "login", 5, remaining, reset_after, None)


def _refused(reset_after: float, retry_after: float) -> Decision:
    return Decision(False, "login", 5, 0, reset_after, retry_after)


# Store timeout: these tests are about the flow, not latency (the default is 50 ms, which a
# stall on a loaded CI machine could exceed).
TIMEOUT_S = 5.0
FIRST_END = NOON_US + 60_000_000
SECOND_END = NOON_US + 61_000_000 + 60_000_000

# The table of SPEC §1.
FLOW = (
    Step(0, _allowed(4, 60.0), True, _fixed(1, FIRST_END)),  # 12:00:00, no key: count 1
    Step(10, _allowed(3, 50.0), True, _fixed(2, FIRST_END)),
    Step(20, _allowed(2, 40.0), True, _fixed(3, FIRST_END)),
    Step(25, _allowed(1, 35.0), True, _fixed(4, FIRST_END)),
    Step(30, _allowed(0, 30.0), True, _fixed(5, FIRST_END)),  # 12:00:30, count 5
    Step(45, _refused(15.0, 15.0), True, _fixed(5, FIRST_END)),  # 429, Retry-After: 15
    Step(50, _refused(10.0, 10.0), False, _fixed(5, FIRST_END)),  # the deny cache answers
    Step(61, _allowed(4, 60.0), True, _fixed(1, SECOND_END)),  # 12:01:01, a new window
)


@pytest.fixture
def seed_config(tmp_path: Path) -> Path:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"login": {"limit": 5, "window": 60}}), "utf-8")
    return path


# redis-py types sync replies as `Awaitable[Any] | Any`; these name what they really are.
def _stats(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return cast("dict[str, dict[str, Any]]", client.info("commandstats"))


def _get(client: redis.Redis) -> bytes | None:
    return cast("bytes | None", client.get(KEY))


def _pttl(client: redis.Redis) -> int:
    return client.pttl(KEY)


def _command_calls(client: redis.Redis) -> Counter[str]:
    return Counter({name: entry["calls"] for name, entry in _stats(client).items()})


class _Observer:
    """Reads the key and the script call counter around each request."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.calls = script_calls(client)
        self.value: bytes | None = None
        self.pttl = -2

    def after(self, step: Step, decision: Decision) -> None:
        calls = script_calls(self.client)
        value = _get(self.client)
        pttl = _pttl(self.client)
        assert decision == step.decision, f"at +{step.at}s"
        assert calls - self.calls == (1 if step.asked_redis else 0), f"at +{step.at}s"
        assert value == step.stored.encode(), f"at +{step.at}s"
        # Never a key without a TTL (-1), never a missing key (-2); at most one window.
        assert 0 < pttl <= WINDOW_MS, f"at +{step.at}s: PTTL {pttl}"
        if not decision.allowed:
            # A refusal writes nothing: same value, and the TTL was not renewed.
            assert value == self.value
            assert pttl <= self.pttl
        self.calls, self.value, self.pttl = calls, value, pttl


def test_the_seed_flow(seed_config: Path, redis_url: str, redis_client: redis.Redis) -> None:
    clock = FakeClock(NOON)
    observer = _Observer(redis_client)
    assert redis_client.exists(KEY) == 0
    with RateLimiter.from_config(
        seed_config, store=redis_url, clock=clock, timeout=TIMEOUT_S
    ) as limiter:
        for step in FLOW:
            clock.set(NOON + step.at)
            observer.after(step, limiter.check("user_123", "login"))


async def test_the_seed_flow_async(
    seed_config: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    clock = FakeClock(NOON)
    observer = _Observer(redis_client)
    assert redis_client.exists(KEY) == 0
    async with AsyncRateLimiter.from_config(
        seed_config, store=redis_url, clock=clock, timeout=TIMEOUT_S
    ) as limiter:
        for step in FLOW:
            clock.set(NOON + step.at)
            observer.after(step, await limiter.check("user_123", "login"))


def test_the_first_request_sets_the_ttl_in_the_same_step(
    seed_config: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # A write followed by a separate EXPIRE would leave a moment with PTTL -1. Commands that
    # scripts run are counted too, so no expire-like command may have run at all: the TTL
    # came with the write (SET ... PX) inside the one script call.
    before, ran = _command_calls(redis_client), script_calls(redis_client)
    with RateLimiter.from_config(
        seed_config, store=redis_url, clock=FakeClock(NOON), timeout=TIMEOUT_S
    ) as limiter:
        limiter.check("user_123", "login")
    sent = _command_calls(redis_client) - before
    assert script_calls(redis_client) - ran == 1  # one decision
    assert sent["cmdstat_set"] == 1
    expiring = {"expire", "pexpire", "expireat", "pexpireat", "setex", "psetex", "getex"}
    assert not {f"cmdstat_{name}" for name in expiring} & set(sent), sent
    assert 59_000 < _pttl(redis_client) <= WINDOW_MS


def test_without_the_deny_cache_the_repeated_refusal_asks_redis(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # The control for the flow's "not asked" step: the call counter does see a request that
    # reaches Redis at 12:00:50, and Redis gives the same answer the cache gave.
    path = tmp_path / "limits.json"
    path.write_text(
        json.dumps({"policies": {"login": {"limit": 5, "window": 60}}, "local_cache_size": 0}),
        "utf-8",
    )
    clock = FakeClock(NOON)
    observer = _Observer(redis_client)
    with RateLimiter.from_config(path, store=redis_url, clock=clock, timeout=TIMEOUT_S) as limiter:
        for step in FLOW:
            clock.set(NOON + step.at)
            expected = Step(step.at, step.decision, True, step.stored)
            observer.after(expected, limiter.check("user_123", "login"))


def test_the_deny_cache_holds_until_the_retry_time_then_redis_decides(
    seed_config: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # Between 12:00:45 and 12:01:00 every refusal after the first is local; the first
    # request at 12:01:00 (the window's end) goes to Redis and opens a new window.
    clock = FakeClock(NOON)
    with RateLimiter.from_config(
        seed_config, store=redis_url, clock=clock, timeout=TIMEOUT_S
    ) as limiter:
        for at in (0, 10, 20, 25, 30, 45):
            clock.set(NOON + at)
            limiter.check("user_123", "login")
        calls = script_calls(redis_client)
        for moment in (46, 50, 55, 59, 59.999999):
            clock.set(NOON + moment)
            decision = limiter.check("user_123", "login")
            assert not decision.allowed
            assert decision.retry_after == pytest.approx(60 - moment, abs=1e-6)
        assert script_calls(redis_client) == calls
        clock.set(NOON + 60)
        assert limiter.check("user_123", "login") == _allowed(4, 60.0)
        assert script_calls(redis_client) == calls + 1
        assert _get(redis_client) == _fixed(1, NOON_US + 120_000_000).encode()
