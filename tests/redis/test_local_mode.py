"""The failure mode "local" on real servers: while the store is stopped or frozen, each
limiter enforces its share of the limit in memory (ceil(limit / local_nodes)), keeps it
per identity across the outage, and hands back to the store when it answers again.

Time comes from an injected FakeClock (which also drives the script's time and the
circuit breaker's cooldown), so windows pass without sleeping.
"""

from __future__ import annotations

import asyncio

import pytest

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.metrics import Metrics
from ratewall.testing import DecisionCapture, FakeClock

from .._timing import DEADLINE_TIMEOUT, deadline_bound, unloaded_time

WINDOW = 60
COOLDOWN = 1.0  # the breaker's, on the limiter's clock
TIMEOUT = 1.0  # generous: a loaded machine's first connection and script load fit in it


def _limiter(url: str, clock: FakeClock, policy: Policy, **options: object) -> RateLimiter:
    return RateLimiter(
        {"api": policy},
        store=url,
        clock=clock,
        timeout=TIMEOUT,
        breaker_cooldown=COOLDOWN,
        **options,  # type: ignore[arg-type]
    )


def _admitted(limiter: RateLimiter, identity: str, calls: int) -> int:
    return sum(limiter.check(identity, "api").allowed for _ in range(calls))


def test_an_outage_enforces_this_process_s_share(fresh_server: LocalServer) -> None:
    clock = FakeClock()
    policy = Policy(10, WINDOW, failure_mode="local", local_nodes=2)
    with _limiter(fresh_server.url, clock, policy) as limiter:
        assert limiter.check("user_1", "api").source == "store"
        fresh_server.stop()
        decisions = [limiter.check("user_1", "api") for _ in range(8)]
        # ceil(10 / 2) = 5, counted from the outage's first call, whatever the store had.
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
        assert all(d.degraded and d.source == "local" and d.limit == 5 for d in decisions)
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        refused = decisions[-1]
        assert refused.retry_after == pytest.approx(WINDOW)
        # The breaker opened after three failures: decisions it answers share the same table.
        clock.advance(30)
        assert not limiter.check("user_1", "api").allowed
        assert limiter.check("user_2", "api").allowed  # another identity has its own share
        clock.advance(30)  # the local window ends
        assert _admitted(limiter, "user_1", 8) == 5


def test_peek_consumes_nothing_and_a_refusal_keeps_the_retry_time(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(3, WINDOW, failure_mode="local")
    with _limiter(fresh_server.url, clock, policy) as limiter:
        fresh_server.stop()
        for _ in range(5):  # what a check would leave, every time: nothing consumed
            assert limiter.peek("user_1", "api").remaining == 2
        assert _admitted(limiter, "user_1", 3) == 3
        clock.advance(20)
        refused = limiter.check("user_1", "api")
        assert not refused.allowed
        assert refused.retry_after == pytest.approx(WINDOW - 20)


@pytest.mark.parametrize(
    ("algorithm", "burst", "share"),
    [("sliding_window", None, 4), ("sliding_log", None, 4), ("token_bucket", 9, 3), ("gcra", 9, 3)],
)
def test_every_algorithm_has_a_local_share(
    fresh_server: LocalServer, algorithm: str, burst: int | None, share: int
) -> None:
    clock = FakeClock()
    policy = Policy(
        12, WINDOW, algorithm=algorithm, burst=burst, failure_mode="local", local_nodes=3
    )
    with _limiter(fresh_server.url, clock, policy) as limiter:
        fresh_server.stop()
        assert _admitted(limiter, "user_1", 2 * share) == share


def test_the_share_outlives_a_store_that_flaps_and_the_store_takes_over(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(4, WINDOW, failure_mode="local")
    capture = DecisionCapture()
    with _limiter(fresh_server.url, clock, policy, observer=capture) as limiter:
        fresh_server.stop()
        assert _admitted(limiter, "user_1", 3) == 3
        fresh_server.start()
        clock.advance(COOLDOWN)  # the breaker probes the store again
        back = limiter.check("user_1", "api")
        assert back.source == "store"
        assert not back.degraded
        # The restarted server's count (it has no data), without the local admissions.
        assert back.remaining == 3
        assert capture.breaker[-1][0] is False  # closed again: one clean transition
        fresh_server.stop()
        # The same outage table, not a fresh share: one unit of the 4 was left.
        assert _admitted(limiter, "user_1", 4) == 1
        fresh_server.start()
        clock.advance(COOLDOWN)
        assert limiter.check("user_1", "api").source == "store"


def test_a_frozen_server_is_answered_locally_within_the_timeout(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(2, WINDOW, failure_mode="local")
    with RateLimiter(
        {"api": policy}, store=fresh_server.url, clock=clock, timeout=DEADLINE_TIMEOUT
    ) as limiter:
        assert limiter.check("warm", "api").allowed
        fresh_server.pause()
        try:
            decisions, elapsed = [], []
            for _ in range(4):
                started = unloaded_time()
                decisions.append(limiter.check("user_1", "api"))
                elapsed.append(unloaded_time() - started)
        finally:
            fresh_server.resume()
    assert max(elapsed) < deadline_bound(DEADLINE_TIMEOUT), elapsed
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert all(d.source == "local" for d in decisions)


def test_the_local_table_is_bounded(fresh_server: LocalServer) -> None:
    clock = FakeClock()
    policy = Policy(1, WINDOW, failure_mode="local")
    with _limiter(fresh_server.url, clock, policy, local_cache_size=3) as limiter:
        fresh_server.stop()
        for n in range(10):
            assert limiter.check(f"user_{n}", "api").allowed
        assert len(limiter._core.local) == 3
        # The newest three are remembered; the oldest were forgotten, and start afresh.
        assert not limiter.check("user_9", "api").allowed
        assert limiter.check("user_0", "api").allowed


def test_n_processes_admit_at_most_n_shares_per_window(fresh_server: LocalServer) -> None:
    """The documented bound: across N limiters, an outage admits at most
    N x ceil(limit / local_nodes) per window, plus what the store admitted in the window
    the outage began."""
    clock = FakeClock()
    nodes = 3
    limit = 10
    share = -(-limit // nodes)  # 4
    policy = Policy(limit, WINDOW, failure_mode="local", local_nodes=nodes)
    limiters = [_limiter(fresh_server.url, clock, policy) for _ in range(nodes)]
    try:
        # The store admits the whole limit first (4 + 3 + 3, none refused yet).
        before = [
            _admitted(limiter, "hot", calls)
            for limiter, calls in zip(limiters, [4, 3, 3], strict=True)
        ]
        assert before == [4, 3, 3]
        fresh_server.stop()
        during = sum(_admitted(limiter, "hot", 3 * limit) for limiter in limiters)
        assert during == nodes * share
        assert sum(before) + during <= limit + nodes * share
        clock.advance(WINDOW)
        assert sum(_admitted(limiter, "hot", 3 * limit) for limiter in limiters) == nodes * share
    finally:
        for limiter in limiters:
            limiter.close()


def test_a_refusal_the_store_gave_still_refuses_during_the_outage(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(2, WINDOW, failure_mode="local")
    with _limiter(fresh_server.url, clock, policy) as limiter:
        assert _admitted(limiter, "user_1", 3) == 2  # the store refused the third
        fresh_server.stop()
        clock.advance(10)
        refused = limiter.check("user_1", "api")
        assert not refused.allowed
        assert refused.source == "cache"
        clock.advance(WINDOW - 10)  # the store's window is over: the share applies
        assert _admitted(limiter, "user_1", 4) == 2


def test_check_many_is_all_or_nothing_locally(fresh_server: LocalServer) -> None:
    clock = FakeClock()
    policies = {
        "user": Policy(5, WINDOW, failure_mode="local"),
        "ip": Policy(2, WINDOW, failure_mode="local"),
        "open": Policy(1, WINDOW, failure_mode="open"),
    }
    with RateLimiter(policies, store=fresh_server.url, clock=clock, timeout=TIMEOUT) as limiter:
        fresh_server.stop()
        items = [("u", "user"), ("u", "ip"), ("u", "open")]
        results = [limiter.check_many(items) for _ in range(4)]
        assert [all(d.allowed for d in r) for r in results] == [True, True, False, False]
        # The refusals (by "ip") consumed nothing of "user": 3 of its 5 are left.
        assert limiter.peek("u", "user").remaining == 2  # 3 left, a check would leave 2
        assert results[0][2].source == "failure"  # "open" answers as it always did
        closed = {"c": Policy(5, WINDOW, failure_mode="closed")}
    with RateLimiter(
        {**policies, **closed}, store=fresh_server.url, clock=clock, timeout=TIMEOUT
    ) as limiter:
        # Another policy's failure mode refuses: nothing is consumed locally either.
        decisions = limiter.check_many([("v", "user"), ("v", "c")])
        assert [d.allowed for d in decisions] == [True, False]
        assert limiter.peek("v", "user").remaining == 4


def test_overrides_and_tiers_get_shares_of_their_own_limits(fresh_server: LocalServer) -> None:
    clock = FakeClock()
    policy = Policy(
        4,
        WINDOW,
        failure_mode="local",
        local_nodes=2,
        overrides={"partner": {"limit": 20}},
        tiers={"pro": {"limit": 8}},
    )
    with _limiter(fresh_server.url, clock, policy) as limiter:
        fresh_server.stop()
        assert _admitted(limiter, "someone", 10) == 2
        assert _admitted(limiter, "partner", 30) == 10
        assert sum(limiter.check("pro_user", "api", tier="pro").allowed for _ in range(10)) == 4


def test_metrics_count_local_decisions_as_failed_open_and_failed_closed(
    fresh_server: LocalServer,
) -> None:
    metrics = Metrics()
    policy = Policy(2, WINDOW, failure_mode="local")
    with _limiter(fresh_server.url, FakeClock(), policy, observer=metrics) as limiter:
        fresh_server.stop()
        _admitted(limiter, "user_1", 5)
    counts = metrics.snapshot().decisions["api"]
    assert counts["failed_open"] == 2
    assert counts["failed_closed"] == 3
    assert counts["allowed"] == counts["limited"] == counts["error"] == 0


async def test_async_an_outage_enforces_the_share_and_the_store_takes_over(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(6, WINDOW, failure_mode="local", local_nodes=2)
    async with AsyncRateLimiter(
        {"api": policy},
        store=fresh_server.url,
        clock=clock,
        timeout=TIMEOUT,
        breaker_cooldown=COOLDOWN,
    ) as limiter:
        assert (await limiter.check("user_1", "api")).source == "store"
        fresh_server.stop()
        decisions = await asyncio.gather(*(limiter.check("user_1", "api") for _ in range(6)))
        assert sum(d.allowed for d in decisions) == 3
        assert all(d.source == "local" and d.degraded for d in decisions)
        fresh_server.start()
        clock.advance(COOLDOWN)
        back = await limiter.check("user_1", "api")
        # The restarted server has no data; it never learns of the local admissions.
        assert back.source == "store"
        assert back.remaining == 5


def test_a_reload_keeps_the_shares_and_a_new_algorithm_starts_afresh(
    fresh_server: LocalServer,
) -> None:
    clock = FakeClock()
    policy = Policy(3, WINDOW, failure_mode="local")
    with _limiter(fresh_server.url, clock, policy) as limiter:
        fresh_server.stop()
        assert _admitted(limiter, "user_1", 2) == 2
        limiter.reload({"api": {"limit": 3, "window": WINDOW, "failure_mode": "local"}})
        assert _admitted(limiter, "user_1", 3) == 1  # the same share, carried over
        limiter.reload(
            {"api": {"limit": 3, "window": WINDOW, "algorithm": "gcra", "failure_mode": "local"}}
        )
        assert _admitted(limiter, "user_1", 5) == 3  # another algorithm's state: afresh
