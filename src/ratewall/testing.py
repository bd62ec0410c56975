"""Helpers for testing code that uses ratewall.

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

import threading
from collections.abc import Mapping

from .limiter import RateLimiter
from .policy import Policy

__all__ = ["FakeClock", "memory_limiter"]


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
