"""What a concurrency slot costs next to a plain check: one caller, sync and asyncio, on a
Redis/Valkey server of its own (and the memory store)::

    .venv/bin/python benchmarks/slot_cost.py               # ~30 s on a 2-core VM
    .venv/bin/python benchmarks/slot_cost.py --rounds 3    # a smoke run

Rows, per operation (µs, the median of ``--rounds`` rounds, each of ``--operations``):

* ``check``: ``limiter.check`` on a fixed window (one round trip);
* ``slot (acquire + release)``: ``with limiter.slot(...)`` around nothing: two round
  trips (acquire, release), plus registering and unregistering the background renewal;
* ``peek (concurrency)``: ``limiter.peek`` on the concurrency policy (one round trip).

The variants are interleaved round by round, so the machine's drift favours none. The
server is started on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.embedded import LocalServer, find_servers

POLICIES = {
    "api": Policy(10**12, 60),
    "exports": Policy(10**6, 60, algorithm="concurrency"),
}


def _sync_rows(limiter: RateLimiter, operations: int, rounds: int) -> dict[str, float]:
    def check() -> None:
        limiter.check("user_123", "api")

    def slot() -> None:
        with limiter.slot("user_123", "exports"):
            pass

    def peek() -> None:
        limiter.peek("user_123", "exports")

    variants: dict[str, Callable[[], None]] = {
        "check": check,
        "slot (acquire + release)": slot,
        "peek (concurrency)": peek,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        for _ in range(operations // 10):
            run()
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            for _ in range(operations):
                run()
            times[name].append((time.perf_counter() - started) / operations * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


async def _async_rows(url: str, operations: int, rounds: int) -> dict[str, float]:
    async with AsyncRateLimiter(POLICIES, url, timeout=1.0) as limiter:

        async def check() -> None:
            await limiter.check("user_123", "api")

        async def slot() -> None:
            async with limiter.slot("user_123", "exports"):
                pass

        async def peek() -> None:
            await limiter.peek("user_123", "exports")

        variants: dict[str, Callable[[], Awaitable[None]]] = {
            "check": check,
            "slot (acquire + release)": slot,
            "peek (concurrency)": peek,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():
            for _ in range(operations // 10):
                await run()
        for _ in range(rounds):
            for name, run in variants.items():
                started = time.perf_counter()
                for _ in range(operations):
                    await run()
                times[name].append((time.perf_counter() - started) / operations * 1e6)
        return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    servers = find_servers()
    if not servers:
        print("no redis-server or valkey-server found", file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    with LocalServer(servers[0]) as server:
        with RateLimiter(POLICIES, server.url, timeout=1.0) as limiter:
            results[f"sync, {servers[0].kind}"] = _sync_rows(limiter, args.operations, args.rounds)
        results[f"async, {servers[0].kind}"] = asyncio.run(
            _async_rows(server.url, args.operations, args.rounds)
        )
    with RateLimiter(POLICIES) as memory:
        results["sync, memory"] = _sync_rows(memory, args.operations, args.rounds)
    names = list(next(iter(results.values())))
    print(f"| operation (µs, median of {args.rounds}) | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r[name]:.1f}" for r in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
