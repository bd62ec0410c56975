"""The phases of the modes whose calls come from one thread: sync, deny flood and 10k keys
(on the Redis server) and memory (each library's in-process store)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

from harness import Window, schedule, sync_block, sync_count
from modes import SHAPES, Mode
from peers import FLOOR_MEMORY, FLOOR_REDIS, DictWindow, Library, LimitSpec, SyncFloor, SyncLimiter
from phase_result import PhaseResult

from .common import Contender, Context, Roles, check_exhausted, check_sync, cycle, reported_on


def run_sync_phase(
    ctx: Context, entrants: Sequence[tuple[Library, PhaseResult]], mode: Mode
) -> None:
    """The sync, memory, deny and 10k modes: every library's limiter is opened (and checked,
    and its key spent for a deny flood), then their blocks and the floor's alternate."""
    shape = SHAPES[mode.shape]
    stats = ctx.stats if mode.kind != "memory" else None
    with contextlib.ExitStack() as opened:
        floor: SyncLimiter
        if mode.kind == "memory":
            floor, floor_name = DictWindow(shape.limit, shape.window), FLOOR_MEMORY
            chunk = ctx.settings.memory_chunk
        else:
            floor = SyncFloor(ctx.url, f"{ctx.prefix('floor')}:")
            floor_name, chunk = FLOOR_REDIS, 1
        opened.callback(floor.close)
        contenders: list[Contender] = []
        for library, result in entrants:
            spec = ctx.spec(library, result.algorithm, shape)
            open_limiter: Callable[[LimitSpec], SyncLimiter] = (
                library.open_memory
                if mode.kind == "memory"
                else functools.partial(library.open_sync, url=ctx.url)
            )
            with reported_on(result):
                check_sync(open_limiter, spec)
                limiter = open_limiter(spec)
                opened.callback(limiter.close)
                if shape.exhaust_first:
                    check_exhausted(
                        [limiter.hit(shape.keys[0]) for _ in range(shape.limit + 1)], shape.limit
                    )
                contenders.append(Contender(library.name, limiter.hit, cycle(shape.keys), result))
        if not contenders:
            return
        roles = Roles.of(contenders, floor.hit, shape)
        for step in schedule(ctx.settings, 1, [c.name for c in contenders]):
            with Window(stats if step.measured else None) as window:
                sample = sync_block(
                    roles.hits[step.role], roles.keys[step.role], step.seconds, chunk
                )
            roles.record(step, sample, window)
        for contender in contenders:
            roles.fill(contender, floor_name, server=stats is not None)
            if stats is None:
                continue
            calls = ctx.settings.count_calls
            with reported_on(contender.result):
                with ctx.monitor() as monitor:
                    errors = sync_count(contender.hit, contender.next_key, calls)
                contender.result.fill_requests(monitor, calls - errors)
