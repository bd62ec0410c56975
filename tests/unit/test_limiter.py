"""The facades on the memory store: SPEC §1-§3 behaviour with an injected clock."""

from __future__ import annotations

import inspect
import threading

import pytest

import ratewall
from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.testing import FakeClock, memory_limiter


def test_the_seed_flow() -> None:
    clock = FakeClock(0)
    limiter = memory_limiter({"login": (5, 60)}, clock=clock)
    answers = []
    for at in [0, 10, 20, 25, 30]:
        clock.set(at)
        answers.append(limiter.check("user_123", "login"))
    assert [d.allowed for d in answers] == [True] * 5
    assert [d.remaining for d in answers] == [4, 3, 2, 1, 0]
    clock.set(45)
    refused = limiter.check("user_123", "login")
    assert refused == Decision(False, "login", 5, 0, 15.0, 15.0)
    clock.set(50)
    assert limiter.check("user_123", "login").retry_after == 10.0
    clock.set(61)
    assert limiter.check("user_123", "login") == Decision(True, "login", 5, 4, 60.0, None)


def test_peek_consumes_nothing_and_reset_forgets() -> None:
    clock = FakeClock()
    limiter = memory_limiter({"login": (2, 60)}, clock=clock)
    assert limiter.peek("u", "login") == Decision(True, "login", 2, 1, 60.0, None)
    assert limiter.peek("u", "login", cost=2).remaining == 0
    limiter.check("u", "login", cost=2)
    assert not limiter.peek("u", "login").allowed
    limiter.reset("u", "login")
    assert limiter.check("u", "login").remaining == 1


def test_refused_requests_consume_nothing() -> None:
    limiter = memory_limiter({"p": (3, 60)}, clock=FakeClock())
    assert limiter.check("u", "p", cost=2).allowed
    assert not limiter.check("u", "p", cost=2).allowed
    assert limiter.check("u", "p", cost=1).remaining == 0


def test_identities_and_policies_are_independent() -> None:
    limiter = memory_limiter({"a": (1, 60), "b": (1, 60)}, clock=FakeClock())
    assert limiter.check("u", "a").allowed
    assert limiter.check("u", "b").allowed
    assert limiter.check("v", "a").allowed
    assert not limiter.check("u", "a").allowed


def test_bad_calls_raise_clear_errors() -> None:
    limiter = memory_limiter({"login": (5, 60)})
    with pytest.raises(KeyError, match="unknown policy 'logon'; this limiter knows: login"):
        limiter.check("u", "logon")
    with pytest.raises(ValueError, match=r"from 1 to 5 .*could never be allowed\), got 6"):
        limiter.check("u", "login", cost=6)
    with pytest.raises(ValueError, match=r"from 1 to 5 .*use peek\(\)\), got 0"):
        limiter.check("u", "login", cost=0)
    with pytest.raises(ValueError, match="from 1 to 5 for policy 'login', got -1"):
        limiter.check("u", "login", cost=-1)
    with pytest.raises(TypeError, match="identity must be a str"):
        limiter.check(123, "login")  # type: ignore[arg-type]
    with pytest.raises(ratewall.ConfigError, match="store"):
        RateLimiter({"p": Policy(1, 1)}, store="mongodb://x")


def test_bucket_decisions_report_the_burst_as_limit() -> None:
    limiter = RateLimiter({"api": Policy(10, 1, "gcra", burst=20)}, clock=FakeClock())
    decision = limiter.check("u", "api", cost=20)
    assert (decision.allowed, decision.limit, decision.remaining) == (True, 20, 0)
    assert decision.reset_after == 2.0


def _hammer(limiter: RateLimiter, threads: int, calls: int) -> int:
    admitted: list[int] = []
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        admitted.append(sum(limiter.check("hot", "p").allowed for _ in range(calls)))

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return sum(admitted)


@pytest.mark.parametrize("algorithm", ratewall.ALGORITHMS)
def test_threads_sharing_one_memory_limiter_admit_exactly_the_limit(algorithm: str) -> None:
    # 200 per day: a bucket refills far less than one token during the run.
    limiter = RateLimiter({"p": Policy(200, "1d", algorithm)})
    assert _hammer(limiter, threads=8, calls=100) == 200


def test_memory_store_stays_exact_with_many_live_keys() -> None:
    """A bounded LRU would forget keys and over-admit (a known bug of one peer)."""
    limiter = memory_limiter({"p": (2, 3600)}, clock=FakeClock())
    admitted = sum(limiter.check(f"k{i % 10_000}", "p").allowed for i in range(30_000))
    assert admitted == 20_000


@pytest.mark.parametrize("algorithm", ratewall.ALGORITHMS)
async def test_async_facade_decides_like_the_sync_one(algorithm: str) -> None:
    clock = FakeClock()
    policies = {"p": Policy(3, 10, algorithm), "q": Policy(2, 5, "gcra")}
    sync = RateLimiter(policies, clock=clock)
    async with AsyncRateLimiter(policies, clock=clock) as limiter:
        for step in [0, 1, 1, 0, 3, 6, 0]:
            clock.advance(step)
            assert await limiter.check("u", "p") == sync.check("u", "p")
            assert await limiter.peek("u", "p", 2) == sync.peek("u", "p", 2)
            items: list[tuple[str, str] | tuple[str, str, int]] = [("u", "q"), ("v", "p", 2)]
            assert await limiter.check_many(items) == sync.check_many(items)
        await limiter.reset("u", "p")
        sync.reset("u", "p")
        assert await limiter.check("u", "p") == sync.check("u", "p")


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") or name in ("__init__",)
    }


def test_the_facades_expose_the_same_names_and_signatures() -> None:
    sync, asynchronous = _public(RateLimiter), _public(AsyncRateLimiter)
    renamed = {"close": "aclose"}
    assert {renamed.get(n, n) for n in sync} == set(asynchronous)
    for name, signature in sync.items():
        assert asynchronous[renamed.get(name, name)].parameters == signature.parameters, name
    for name in ("check", "peek", "reset", "ping", "aclose"):
        assert inspect.iscoroutinefunction(getattr(AsyncRateLimiter, name))


def test_public_api_names() -> None:
    for name in [
        "RateLimiter",
        "AsyncRateLimiter",
        "Policy",
        "Decision",
        "ConfigError",
        "StoreError",
    ]:
        assert name in ratewall.__all__
    fields = list(Decision.__dataclass_fields__)
    assert fields[:6] == ["allowed", "policy", "limit", "remaining", "reset_after", "retry_after"]


def test_check_many_is_all_or_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"user": Policy(3, 60), "ip": Policy(2, 60, "gcra")}, clock=clock)
    items = [("alice", "user"), ("10.0.0.1", "ip")]
    assert all(d.allowed for d in limiter.check_many(items))
    assert all(d.allowed for d in limiter.check_many(items))
    refused = limiter.check_many(items)
    assert [d.allowed for d in refused] == [True, False]
    # The refusal consumed nothing: alice still has one unit for the user policy.
    assert refused[0].remaining == 0  # what it would have been after consuming
    assert limiter.peek("alice", "user").remaining == 0
    assert limiter.check("alice", "user").allowed
    assert not limiter.check("alice", "user").allowed


def test_check_many_sees_its_own_items() -> None:
    limiter = memory_limiter({"p": (3, 60)}, clock=FakeClock())
    assert [d.allowed for d in limiter.check_many([("u", "p", 2), ("u", "p", 1)])] == [True, True]
    assert [d.allowed for d in limiter.check_many([("v", "p", 2), ("v", "p", 2)])] == [True, False]
    assert limiter.peek("v", "p", 3).allowed  # the refused pair consumed nothing
