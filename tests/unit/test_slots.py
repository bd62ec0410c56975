"""Concurrency policies and waiting mode on the memory store, time from a FakeClock.

The same behaviour on real servers (and the memory store proven to decide like the Lua
script) is in tests/redis/test_slots_redis.py.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from ratewall import (
    CONCURRENCY,
    AsyncRateLimiter,
    ConfigError,
    Policy,
    RateLimiter,
    RateLimitExceeded,
    StoreError,
)
from ratewall.algorithms import SLOT_ACQUIRE, SLOT_PEEK, SLOT_RELEASE, SLOT_RENEW, rule_for, slots
from ratewall.config import parse_config
from ratewall.testing import DecisionCapture, FailingStore, FakeClock

LEASE = 60.0  # long: the background renewal (real time) never runs during these tests
POLICIES = {
    "exports": Policy(2, LEASE, algorithm="concurrency"),
    "api": Policy(3, 10),
}


def _limiter(clock: FakeClock, **options: object) -> RateLimiter:
    return RateLimiter(POLICIES, clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


def test_slots_are_held_inside_the_block_and_freed_after_it() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    with limiter.slot("c", "exports") as first:
        assert first.allowed
        assert first.remaining == 1
        assert first.retry_after is None
        assert first.reset_after == LEASE
        assert first.limit == 2
        with limiter.slot("c", "exports") as second:
            assert second.allowed
            assert second.remaining == 0
            clock.advance(5)
            with limiter.slot("c", "exports") as third:
                # Refused, nothing raised; retry_after: until the earliest lease expires.
                assert not third.allowed
                assert third.remaining == 0
                assert third.retry_after == LEASE - 5
            with limiter.slot("other", "exports") as elsewhere:
                assert elsewhere.allowed  # per identity
        assert limiter.peek("c", "exports").remaining == 1
    assert limiter.peek("c", "exports").remaining == 2


def test_an_exception_in_the_block_releases_the_slot() -> None:
    limiter = _limiter(FakeClock())
    with pytest.raises(RuntimeError), limiter.slot("c", "exports"):
        raise RuntimeError("boom")
    assert limiter.peek("c", "exports", 2).allowed


def test_release_is_idempotent_and_a_dead_holder_frees_its_slot_at_lease_end() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    held = limiter.acquire_slot("c", "exports")
    limiter.acquire_slot("c", "exports")  # never released: its holder "died"
    assert held.decision.allowed
    held.release()
    held.release()
    assert not held.held
    assert limiter.peek("c", "exports").remaining == 1  # the second release freed nothing
    clock.advance(LEASE - 0.001)
    assert limiter.peek("c", "exports").remaining == 1
    clock.advance(0.001)
    assert limiter.peek("c", "exports").remaining == 2


def test_a_renewal_after_expiry_never_resurrects_the_slot(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    late = limiter.acquire_slot("c", "exports")
    clock.advance(LEASE / 2)
    assert late.renew()
    clock.advance(LEASE - 1)
    assert limiter.peek("c", "exports").remaining == 1
    clock.advance(1)  # expired, and both slots go to others
    others = [limiter.acquire_slot("c", "exports") for _ in range(2)]
    assert all(o.allowed for o in others)
    assert not late.renew()
    assert late.held is False
    assert "was lost" in caplog.text
    assert not limiter.acquire_slot("c", "exports").allowed  # still exactly two holders
    late.release()  # a lost slot's release frees nobody else's
    assert limiter.peek("c", "exports").remaining == 0


def test_check_and_check_many_on_a_concurrency_policy_point_to_slot() -> None:
    limiter = _limiter(FakeClock())
    with pytest.raises(ValueError, match=r"concurrency policy.*limiter\.slot"):
        limiter.check("c", "exports")
    with pytest.raises(ValueError, match="concurrency policy"):
        limiter.check_many([("c", "exports"), ("c", "api")])
    with pytest.raises(ValueError, match="concurrency policy"):
        limiter.acquire("c", "exports")
    with pytest.raises(ValueError, match=r"rate policy \(fixed_window\).*check\(\)"):
        limiter.acquire_slot("c", "api")
    with pytest.raises(KeyError, match="unknown policy"):
        limiter.acquire_slot("c", "nope")


def test_reset_frees_every_slot_and_the_holders_lose_them() -> None:
    limiter = _limiter(FakeClock())
    held = limiter.acquire_slot("c", "exports")
    limiter.reset("c", "exports")
    assert limiter.peek("c", "exports", 2).allowed
    assert not held.renew()


def test_the_policy_and_config_forms() -> None:
    policy = Policy(3, "30s", algorithm=CONCURRENCY)
    assert policy.describe() == "3 at once, leases of 30s (concurrency)"
    config = parse_config(
        {"exports": {"limit": 3, "window": "30s", "algorithm": "concurrency"}}, source="x.json"
    )
    assert config.policies["exports"] == policy
    with pytest.raises(ConfigError, match=r"policies\.exports\.lease.*window is already"):
        parse_config(
            {"exports": {"limit": 3, "window": 30, "algorithm": "concurrency", "lease": 1}},
            source="x.json",
        )
    with pytest.raises(ConfigError, match="burst applies only"):
        Policy(3, 30, algorithm="concurrency", burst=4)
    with pytest.raises(ConfigError, match="concurrency"):
        Policy(3, 30, algorithm="concurency")


@pytest.mark.parametrize("mode", ["open", "closed", "raise"])
def test_failure_modes(mode: str) -> None:
    policies = {"exports": Policy(1, 60, algorithm="concurrency", failure_mode=mode)}
    limiter = RateLimiter(policies, FailingStore())
    if mode == "raise":
        with pytest.raises(StoreError), limiter.slot("c", "exports"):
            pass
        return
    slot = limiter.acquire_slot("c", "exports")
    assert slot.decision.degraded
    assert slot.allowed is (mode == "open")
    assert not slot.held  # nothing to renew or release
    slot.release()


def test_exempt_identities_and_overrides() -> None:
    policy = Policy(1, 60, algorithm="concurrency", exempt=["ops"], overrides={"big": {"limit": 3}})
    limiter = RateLimiter({"exports": policy}, clock=FakeClock())
    exempt = [limiter.acquire_slot("ops", "exports") for _ in range(3)]
    assert all(s.allowed and s.decision.source == "exempt" and not s.held for s in exempt)
    assert [limiter.acquire_slot("big", "exports").allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_every_acquisition_and_peek_passes_the_observer() -> None:
    capture = DecisionCapture()
    limiter = RateLimiter(POLICIES, clock=FakeClock(), observer=capture)
    with limiter.slot("c", "exports") as decision:
        peeked = limiter.peek("c", "exports")
    assert capture.decisions == [decision, peeked]  # renewals and releases decide nothing


def test_slot_with_a_timeout_waits_for_a_lease_to_expire_on_the_fake_clock() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.acquire_slot("c", "exports")
    limiter.acquire_slot("c", "exports")
    start = clock()
    assert not limiter.acquire_slot("c", "exports", timeout=10).allowed
    assert clock() - start == pytest.approx(10)  # waited exactly the timeout, no longer
    with limiter.slot("c", "exports", timeout=LEASE) as decision:
        assert decision.allowed
    assert start + LEASE - 1e-6 <= clock() <= start + LEASE + 0.01  # (µs rounding)


def test_the_pure_function_twin_rules() -> None:
    rule = rule_for(Policy(2, 1, algorithm="concurrency"))
    out = slots({}, SLOT_ACQUIRE, "a", 0, 1, rule)
    assert out.allowed
    assert out.holders == {"a": 1_000_000}
    assert out.free == 1
    assert slots({"a": 5}, SLOT_RENEW, "a", 5, 1, rule).allowed is False  # expired at 5
    assert slots({"a": 5}, SLOT_RELEASE, "a", 4, 1, rule).holders == {}
    peek = slots({"a": 9, "b": 7}, SLOT_PEEK, "", 4, 2, rule)
    assert not peek.allowed
    assert peek.retry == 5
    assert peek.holders is None


# -- waiting mode -----------------------------------------------------------------------------


def test_acquire_waits_per_retry_after_on_the_fake_clock() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    for _ in range(3):
        limiter.check("w", "api")
    start = clock()
    decision = limiter.acquire("w", "api", timeout=30)
    assert decision.allowed
    waited = clock() - start
    assert 10 <= waited <= 10 + 0.05 + 1e-6  # retry_after plus at most 50 ms of jitter


def test_acquire_returns_the_refusal_at_once_when_waiting_would_pass_the_timeout() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    for _ in range(3):
        limiter.check("w", "api")
    start = clock()
    decision = limiter.acquire("w", "api", timeout=9.9)
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(10)
    assert clock() == start  # did not sleep at all
    assert not limiter.acquire("w", "api", timeout=0).allowed
    with pytest.raises(ValueError, match="timeout"):
        limiter.acquire("w", "api", timeout=-1)


def test_limited_decorates_plain_functions() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    calls: list[str] = []

    @limiter.limited("api", identity=lambda who: who)
    def hello(who: str) -> str:
        calls.append(who)
        return f"hi {who}"

    @limiter.limited("exports", identity="everyone", wait=5)
    def export() -> int:
        with pytest.raises(RateLimitExceeded):
            export_again()
        return limiter.peek("everyone", "exports").remaining

    @limiter.limited("exports", identity="everyone")
    def export_again() -> None:
        export_again()

    assert [hello("a") for _ in range(3)] == ["hi a"] * 3
    with pytest.raises(RateLimitExceeded, match=r"'api' exceeded; retry in 10\.000s") as refused:
        hello("a")
    assert refused.value.decision.retry_after == 10
    assert calls == ["a"] * 3
    assert export() == 1  # only the outer call holds one: the inner calls released theirs
    assert limiter.peek("everyone", "exports").remaining == 2
    with pytest.raises(TypeError, match="coroutine function"):

        @limiter.limited("api", identity="x")
        async def wrong() -> None: ...

    with pytest.raises(KeyError):
        limiter.limited("nope", identity="x")(hello)


# -- asyncio --------------------------------------------------------------------------------


async def test_async_slots_and_decorator() -> None:
    clock = FakeClock()
    async with AsyncRateLimiter(POLICIES, clock=clock, sleep=clock.asleep) as limiter:
        async with limiter.slot("c", "exports") as first, limiter.slot("c", "exports") as second:
            assert first.allowed
            assert second.allowed
            async with limiter.slot("c", "exports") as third:
                assert not third.allowed
        assert (await limiter.peek("c", "exports")).remaining == 2
        slot = await limiter.acquire_slot("c", "exports")
        assert slot.held
        await slot.release()
        await slot.release()
        assert (await limiter.peek("c", "exports")).remaining == 2

        @limiter.limited("api", identity="x", wait=30)
        async def call() -> float:
            return clock()

        start = clock()
        times = [await call() for _ in range(4)]
        assert times[:3] == [start] * 3
        assert times[3] >= start + 10

        with pytest.raises(TypeError, match="not a coroutine function"):
            limiter.limited("api", identity="x")(lambda: None)  # type: ignore[arg-type, return-value]


async def test_a_cancelled_waiter_consumes_nothing() -> None:
    clock = FakeClock()
    forever = asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        await forever.wait()

    async with AsyncRateLimiter(POLICIES, clock=clock, sleep=sleep_forever) as limiter:
        for _ in range(3):
            await limiter.check("w", "api")
        waiter = asyncio.create_task(limiter.acquire("w", "api", timeout=60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        clock.advance(10)
        # A fresh window, untouched: as for an identity never seen.
        assert await limiter.peek("w", "api") == await limiter.peek("never-seen", "api")


def test_a_slot_dropped_without_release_stops_being_renewed() -> None:
    """A forgotten slot must not be held for ever: its renewals stop when its holder drops
    it, and its lease frees it."""
    clock = FakeClock()
    limiter = _limiter(clock)
    slot = limiter.acquire_slot("c", "exports")
    assert limiter._keeper.held() == 1
    del slot
    gc.collect()
    assert limiter._keeper.held() == 0
    clock.advance(LEASE)
    assert limiter.peek("c", "exports", 2).allowed


async def test_an_async_slot_dropped_without_release_stops_its_renewal_task() -> None:
    # A 30 ms lease: the task looks at its slot every 10 ms (real time; bounded below).
    policies = {"exports": Policy(1, 0.03, algorithm="concurrency")}
    async with AsyncRateLimiter(policies, clock=FakeClock()) as limiter:
        slot = await limiter.acquire_slot("c", "exports")
        task = slot._renewal
        assert task is not None
        del slot
        gc.collect()
        await asyncio.wait_for(task, timeout=5)


def test_a_store_without_slot_operations_is_a_clear_type_error() -> None:
    class OldStore:
        slot_of = None

        def run_one(self, call: object) -> object:
            raise NotImplementedError

        def run(self, requests: object) -> object:
            raise NotImplementedError

        def ping(self) -> float:
            return 0.0

        def observe(self, observer: object) -> None:
            pass

        def close(self) -> None:
            pass

    limiter = RateLimiter(POLICIES, OldStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="does not support concurrency policies"):
        limiter.acquire_slot("c", "exports")
