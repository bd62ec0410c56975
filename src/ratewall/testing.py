"""Helpers for testing code that uses ratewall: a clock to move time by hand, a limiter on
the memory store, a store that fails on demand (for outage tests), and an observer that
captures every decision.

>>> from ratewall.testing import FakeClock, memory_limiter
>>> clock = FakeClock()
>>> limiter = memory_limiter({"login": (5, 60)}, clock=clock)
>>> [limiter.check("u", "login").allowed for _ in range(6)]
[True, True, True, True, True, False]
>>> clock.advance(60)
>>> limiter.check("u", "login").allowed
True
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .decision import Decision
from .limiter import RateLimiter
from .observer import BaseObserver
from .policy import Policy
from .stores.base import DEFAULT_TIMEOUT, AsyncStore, Store
from .stores.batching import AsyncRedisStore
from .stores.redis import RedisStore

if TYPE_CHECKING:
    from ._calls import Call, Reply, Request, SlotCall
    from .observer import Observer

__all__ = ["DecisionCapture", "FailingStore", "FakeClock", "memory_limiter"]


class FakeClock:
    """A clock that only moves when told to. Pass it as ``clock=`` to a limiter.

    Seconds are floats; ratewall rounds them to whole microseconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward; use set() to go back on purpose")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once: pass ``sleep=clock.sleep`` to a
        :class:`~ratewall.RateLimiter` so that its waiting (``acquire``, slots with a
        timeout) takes no real time."""
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """The same for an :class:`~ratewall.AsyncRateLimiter` (``sleep=clock.asleep``). It
        still yields to the event loop once, as a real sleep would."""
        self.advance(seconds)
        await asyncio.sleep(0)


def memory_limiter(
    policies: Mapping[str, Policy | tuple[int, float | str]],
    *,
    clock: FakeClock | None = None,
) -> RateLimiter:
    """A memory-store limiter; policies may be given as ``(limit, window)`` pairs."""
    built = {
        name: value if isinstance(value, Policy) else Policy(limit=value[0], window=value[1])
        for name, value in policies.items()
    }
    return RateLimiter(built, "memory://", clock=clock)


FailureKind = Literal["refuse", "hang", "error"]


class FailingStore:
    """A store that fails on demand, for testing what an application does when Redis is
    down. Pass it as ``store=`` to :class:`~ratewall.RateLimiter` or
    :class:`~ratewall.AsyncRateLimiter`; it serves both.

    While failing, every call fails the way a broken store does:

    * ``"refuse"``: at once, with :class:`ConnectionRefusedError` (the server is down);
    * ``"hang"``: after ``timeout`` seconds, with :class:`TimeoutError` (the server froze:
      the caller waits the whole store timeout, as it would for real);
    * ``"error"``: at once, with the exception given to :meth:`fail`.

    While healthy, calls go to ``store`` (a Redis URL, or a store object); with none, the
    store starts failing and cannot recover.

    >>> from ratewall import Policy, RateLimiter
    >>> store = FailingStore()
    >>> policies = {"login": Policy(5, 60, failure_mode="closed")}
    >>> RateLimiter(policies, store).check("user_123", "login").allowed
    False
    """

    url = None
    slot_of: Callable[[str], int] | None = None

    def __init__(
        self,
        store: str | Store | AsyncStore | None = None,
        *,
        failing: FailureKind | None = "refuse",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._inner = store
        self._sync: Store | None = store if isinstance(store, Store) else None
        self._async: AsyncStore | None = store if isinstance(store, AsyncStore) else None
        self.timeout = timeout
        self.failing: FailureKind | None = None
        self._error: BaseException = ConnectionRefusedError("connection refused (FailingStore)")
        self._observer: Observer | None = None
        #: Calls made to this store (each ``run``/``run_one`` is one), failed or not.
        self.calls = 0
        if failing is not None:
            self.fail(failing)
        elif store is None:
            raise ValueError("a FailingStore without a store to pass calls to must be failing")

    def fail(self, kind: FailureKind = "refuse", error: BaseException | None = None) -> None:
        """Fail every call from now on, the way ``kind`` says."""
        if kind not in ("refuse", "hang", "error"):
            raise ValueError(f"kind must be 'refuse', 'hang' or 'error', got {kind!r}")
        if kind == "error" and error is None:
            raise ValueError("fail('error') needs the exception to raise")
        self.failing = kind
        self._error = {
            "refuse": ConnectionRefusedError("connection refused (FailingStore)"),
            "hang": TimeoutError("the store did not answer in time (FailingStore)"),
        }.get(kind, error or RuntimeError())

    def recover(self) -> None:
        """Pass calls to the real store again."""
        if self._inner is None:
            raise ValueError("this FailingStore has no store to recover to")
        self.failing = None

    @contextlib.contextmanager
    def failures(
        self, kind: FailureKind = "refuse", error: BaseException | None = None
    ) -> Iterator[None]:
        """Fail inside the block, recover after it."""
        self.fail(kind, error)
        try:
            yield
        finally:
            self.recover()

    # -- Store ----------------------------------------------------------------------------

    def _failed(self) -> BaseException:
        self.calls += 1
        if self.failing == "hang":
            time.sleep(self.timeout)
        return self._error

    def _synchronous(self) -> Store:
        if self._sync is None:
            if not isinstance(self._inner, str):
                raise TypeError(f"{self._inner!r} is not a synchronous store")
            self._sync = RedisStore(self._inner, timeout=self.timeout)
            self._sync.observe(self._observer)
        return self._sync

    def run_one(self, call: Call) -> Reply:
        if self.failing is not None:
            raise self._failed()
        self.calls += 1
        return self._synchronous().run_one(call)

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self.failing is not None:
            raise self._failed()
        self.calls += 1
        return self._synchronous().run(requests)

    def run_slot(self, call: SlotCall) -> Reply:
        if self.failing is not None:
            raise self._failed()
        self.calls += 1
        return self._synchronous().run_slot(call)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> float:
        if self.failing is not None:
            raise self._failed()
        return self._synchronous().ping()

    def observe(self, observer: Observer | None) -> None:
        self._observer = observer
        for store in (self._sync, self._async):
            if store is not None:
                store.observe(observer)

    def close(self) -> None:
        if self._sync is not None and self._sync is not self._inner:
            self._sync.close()

    # -- AsyncStore -----------------------------------------------------------------------

    async def _afailed(self) -> BaseException:
        self.calls += 1
        if self.failing == "hang":
            await asyncio.sleep(self.timeout)
        return self._error

    def _asynchronous(self) -> AsyncStore:
        if self._async is None:
            if not isinstance(self._inner, str):
                raise TypeError(f"{self._inner!r} is not an asyncio store")
            self._async = AsyncRedisStore(self._inner, timeout=self.timeout)
            self._async.observe(self._observer)
        return self._async

    async def arun_one(self, call: Call) -> Reply:
        if self.failing is not None:
            raise await self._afailed()
        self.calls += 1
        return await self._asynchronous().arun_one(call)

    async def arun(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self.failing is not None:
            raise await self._afailed()
        self.calls += 1
        return await self._asynchronous().arun(requests)

    async def arun_slot(self, call: SlotCall) -> Reply:
        if self.failing is not None:
            raise await self._afailed()
        self.calls += 1
        store = self._asynchronous()
        return await store.arun_slot(call)  # type: ignore[attr-defined, no-any-return]

    async def aping(self) -> float:
        if self.failing is not None:
            raise await self._afailed()
        return await self._asynchronous().aping()

    async def aclose(self) -> None:
        self.close()
        if self._async is not None and self._async is not self._inner:
            await self._async.aclose()


@dataclass(frozen=True)
class StoreCall:
    """One round trip seen by a :class:`DecisionCapture`."""

    seconds: float
    calls: int
    error: BaseException | None


class DecisionCapture(BaseObserver):
    """An observer (``observer=`` on a limiter) that keeps what it sees, for assertions:
    every decision, every store round trip, every circuit-breaker transition, every store
    error raised to the caller (failure mode ``"raise"``).

    >>> from ratewall import Policy, RateLimiter
    >>> capture = DecisionCapture()
    >>> limiter = RateLimiter({"login": Policy(1, 60)}, observer=capture)
    >>> _ = limiter.check("u", "login"), limiter.check("u", "login")
    >>> [d.allowed for d in capture.decisions]
    [True, False]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.decisions: list[Decision] = []
        self.store_calls: list[StoreCall] = []
        self.breaker: list[tuple[bool, BaseException | None]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.reloads: list[BaseException | None] = []

    def on_decision(self, decision: Decision) -> None:
        with self._lock:
            self.decisions.append(decision)

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        with self._lock:
            self.store_calls.append(StoreCall(seconds, calls, error))

    def on_breaker(self, opened: bool, error: BaseException | None) -> None:
        with self._lock:
            self.breaker.append((opened, error))

    def on_error(self, policy: str, error: BaseException) -> None:
        with self._lock:
            self.errors.append((policy, error))

    def on_reload(self, error: BaseException | None) -> None:
        with self._lock:
            self.reloads.append(error)

    def where(self, predicate: Callable[[Decision], bool]) -> list[Decision]:
        """The decisions for which ``predicate`` holds."""
        with self._lock:
            return [d for d in self.decisions if predicate(d)]

    def clear(self) -> None:
        with self._lock:
            self.decisions.clear()
            self.store_calls.clear()
            self.breaker.clear()
            self.errors.clear()
            self.reloads.clear()
