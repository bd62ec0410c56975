"""Server time the decision script takes per decision, from the server's own accounting.

``run.py``'s "Redis CPU µs/dec" column is the server process's CPU time, network I/O and
wake-ups included, which a shared machine moves by tens of percent. This script reads what
the server charges the script itself: ``INFO commandstats``' microseconds for FCALL (or
EVALSHA) over a fixed number of decisions, divided by those decisions. Callers share script
calls as in the benchmark's async modes (``--callers`` concurrent coroutines on one hot key,
never refused), so the batch size is what it is there: half the callers per call, two calls
in flight. Use it to see what a change to ``src/ratewall/lua`` costs or saves::

    .venv/bin/python benchmarks/script_cost.py                          # ~20 s
    .venv/bin/python benchmarks/script_cost.py --callers 1 --algorithms gcra

Each algorithm is measured ``--rounds`` times against one fresh server (the median is
shown, with the smallest), its keyspace and statistics reset before each round. The server
is started on a free loopback port and stopped afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

import redis

from ratewall import ALGORITHMS, AsyncRateLimiter, Policy
from ratewall.embedded import LocalServer, find_servers

POLICY = "bench"
SCRIPT_COMMANDS = ("fcall", "evalsha", "eval")


@dataclass(frozen=True, slots=True)
class Round:
    script_us_per_decision: float
    decisions_per_call: float
    decisions_per_s: float


def script_usec(client: redis.Redis) -> tuple[int, int]:
    """(microseconds, calls) the server has charged the decision script since its last reset."""
    stats = client.info("commandstats")
    usec = calls = 0
    for command in SCRIPT_COMMANDS:
        entry = stats.get(f"cmdstat_{command}")
        if entry:
            usec += int(entry["usec"])
            calls += int(entry["calls"])
    return usec, calls


async def one_round(
    url: str, client: redis.Redis, algorithm: str, callers: int, each: int
) -> Round:
    client.flushall()
    async with AsyncRateLimiter(
        {POLICY: Policy(10**8, 3600, algorithm)}, store=url, timeout=5.0
    ) as limiter:
        await limiter.check("hot", POLICY)  # loads the script, opens the connection
        client.config_resetstat()

        async def caller() -> None:
            for _ in range(each):
                decision = await limiter.check("hot", POLICY)
                if not decision.allowed or decision.degraded:
                    raise RuntimeError(f"expected an allowed, store-made decision: {decision}")

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - began
    usec, calls = script_usec(client)
    decisions = callers * each
    if not calls:
        raise RuntimeError("the server counted no script calls")
    return Round(usec / decisions, decisions / calls, decisions / elapsed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument("--decisions", type=int, default=100_000, help="per round (100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per algorithm (3)")
    parser.add_argument("--server", choices=("redis", "valkey"), help="server kind")
    args = parser.parse_args(argv)
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in args.algorithms if a not in ALGORITHMS]
    if unknown:
        parser.error(
            f"unknown algorithms {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}"
        )
    if args.callers < 1 or args.rounds < 1 or args.decisions < args.callers:
        parser.error("--callers and --rounds must be >= 1, and --decisions >= --callers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binaries = [s for s in find_servers() if args.server is None or s.kind == args.server]
    if not binaries:
        print("no redis-server or valkey-server found (see README: Two commands)", file=sys.stderr)
        return 2
    each = args.decisions // args.callers
    with LocalServer(binaries[0]) as server:
        client = redis.Redis.from_url(server.url)
        try:
            print(
                f"{binaries[0].kind} {'.'.join(map(str, binaries[0].version_info))}, "
                f"{args.callers} caller{'' if args.callers == 1 else 's'}, "
                f"{each * args.callers:,} decisions per round, "
                f"median of {args.rounds} rounds"
            )
            print("| algorithm | script µs/decision | (min) | decisions/call | decisions/s |")
            print("|---|---:|---:|---:|---:|")
            for algorithm in args.algorithms:
                rounds = [
                    asyncio.run(one_round(server.url, client, algorithm, args.callers, each))
                    for _ in range(args.rounds)
                ]
                cost = [r.script_us_per_decision for r in rounds]
                print(
                    f"| {algorithm} | {statistics.median(cost):.2f} | {min(cost):.2f} "
                    f"| {statistics.median(r.decisions_per_call for r in rounds):.1f} "
                    f"| {statistics.median(r.decisions_per_s for r in rounds):,.0f} |",
                    flush=True,
                )
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
