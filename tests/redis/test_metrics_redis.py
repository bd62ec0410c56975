"""Metrics of limiters on a real Redis/Valkey: store calls and their latency, batches, the
deny cache, store errors by kind, breaker transitions (with the breaker's own warnings)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.metrics import LATENCY_BUCKETS, Metrics
from ratewall.stores import RedisStore
from ratewall.testing import FailingStore, FakeClock


def test_each_round_trip_is_counted_and_timed(redis_url: str) -> None:
    metrics = Metrics(latency_sample=1)  # time every call (the default samples 1 in 16)
    with RateLimiter({"login": Policy(3, 60)}, redis_url, observer=metrics, timeout=1.0) as limiter:
        for _ in range(5):
            limiter.check("u", "login")
    snapshot = metrics.snapshot()
    assert snapshot.decisions["login"]["allowed"] == 3
    assert snapshot.decisions["login"]["limited"] == 2
    # The fourth check met the store's refusal; the fifth was the deny cache's answer.
    assert snapshot.cache_answers == {"login": 1}
    assert snapshot.store_calls == 4
    assert snapshot.latency.count == 4
    assert 0 < snapshot.latency.total < 4 * LATENCY_BUCKETS[-1]
    assert snapshot.batch.counts[0] == 4  # every call carried one decision
    assert snapshot.store_errors == {"timeout": 0, "connection": 0, "protocol": 0, "other": 0}


def test_by_default_every_call_is_counted_and_one_in_16_timed(redis_url: str) -> None:
    metrics = Metrics()
    policies = {"login": Policy(1000, 60)}
    with RateLimiter(policies, redis_url, observer=metrics, timeout=1.0) as limiter:
        for _ in range(40):
            limiter.check("u", "login")
    snapshot = metrics.snapshot()
    assert snapshot.store_calls == 40
    assert snapshot.batch.counts[0] == 40
    assert snapshot.latency.count == 3  # the 1st, 17th and 33rd calls
    assert snapshot.latency_sample == 16


async def test_batched_round_trips_fill_the_batch_histogram(redis_url: str) -> None:
    metrics = Metrics()
    policies = {"api": Policy(10_000, 60)}
    async with AsyncRateLimiter(policies, redis_url, observer=metrics, timeout=1.0) as limiter:
        await asyncio.gather(*(limiter.check(f"user_{n}", "api") for n in range(200)))
    snapshot = metrics.snapshot()
    assert snapshot.decisions["api"]["allowed"] == 200
    assert snapshot.batch.total == 200
    assert snapshot.store_calls < 200  # concurrent callers shared round trips


def test_a_refused_connection_counts_as_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    policies = {"api": Policy(5, 60, failure_mode="open")}
    with RateLimiter(policies, store, observer=metrics) as limiter:
        assert limiter.check("u", "api").degraded
    snapshot = metrics.snapshot()
    assert snapshot.decisions["api"]["failed_open"] == 1
    assert snapshot.store_errors["connection"] == 1
    assert snapshot.store_calls == 1


def test_breaker_transitions_are_counted_and_still_logged_once_each(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    metrics = Metrics()
    store = FailingStore(redis_url, failing=None, timeout=1.0)
    policies = {
        "open": Policy(100, 60, failure_mode="open"),
        "closed": Policy(100, 60, failure_mode="closed"),
        "strict": Policy(100, 60),  # failure_mode "raise"
    }
    with (
        caplog.at_level(logging.WARNING, logger="ratewall"),
        RateLimiter(policies, store, clock=clock, observer=metrics) as limiter,
    ):
        limiter.check("u", "open")
        with store.failures("refuse"):
            for _ in range(4):
                limiter.check("u", "open")
                limiter.check("u", "closed")
            with pytest.raises(Exception, match="store failed"):
                limiter.check("u", "strict")
        clock.advance(1.0)
        limiter.check("u", "open")
    snapshot = metrics.snapshot()
    assert snapshot.breaker == {"open": 1, "closed": 1}
    assert snapshot.decisions["open"]["failed_open"] == 4
    assert snapshot.decisions["closed"]["failed_closed"] == 4
    assert snapshot.decisions["strict"]["error"] == 1
    assert snapshot.decisions["open"]["allowed"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("store is failing" in w for w in warnings) == 1
    assert sum("answers again" in w for w in warnings) == 1
