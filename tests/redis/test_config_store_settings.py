"""The config file's ``breaker`` and ``batching`` sections reach the limiter, on real servers.

The breaker runs on the limiter's clock, so a FakeClock crosses its cooldown (no sleep)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ratewall import AsyncRateLimiter, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.observer import BaseObserver
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, STORE_TIMEOUT


class _StoreCalls(BaseObserver):
    """The size of each script call the limiter makes (attempted ones included)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        self.sizes.append(calls)


def _config(tmp_path: Path, url: str, **settings: object) -> Path:
    path = tmp_path / "limits.json"
    policies = {"login": {"limit": 100, "window": 60, "failure_mode": "open"}}
    path.write_text(json.dumps({"policies": policies, "store": url, **settings}))
    return path


def test_the_configured_breaker_opens_after_its_threshold_for_its_cooldown(
    tmp_path: Path, fresh_server: LocalServer
) -> None:
    path = _config(
        tmp_path,
        fresh_server.url,
        timeout=DEADLINE_TIMEOUT,
        breaker={"threshold": 1, "cooldown": "30s"},
    )
    clock = FakeClock()
    calls = _StoreCalls()
    with RateLimiter.from_config(path, clock=clock, observer=calls) as limiter:
        assert not limiter.check("u", "login").degraded
        fresh_server.pause()
        try:
            assert limiter.check("u", "login").degraded  # one timeout: threshold 1 opens it
        finally:
            fresh_server.resume()
        reached = len(calls.sizes)
        # The server is back; the default breaker (3 failures) would let this call through.
        assert limiter.check("u", "login").degraded
        clock.advance(29)
        assert limiter.check("u", "login").degraded  # still inside the 30 s cooldown
        assert len(calls.sizes) == reached  # failed fast: the store was not asked
        clock.advance(1.001)
        decision = limiter.check("u", "login")
        assert decision.allowed
        assert not decision.degraded


async def test_the_configured_batching_bounds_each_script_call(
    tmp_path: Path, redis_url: str
) -> None:
    requests = 10

    async def sizes(**settings: object) -> list[int]:
        calls = _StoreCalls()
        path = _config(tmp_path, redis_url, timeout=STORE_TIMEOUT, **settings)
        async with AsyncRateLimiter.from_config(path, observer=calls) as limiter:
            await limiter.ping()
            calls.sizes.clear()
            decisions = await asyncio.gather(
                *(limiter.check(f"user_{index}", "login") for index in range(requests))
            )
        assert all(decision.allowed and not decision.degraded for decision in decisions)
        return calls.sizes

    # By default the ten checks of one event-loop turn leave in fewer, larger calls...
    assert max(await sizes()) > 3
    # ...with max_batch 3 no call carries more than three, and every check is made.
    bounded = await sizes(batching={"max_in_flight": 1, "max_batch": 3})
    assert sum(bounded) == requests
    assert max(bounded) <= 3
