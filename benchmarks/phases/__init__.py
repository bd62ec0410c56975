"""The phases: one algorithm and mode, every library that has the algorithm, timed side by
side with the floor. One module per runner (``Mode.kind``); this one picks it and measures
the phase's wall time and steal."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence

from harness import cpu_times, steal_fraction
from modes import REDIS_KINDS, SHAPES, Mode
from peers import Library
from phase_result import PhaseResult

from .aio import run_async_phase
from .asgi import run_asgi_phase
from .common import Context, mark_failed
from .sync import run_sync_phase

__all__ = ["Context", "run_phase"]


def run_phase(
    ctx: Context, algorithm: str, mode: Mode, libraries: Sequence[Library]
) -> list[PhaseResult]:
    """One algorithm and mode: every library's result (an ASGI phase has one library)."""
    shape = SHAPES[mode.shape]
    results = [
        PhaseResult(
            algorithm=algorithm,
            mode=mode.slug,
            mode_label=mode.label,
            library=library.name,
            implementation=library.algorithms[algorithm],
            expected_allowed=shape.expect_allowed,
        )
        for library in libraries
    ]
    entrants = list(zip(libraries, results, strict=True))
    if mode.kind in REDIS_KINDS:
        ctx.stats.flush()  # every phase starts from an empty keyspace
    gc.collect()
    began = time.monotonic()
    ticks = cpu_times()
    try:
        if mode.kind == "async":
            asyncio.run(run_async_phase(ctx, entrants, mode))
        elif mode.kind == "asgi":
            for library, result in entrants:
                spec = ctx.spec(library, algorithm, shape)
                asyncio.run(run_asgi_phase(ctx, library, spec, mode, result))
        else:
            run_sync_phase(ctx, entrants, mode)
    except Exception as error:  # reported on the rows it left unmeasured
        for result in results:
            if result.status == "ok" and not result.decisions:
                mark_failed(result, error)
    wall = time.monotonic() - began
    steal = steal_fraction(ticks, cpu_times())
    for result in results:
        result.wall_seconds = wall
        result.steal_fraction = steal
    return results
