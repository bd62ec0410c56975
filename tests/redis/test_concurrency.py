"""Exact under concurrency: many processes, each with its own limiter and connection, hammer
one key; the store admits exactly ``limit`` units, for every algorithm.

One pool of worker processes lives for the whole module (spawned once: starting a Python
process costs far more than a repetition). Each job builds its own limiter inside its worker,
opens its connection, then waits on a barrier so that every worker starts hammering at the
same moment. Time comes from the server (``TIME``), as in production, and the window is a
day, so a bucket refills less than one token during a run and "exactly the limit" is exact.

Each scenario is repeated on a fresh key, so that a race that needs an unlucky interleaving
has many chances to show up; the local deny cache runs enabled and disabled (it must never
change the count).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Decision, Policy, RateLimiter

pytestmark = pytest.mark.slow

LIMIT = 200
WINDOW = "1d"
POLICY = "hot"
PROCESSES = 8
CHECKS_PER_PROCESS = 60  # 8 x 60 = 480 offered for 200 admitted
ASYNC_PROCESSES = 4
ASYNC_COROUTINES = 32
CHECKS_PER_COROUTINE = 4  # 4 x 32 x 4 = 512 offered
REPETITIONS = 20  # per algorithm and cache setting (unit costs, sync)
COST_REPETITIONS = 6  # per algorithm and cache setting (random costs 1..3)
ASYNC_REPETITIONS = 6  # per algorithm and cache setting
COST_SEED = 20_240_601
# Exactness is under test here, not latency: a loaded two-core machine running nine busy
# processes must not turn a slow reply into a StoreError.
STORE_TIMEOUT = 5.0
BARRIER_TIMEOUT = 30.0
JOB_TIMEOUT = 60.0

CACHE_SIZES = pytest.mark.parametrize("local_cache_size", [10_000, 0], ids=["cache", "no-cache"])


@dataclass(frozen=True, slots=True)
class Job:
    """What one worker does: one check per entry of ``costs`` on one key (``coroutines`` > 0:
    that many coroutines each do all of ``costs``, on one AsyncRateLimiter)."""

    url: str
    algorithm: str
    identity: str
    local_cache_size: int
    costs: tuple[int, ...]
    parties: int
    coroutines: int = 0


class Tally(NamedTuple):
    """One worker's decisions, as (cost, allowed, remaining) triples."""

    decisions: tuple[tuple[int, bool, int], ...]
    degraded: int


# Filled in each worker by the pool's initializer: barriers can only reach a process when it
# is created, never through a job.
_BARRIERS: dict[int, Any] = {}


def _init_worker(barriers: Mapping[int, Any]) -> None:
    _BARRIERS.update(barriers)


def _policies(algorithm: str) -> dict[str, Policy]:
    return {POLICY: Policy(LIMIT, WINDOW, algorithm)}


def _tally(costs: tuple[int, ...], decisions: list[Decision]) -> Tally:
    return Tally(
        tuple(
            (cost, decision.allowed, decision.remaining)
            for cost, decision in zip(costs, decisions, strict=True)
        ),
        sum(decision.degraded for decision in decisions),
    )


def _hammer(job: Job) -> Tally:
    """Runs in a worker process: build a limiter, connect, wait for the others, hammer."""
    barrier = _BARRIERS[job.parties]
    if job.coroutines:
        return asyncio.run(_hammer_async(job, barrier))
    try:
        limiter = RateLimiter(
            _policies(job.algorithm),
            store=job.url,
            timeout=STORE_TIMEOUT,
            local_cache_size=job.local_cache_size,
        )
        # Connect and load the script before the start line, on another key.
        limiter.peek(f"{job.identity}-warmup", POLICY)
    except BaseException:
        barrier.abort()
        raise
    with limiter:
        barrier.wait(BARRIER_TIMEOUT)
        decisions = [limiter.check(job.identity, POLICY, cost) for cost in job.costs]
    return _tally(job.costs, decisions)


async def _hammer_async(job: Job, barrier: Any) -> Tally:
    try:
        limiter = AsyncRateLimiter(
            _policies(job.algorithm),
            store=job.url,
            timeout=STORE_TIMEOUT,
            local_cache_size=job.local_cache_size,
        )
        await limiter.peek(f"{job.identity}-warmup", POLICY)
    except BaseException:
        barrier.abort()
        raise

    async def caller() -> list[Decision]:
        return [await limiter.check(job.identity, POLICY, cost) for cost in job.costs]

    async with limiter:
        # Blocking the event loop here is fine: nothing else runs on it yet.
        barrier.wait(BARRIER_TIMEOUT)
        per_caller = await asyncio.gather(*(caller() for _ in range(job.coroutines)))
    return _tally(job.costs * job.coroutines, [d for ds in per_caller for d in ds])


class Hammer:
    """The module's worker pool; :meth:`run` gives each job to its own worker, together."""

    def __init__(self, pool: Any, barriers: Mapping[int, Any]) -> None:
        self._pool = pool
        self._barriers = barriers

    def run(self, jobs: list[Job]) -> list[Tally]:
        parties = {job.parties for job in jobs}
        assert parties == {len(jobs)}, "every job of a run waits for all the others"
        barrier = self._barriers[len(jobs)]
        if barrier.broken:  # an earlier failed run must not fail this one too
            barrier.reset()
        # Each job blocks its worker on the barrier until every job has a worker, so no
        # worker can take two jobs of one run.
        pending = [self._pool.apply_async(_hammer, (job,)) for job in jobs]
        return [result.get(JOB_TIMEOUT) for result in pending]


@pytest.fixture(scope="module")
def hammer() -> Iterator[Hammer]:
    # "spawn": a forked child would inherit this process's threads and sockets.
    context = multiprocessing.get_context("spawn")
    barriers = {
        PROCESSES: context.Barrier(PROCESSES),
        ASYNC_PROCESSES: context.Barrier(ASYNC_PROCESSES),
    }
    pool = context.Pool(PROCESSES, initializer=_init_worker, initargs=(barriers,))
    try:
        yield Hammer(pool, barriers)
    finally:
        # The workers hold nothing worth a graceful exit: their limiters are closed.
        pool.terminate()
        pool.join()


def _decisions(tallies: list[Tally]) -> list[tuple[int, bool, int]]:
    assert sum(tally.degraded for tally in tallies) == 0
    return [decision for tally in tallies for decision in tally.decisions]


def _assert_store_agrees(url: str, algorithm: str, identity: str, admitted: int) -> None:
    """The key holds exactly what the callers were told was admitted: the rest of the limit
    still fits, one unit more does not (a bucket's sub-token refill cannot add a unit)."""
    with RateLimiter(
        _policies(algorithm), store=url, local_cache_size=0, timeout=STORE_TIMEOUT
    ) as limiter:
        left = LIMIT - admitted
        if left:
            assert limiter.peek(identity, POLICY, left).allowed
        assert not limiter.peek(identity, POLICY, left + 1).allowed
    with redis.Redis.from_url(url) as client:
        ttl = client.pttl(f"ratelimit:{{{identity}}}:{POLICY}")
    assert ttl > 0, f"the hot key must carry a TTL, got PTTL {ttl}"


@CACHE_SIZES
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_processes_admit_exactly_the_limit(
    hammer: Hammer, redis_url: str, algorithm: str, local_cache_size: int
) -> None:
    costs = (1,) * CHECKS_PER_PROCESS
    for repetition in range(REPETITIONS):
        identity = f"hot-{repetition}"
        job = Job(redis_url, algorithm, identity, local_cache_size, costs, PROCESSES)
        decisions = _decisions(hammer.run([job] * PROCESSES))
        admitted = [remaining for _, allowed, remaining in decisions if allowed]
        assert len(admitted) == LIMIT, f"repetition {repetition}: {len(admitted)} admitted"
        # The admissions were serialised: each saw its own count, 199 down to 0, once each.
        assert sorted(admitted) == list(range(LIMIT))
        assert all(remaining == 0 for _, allowed, remaining in decisions if not allowed)
        _assert_store_agrees(redis_url, algorithm, identity, LIMIT)


@CACHE_SIZES
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_processes_with_random_costs_never_overspend(
    hammer: Hammer, redis_url: str, algorithm: str, local_cache_size: int
) -> None:
    for repetition in range(COST_REPETITIONS):
        identity = f"costly-{repetition}"
        jobs = []
        for worker in range(PROCESSES):
            rng = random.Random(COST_SEED + 1000 * repetition + worker)
            costs = tuple(rng.randint(1, 3) for _ in range(CHECKS_PER_PROCESS))
            jobs.append(Job(redis_url, algorithm, identity, local_cache_size, costs, PROCESSES))
        decisions = _decisions(hammer.run(jobs))
        spent = sum(cost for cost, allowed, _ in decisions if allowed)
        # ~960 units are offered, a third of the requests cost 1 and they keep coming long
        # after the limit is nearly spent, so at most 2 units can stay unused.
        assert LIMIT - 2 <= spent <= LIMIT, f"repetition {repetition}: {spent} admitted"
        # A request was refused only when it no longer fitted.
        assert all(remaining < cost for cost, allowed, remaining in decisions if not allowed)
        _assert_store_agrees(redis_url, algorithm, identity, spent)


@CACHE_SIZES
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_async_processes_admit_exactly_the_limit(
    hammer: Hammer, redis_url: str, algorithm: str, local_cache_size: int
) -> None:
    costs = (1,) * CHECKS_PER_COROUTINE
    for repetition in range(ASYNC_REPETITIONS):
        identity = f"async-hot-{repetition}"
        job = Job(
            redis_url,
            algorithm,
            identity,
            local_cache_size,
            costs,
            ASYNC_PROCESSES,
            coroutines=ASYNC_COROUTINES,
        )
        decisions = _decisions(hammer.run([job] * ASYNC_PROCESSES))
        assert len(decisions) == ASYNC_PROCESSES * ASYNC_COROUTINES * CHECKS_PER_COROUTINE
        admitted = [remaining for _, allowed, remaining in decisions if allowed]
        assert len(admitted) == LIMIT, f"repetition {repetition}: {len(admitted)} admitted"
        assert sorted(admitted) == list(range(LIMIT))
        _assert_store_agrees(redis_url, algorithm, identity, LIMIT)
