"""What the benchmark measures: the traffic of each mode, and which runner drives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["sync", "async", "memory", "asgi"]
REDIS_KINDS: Final = frozenset({"sync", "async"})  # the kinds that need the Redis server


@dataclass(frozen=True, slots=True)
class Shape:
    """The traffic of a mode: which keys are hit, under what limit, and the expected answer."""

    limit: int
    window: int  # seconds
    keys: tuple[str, ...]
    expect_allowed: bool
    exhaust_first: bool = False  # spend the limit on the (single) key before timing


HOT_KEY: Final = ("hot",)
SHAPES: Final = {
    # Never refused: the limit is far above what a run can spend in an hour (10**9 per hour
    # would be too big for ratewall's exact sliding-window arithmetic).
    "allow": Shape(limit=10**8, window=3600, keys=HOT_KEY, expect_allowed=True),
    # One key already over its limit; a day-long window so nothing refills during the run.
    "deny": Shape(limit=100, window=86_400, keys=HOT_KEY, expect_allowed=False, exhaust_first=True),
    # Round-robin over 10,000 keys at 100/min: mostly first hits, never refused.
    "keys": Shape(
        limit=100,
        window=60,
        keys=tuple(f"user{i}" for i in range(10_000)),
        expect_allowed=True,
    ),
}


@dataclass(frozen=True, slots=True)
class Mode:
    slug: str  # for --modes and JSON
    label: str  # for the table
    kind: Kind  # which runner
    shape: str  # key into SHAPES
    concurrency: int = 1


MODES: Final = {
    mode.slug: mode
    for mode in (
        Mode("sync", "sync", "sync", "allow"),
        Mode("async1", "async C=1", "async", "allow", 1),
        Mode("async64", "async C=64", "async", "allow", 64),
        Mode("async512", "async C=512", "async", "allow", 512),
        Mode("memory", "memory", "memory", "allow"),
        Mode("deny", "deny flood", "sync", "deny"),
        Mode("10k", "10k keys", "sync", "keys"),
        # HTTP requests/s through uvicorn: the app in ratewall's middleware (memory store)
        # against the same app bare, 16 keep-alive connections of a closed-loop generator.
        Mode("asgi", "ASGI C=16", "asgi", "allow", 16),
    )
}
