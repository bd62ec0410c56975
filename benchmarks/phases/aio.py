"""The phases of the async modes: C=1, C=64 and C=512 callers on one asyncio loop."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from harness import Window, async_block, async_count, schedule
from modes import SHAPES, Mode
from peers import FLOOR_REDIS, AsyncFloor, AsyncLimiter, Library, LimitSpec
from phase_result import PhaseResult

from .common import Contender, Context, Roles, check_async, check_exhausted, cycle, reported_on


async def run_async_phase(
    ctx: Context, entrants: Sequence[tuple[Library, PhaseResult]], mode: Mode
) -> None:
    """The async modes: as :func:`phases.sync.run_sync_phase`, every block with ``mode.concurrency``
    callers on this loop."""
    shape = SHAPES[mode.shape]
    async with contextlib.AsyncExitStack() as opened:
        floor = await AsyncFloor(ctx.url, f"{ctx.prefix('floor')}:").start()
        opened.push_async_callback(floor.aclose)
        contenders: list[Contender] = []
        for library, result in entrants:
            spec = ctx.spec(library, result.algorithm, shape)

            async def open_limiter(s: LimitSpec, library: Library = library) -> AsyncLimiter:
                return await library.open_async(s, ctx.url)

            with reported_on(result):
                await check_async(open_limiter, spec)
                limiter = await open_limiter(spec)
                opened.push_async_callback(limiter.aclose)
                if shape.exhaust_first:
                    answers = [await limiter.hit(shape.keys[0]) for _ in range(shape.limit + 1)]
                    check_exhausted(answers, shape.limit)
                contenders.append(Contender(library.name, limiter.hit, cycle(shape.keys), result))
        if not contenders:
            return
        roles = Roles.of(contenders, floor.hit, shape)
        for step in schedule(ctx.settings, mode.concurrency, [c.name for c in contenders]):
            with Window(ctx.stats if step.measured else None) as window:
                sample = await async_block(
                    [roles.hits[step.role]] * mode.concurrency,
                    roles.keys[step.role],
                    step.seconds,
                    at_least=0 if step.measured else ctx.settings.warmup_calls,
                )
            roles.record(step, sample, window)
        for contender in contenders:
            roles.fill(contender, FLOOR_REDIS, server=True)
            calls = max(ctx.settings.count_calls, mode.concurrency)
            with reported_on(contender.result):
                with ctx.monitor() as monitor:
                    errors = await async_count(
                        contender.hit, contender.next_key, calls, mode.concurrency
                    )
                contender.result.fill_requests(monitor, calls - errors)
