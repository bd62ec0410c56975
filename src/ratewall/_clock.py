"""Clocks. All of ratewall's internal time is integer microseconds.

A clock is any zero-argument callable returning seconds as a float (``time.monotonic`` is the
default for the memory store and the local deny cache). The Redis store ignores the local clock
and takes time from the server's ``TIME`` unless a clock is injected, which tests do so that the
memory store and the Redis store see the very same instants.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

MICROS = 1_000_000


def to_micros(seconds: float) -> int:
    """Seconds (float) to whole microseconds, the one rounding every store shares."""
    return round(seconds * MICROS)


def monotonic_micros() -> int:
    return time.monotonic_ns() // 1000


def micros_from(clock: Clock | None) -> Callable[[], int]:
    """A zero-argument callable giving the clock's time in integer microseconds."""
    if clock is None:
        return monotonic_micros
    return lambda: to_micros(clock())
