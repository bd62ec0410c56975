"""What every phase shares: its context (settings, the Redis server), the sanity check of a
library before it is timed, the contenders and the roles of a schedule."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from harness import FLOOR, RequestMonitor, ServerStats, Settings, Step, Tally, Window
from modes import Shape
from peers import AsyncLimiter, Library, LimitSpec, SyncLimiter
from phase_result import PhaseResult

from ratewall.embedded import LocalServer


class MisconfiguredError(Exception):
    """An adapter failed the sanity check; its numbers would mean nothing."""


SANITY_LIMIT: Final = 3
SANITY_EXPECTED: Final = [True] * SANITY_LIMIT + [False]


@dataclass(slots=True)
class Context:
    settings: Settings
    # The Redis server and its stats; None when no phase of the run needs Redis.
    redis: LocalServer | None = None
    redis_stats: ServerStats | None = None
    phase_index: int = 0

    @property
    def server(self) -> LocalServer:
        if self.redis is None:
            raise RuntimeError("this run started no Redis server")
        return self.redis

    @property
    def stats(self) -> ServerStats:
        if self.redis_stats is None:
            raise RuntimeError("this run started no Redis server")
        return self.redis_stats

    @property
    def url(self) -> str:
        return self.server.url

    def monitor(self) -> RequestMonitor:
        return RequestMonitor(self.server.host, self.server.port, self.stats)

    def prefix(self, library: str) -> str:
        return f"b{self.phase_index}-{library}"

    def spec(self, library: Library, algorithm: str, shape: Shape) -> LimitSpec:
        return LimitSpec(algorithm, shape.limit, shape.window, self.prefix(library.name))


def cycle(keys: Sequence[str]) -> Callable[[], str]:
    return itertools.cycle(keys).__next__


def sanity_specs(spec: LimitSpec) -> list[LimitSpec]:
    """The sanity check's limiters: limit 3 a day, under a prefix of their own. Two, since a
    clock-aligned window may roll over during the first try."""
    return [
        replace(spec, limit=SANITY_LIMIT, window=86_400, prefix=f"{spec.prefix}-s{attempt}")
        for attempt in range(2)
    ]


def insane(answers: list[bool]) -> MisconfiguredError:
    return MisconfiguredError(f"limit {SANITY_LIMIT} answered {answers}")


def check_sync(open_limiter: Callable[[LimitSpec], SyncLimiter], spec: LimitSpec) -> None:
    answers: list[bool] = []
    for sanity in sanity_specs(spec):
        limiter = open_limiter(sanity)
        try:
            answers = [limiter.hit("sanity") for _ in SANITY_EXPECTED]
        finally:
            limiter.close()
        if answers == SANITY_EXPECTED:
            return
    raise insane(answers)


async def check_async(
    open_limiter: Callable[[LimitSpec], Awaitable[AsyncLimiter]], spec: LimitSpec
) -> None:
    answers: list[bool] = []
    for sanity in sanity_specs(spec):
        limiter = await open_limiter(sanity)
        try:
            answers = [await limiter.hit("sanity") for _ in SANITY_EXPECTED]
        finally:
            await limiter.aclose()
        if answers == SANITY_EXPECTED:
            return
    raise insane(answers)


def check_exhausted(answers: list[bool], limit: int) -> None:
    if answers != [True] * limit + [False]:
        raise MisconfiguredError(
            f"spending a limit of {limit} gave {answers.count(True)} allowed and "
            f"{answers.count(False)} refused answers"
        )


@dataclass(slots=True)
class Contender:
    """One library in a phase: its limiter, the keys it cycles through, its result."""

    name: str
    hit: Callable[[str], Any]
    next_key: Callable[[], str]
    result: PhaseResult


@dataclass(slots=True)
class Roles:
    """Per role of a schedule (each contender's name, and FLOOR): what it calls, the keys it
    cycles through, and its tally of measured blocks."""

    hits: dict[str, Callable[[str], Any]]
    keys: dict[str, Callable[[], str]]
    tallies: dict[str, Tally]

    @classmethod
    def of(
        cls, contenders: Sequence[Contender], floor: Callable[[str], Any], shape: Shape
    ) -> Roles:
        hits = {c.name: c.hit for c in contenders} | {FLOOR: floor}
        keys = {c.name: c.next_key for c in contenders} | {FLOOR: cycle(shape.keys)}
        return cls(hits, keys, {role: Tally() for role in hits})

    def fill(self, contender: Contender, floor_name: str, *, server: bool) -> None:
        """The contender's result, from its tally and the floor's."""
        contender.result.fill(
            self.tallies[contender.name], self.tallies[FLOOR], floor_name, server=server
        )

    def record(self, step: Step, sample: Tally, window: Window) -> None:
        """A block's sample, with the server's CPU and commands during it (measured only)."""
        if not step.measured:
            return
        sample.server_cpu_seconds = window.cpu_seconds
        self.tallies[step.role].add(sample)
        if step.role != FLOOR:
            self.tallies[step.role].commands.update(window.commands)


def mark_failed(result: PhaseResult, error: Exception) -> None:
    if isinstance(error, MisconfiguredError):
        result.status, result.error = "misconfigured", str(error)
    else:
        result.status, result.error = "error", f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def reported_on(result: PhaseResult) -> Iterator[None]:
    """An error inside is reported on ``result``'s row and goes no further: the phase goes on
    with the other libraries."""
    try:
        yield
    except Exception as error:
        mark_failed(result, error)
