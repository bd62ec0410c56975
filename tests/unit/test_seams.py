"""The seams other features hook into: store objects, the one decision exit and its
observer, and the testing helpers that use them. No I/O here (tests/redis/test_store_seam.py
runs the same seams on real servers)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter, StoreError
from ratewall.observer import BaseObserver, Observer
from ratewall.stores import AsyncStore, LocalStore, MemoryStore, Store
from ratewall.testing import DecisionCapture, FailingStore, FakeClock

POLICIES = {"login": Policy(2, 60), "api": Policy(10, 60, algorithm="token_bucket")}


def test_a_memory_store_object_is_accepted_and_decides_like_the_url() -> None:
    clock = FakeClock()
    by_url = RateLimiter(POLICIES, "memory://", clock=clock)
    by_object = RateLimiter(POLICIES, MemoryStore(lambda: round(clock() * 1_000_000)))
    for _ in range(3):
        assert by_object.check("u", "login") == by_url.check("u", "login")
    assert isinstance(MemoryStore(lambda: 0), LocalStore)
    assert repr(by_object) == "RateLimiter(policies=['api', 'login'], store='<MemoryStore>')"


def test_a_store_of_the_wrong_kind_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="asyncio store: use AsyncRateLimiter"):
        RateLimiter(POLICIES, _AsyncOnly())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got object"):
        AsyncRateLimiter(POLICIES, object())  # type: ignore[arg-type]


class _AsyncOnly:
    slot_of = None

    async def arun_one(self, call: object) -> object:
        raise NotImplementedError

    async def arun(self, requests: object) -> object:
        raise NotImplementedError

    async def aping(self) -> float:
        raise NotImplementedError

    def observe(self, observer: object) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def test_every_memory_decision_passes_the_observer() -> None:
    capture = DecisionCapture()
    limiter = RateLimiter(POLICIES, observer=capture)
    answers = [limiter.check("u", "login") for _ in range(3)]
    answers.append(limiter.peek("u", "login"))
    answers += limiter.check_many([("v", "login"), ("v", "api", 2)])
    assert capture.decisions == answers
    assert [d.allowed for d in capture.decisions] == [True, True, False, False, True, True]
    assert {d.source for d in capture.decisions} == {"store"}
    assert capture.store_calls == []  # the memory store makes none


async def test_the_async_facade_reports_to_the_same_observer() -> None:
    capture = DecisionCapture()
    async with AsyncRateLimiter(POLICIES, observer=capture) as limiter:
        answers = [await limiter.check("u", "login") for _ in range(3)]
    assert capture.decisions == answers


def test_an_observer_that_raises_never_changes_the_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(BaseObserver):
        def on_decision(self, decision: Decision) -> None:
            raise RuntimeError("observer bug")

    limiter_observer = Broken()
    limiter = RateLimiter(POLICIES, observer=limiter_observer)
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        answers = [limiter.check("u", "login").allowed for _ in range(3)]
    assert answers == [True, True, False]
    # Reported once, not once per decision.
    assert [r.getMessage() for r in caplog.records] == [
        f"ratewall observer {limiter_observer!r} failed (reported once per policy)"
    ]


def test_an_observer_need_not_subclass_anything() -> None:
    seen: list[Decision] = []

    class Plain:
        def on_decision(self, decision: Decision) -> None:
            seen.append(decision)

        def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
            return None

        def on_breaker(self, opened: bool, error: BaseException | None) -> None:
            return None

        def on_error(self, policy: str, error: BaseException) -> None:
            return None

        def on_reload(self, error: BaseException | None) -> None:
            return None

    observer: Observer = Plain()
    RateLimiter(POLICIES, observer=observer).check("u", "login")
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("mode", "allowed", "raises"),
    [("open", True, False), ("closed", False, False), ("raise", None, True)],
)
def test_a_failing_store_gets_the_failure_mode_and_the_breaker_says_so_once(
    mode: str, allowed: bool | None, raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    capture = DecisionCapture()
    store = FailingStore()
    limiter = RateLimiter(
        {"login": Policy(5, 60, failure_mode=mode)},
        store,
        clock=clock,
        observer=capture,
        breaker_threshold=2,
        breaker_cooldown=5,
    )
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        for _ in range(6):
            if raises:
                with pytest.raises(StoreError, match="policy 'login'"):
                    limiter.check("u", "login")
            else:
                decision = limiter.check("u", "login")
                assert (decision.allowed, decision.degraded) == (allowed, True)
                assert decision.source == "failure"
    # Two failures open the breaker: the other four calls never reach the store.
    assert store.calls == 2
    assert [opened for opened, _ in capture.breaker] == [True]
    assert isinstance(capture.breaker[0][1], ConnectionRefusedError)
    assert caplog.text.count("store is failing") == 1
    assert len(capture.decisions) == (0 if raises else 6)
    assert [policy for policy, _ in capture.errors] == (["login"] * 6 if raises else [])


def test_a_failing_store_hangs_for_its_timeout() -> None:
    store = FailingStore(failing="hang", timeout=0.01)
    limiter = RateLimiter({"login": Policy(5, 60, failure_mode="open")}, store)
    assert limiter.check("u", "login").degraded
    assert store.calls == 1
    with pytest.raises(StoreError, match="TimeoutError"):
        limiter.ping()


async def test_a_failing_store_serves_async_limiters_too() -> None:
    store = FailingStore()
    store.fail("error", OSError("disk on fire"))
    limiter = AsyncRateLimiter({"login": Policy(5, 60, failure_mode="closed")}, store)
    decisions = await asyncio.gather(*(limiter.check("u", "login") for _ in range(3)))
    assert [d.allowed for d in decisions] == [False] * 3
    with pytest.raises(StoreError, match="disk on fire"):
        await limiter.ping()
    assert isinstance(store, Store)
    assert isinstance(store, AsyncStore)


def test_a_failing_store_without_a_real_one_cannot_recover() -> None:
    with pytest.raises(ValueError, match="no store to recover to"):
        FailingStore().recover()
    with pytest.raises(ValueError, match="needs the exception"):
        FailingStore().fail("error")


def test_ping_of_the_memory_store_is_free() -> None:
    assert RateLimiter(POLICIES).ping() == 0.0


@pytest.mark.parametrize(
    ("option", "value"),
    [("breaker_threshold", 0), ("breaker_threshold", 1.5), ("breaker_cooldown", 0)],
)
def test_breaker_settings_are_checked(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        RateLimiter(POLICIES, **{option: value})  # type: ignore[arg-type]


def test_the_store_password_is_never_shown(tmp_path: Path) -> None:
    from ratewall.cli import describe_config
    from ratewall.config import load_config

    url = "redis://:hunter2@127.0.0.1:1/0"
    limiter = RateLimiter(POLICIES, FailingStore())
    limiter.store_url = url
    assert "hunter2" not in repr(limiter)
    with pytest.raises(StoreError) as caught:
        limiter.ping()
    assert "hunter2" not in str(caught.value)
    path = tmp_path / "limits.json"
    path.write_text(f'{{"store": "{url}", "policies": {{"a": {{"limit": 1, "window": 1}}}}}}')
    assert not any("hunter2" in line for line in describe_config(load_config(path)))
