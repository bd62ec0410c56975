"""A limiter used before ``os.fork()`` keeps working, separately, in both processes.

This is what gunicorn ``--preload``, Celery prefork and ``multiprocessing`` do: the parent
builds (and often warms up) the limiter, then forks workers that use it. A connection shared
by two processes interleaves their commands and hands each one the other's replies, so
every decision must be made on a connection of the process's own.

Each process checks its own identity ``CHECKS`` times under a generous limit, so the
``remaining`` values it sees must count down by exactly one per check: a reply meant for the
other process breaks the sequence, and a reply that went to the other process makes a call
time out.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter

CHECKS = 1_500
LIMIT = 1_000_000
POLICIES = {"api": Policy(LIMIT, 3600, failure_mode="raise")}
# A loaded two-core CI machine can stall a process for a while; the sequence is what matters.
TIMEOUT = 2.0


def _countdown_problem(decisions: list[Decision], before: int) -> str | None:
    """Why ``decisions`` are not the countdown one process alone would see, or ``None``."""
    expected = [LIMIT - before - n for n in range(1, len(decisions) + 1)]
    seen = [d.remaining for d in decisions]
    if seen == expected and all(d.allowed for d in decisions):
        return None
    wrong = sum(1 for s, e in zip(seen, expected, strict=True) if s != e)
    first = next(i for i, (s, e) in enumerate(zip(seen, expected, strict=True)) if s != e)
    return f"{wrong} of {len(seen)} answers were not this process's own (first at #{first})"


@contextmanager
def _forked(child: Callable[[], str]) -> Iterator[list[str]]:
    """Run ``child`` in a forked process while the block runs in this one. The yielded list
    holds the child's report (what it returned, or the error it raised) once the block
    ends; the test fails if the child died."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads (pytest's, here);
        # the limiter is exactly what must cope with that.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result travels through the pipe
        os.close(read_end)
        try:
            report = child()
        except BaseException as error:
            report = f"{type(error).__name__}: {error}"
        os.write(write_end, report.encode()[:4000])
        os._exit(0)
    os.close(write_end)
    reports: list[str] = []
    try:
        yield reports
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            reports.append(pipe.read().decode())
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child died ({status})"


def _ok(problem: str | None) -> str:
    return problem or "ok"


@pytest.mark.parametrize("used_before_fork", [True, False], ids=["warm", "cold"])
def test_sync_limiter_after_fork(redis_url: str, used_before_fork: bool) -> None:
    limiter = RateLimiter(POLICIES, redis_url, timeout=TIMEOUT, local_cache_size=0)
    before = 0
    if used_before_fork:
        # The parent's pooled connection is what the child must not use.
        assert limiter.check("parent", "api").allowed
        assert limiter.check("child", "api").allowed
        before = 1

    def child() -> str:
        return _ok(
            _countdown_problem([limiter.check("child", "api") for _ in range(CHECKS)], before)
        )

    with _forked(child) as child_report:
        problem = _countdown_problem(
            [limiter.check("parent", "api") for _ in range(CHECKS)], before
        )
    assert problem is None, f"parent: {problem}"
    assert child_report == ["ok"]
    limiter.close()


@pytest.mark.parametrize("used_before_fork", [True, False], ids=["warm", "cold"])
def test_async_limiter_after_fork(redis_url: str, used_before_fork: bool) -> None:
    """The parent keeps its event loop and connection; the child runs a loop of its own, as
    a worker process does."""
    limiter = AsyncRateLimiter(POLICIES, redis_url, timeout=TIMEOUT, local_cache_size=0)
    loop = asyncio.new_event_loop()
    before = 0
    if used_before_fork:
        assert loop.run_until_complete(limiter.check("parent", "api")).allowed
        assert loop.run_until_complete(limiter.check("child", "api")).allowed
        before = 1

    async def countdown(identity: str) -> str | None:
        # Concurrent callers, so that the batching store's queue is exercised too.
        decisions: list[Decision] = []
        for _ in range(CHECKS // 10):
            decisions += await asyncio.gather(*(limiter.check(identity, "api") for _ in range(10)))
        decisions.sort(key=lambda d: -d.remaining)
        return _countdown_problem(decisions, before)

    def child() -> str:
        # Never touch the parent's loop here: it shares its epoll instance with the parent.
        return _ok(asyncio.new_event_loop().run_until_complete(countdown("child")))

    try:
        with _forked(child) as child_report:
            problem = loop.run_until_complete(countdown("parent"))
        assert problem is None, f"parent: {problem}"
        assert child_report == ["ok"]
        loop.run_until_complete(limiter.aclose())
    finally:
        loop.close()


def test_leased_units_are_not_spent_twice_after_fork(redis_url: str) -> None:
    """Units the store leased to the parent are the parent's alone: a child that spent them
    too would admit them twice. Within one window, parent and child together admit at most
    ``limit`` requests (a lease's overshoot happens only across a window's end)."""
    limit = 20
    policies = {"api": Policy(limit, 3600, lease=8)}
    limiter = RateLimiter(policies, redis_url, timeout=TIMEOUT)
    assert limiter.check("shared", "api").allowed  # takes a lease: 1 spent, up to 7 held
    assert limiter.check("shared", "api").allowed  # spent from the lease, no round trip

    def admitted() -> int:
        return sum(limiter.check("shared", "api").allowed for _ in range(limit))

    with _forked(lambda: str(admitted())) as child_report:
        in_parent = admitted()
    in_child = int(child_report[0])
    total = 2 + in_parent + in_child
    assert total == limit, f"{total} admitted against a limit of {limit}"
    limiter.close()


def test_memory_limiter_starts_fresh_in_a_child() -> None:
    """The memory store is per process: a child's limits are its own, from zero, as in a
    process started afresh, whatever the parent consumed before the fork."""
    limiter = RateLimiter({"api": Policy(3, 3600)}, "memory://")
    assert [limiter.check("u", "api").allowed for _ in range(4)] == [True, True, True, False]

    def child() -> str:
        return str([limiter.check("u", "api").allowed for _ in range(4)])

    with _forked(child) as child_report:
        assert not limiter.check("u", "api").allowed
    assert child_report == [str([True, True, True, False])]
