"""What metrics cost per decision: the same limiter with ``metrics`` off and on, in
interleaved blocks, on the memory store and on a Redis/Valkey server of its own::

    .venv/bin/python benchmarks/metrics_cost.py              # ~40 s on a 2-core VM
    .venv/bin/python benchmarks/metrics_cost.py --rounds 5   # a smoke run

Each round times one block of each variant (the order alternates between rounds, so drift
favours neither); the cost is the median over rounds of on/off, each pair measured seconds
apart, which this machine's ±30% drift moves far less than absolute numbers. ``bare
observer`` is the observer hook alone (an observer that does nothing): what any observer
pays before counting anything. The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ratewall import Policy, RateLimiter
from ratewall.embedded import LocalServer, find_servers
from ratewall.metrics import Metrics
from ratewall.observer import BaseObserver

POLICIES = {"api": Policy(limit=10**12, window=60)}


def _block(check: Callable[[str, str], object], decisions: int) -> float:
    started = time.perf_counter()
    for _ in range(decisions):
        check("user_123", "api")
    return (time.perf_counter() - started) / decisions


def _compare(name: str, variants: dict[str, RateLimiter], decisions: int, rounds: int) -> list[str]:
    times: dict[str, list[float]] = {label: [] for label in variants}
    for limiter in variants.values():
        _block(limiter.check, decisions // 10)  # warm-up: connections, caches
    for round_ in range(rounds):
        order = list(variants.items())
        for label, limiter in order if round_ % 2 == 0 else reversed(order):
            times[label].append(_block(limiter.check, decisions))
    off = times["off"]
    rows = []
    for label, measured in times.items():
        ratios = [on / base for on, base in zip(measured, off, strict=True)]
        rows.append(
            f"| {name} | {label} | {statistics.median(measured) * 1e9:,.0f} ns | "
            f"{(statistics.median(ratios) - 1) * 100:+.1f}% |"
        )
    return rows


def _child(variant: str, decisions: int, url: str) -> None:
    """One variant's decisions, for callgrind to count (see ``--instructions``)."""
    observer = {"off": None, "bare observer": BaseObserver(), "on": Metrics()}[variant]
    # A generous timeout: under callgrind a round trip runs some fifty times slower.
    with RateLimiter(POLICIES, url, timeout=30.0, observer=observer) as limiter:
        _block(limiter.check, decisions)


def _instructions(variant: str, decisions: int, url: str) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        child = [sys.executable, __file__, "--child", variant, str(decisions), url]
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *child],
            check=False,
            capture_output=True,
            # One string-hash seed for every run: dict probing differs between seeds by a
            # few hundred instructions per decision, more than what is measured here.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if run.returncode != 0:
            raise RuntimeError(f"{variant} run failed:\n{run.stderr.decode()[-3000:]}")
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def _count(name: str, url: str, variants: tuple[str, ...], decisions: int) -> list[str]:
    """Instructions this process executes per decision (callgrind; the server's are not
    counted): the difference between runs of 2N and N decisions, over N, so start-up
    cancels out. Deterministic, unlike times on a shared machine."""
    per = {}
    for variant in variants:
        twice = _instructions(variant, 2 * decisions, url)
        once = _instructions(variant, decisions, url)
        per[variant] = (twice - once) / decisions
    return [
        f"| {name} | {variant} | {count:,.0f} instructions | "
        f"{(count / per['off'] - 1) * 100:+.1f}% |"
        for variant, count in per.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions with callgrind"
    )
    parser.add_argument(
        "--store", choices=("memory", "redis", "both"), default="both", help="what to measure"
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--memory-decisions", type=int, default=50_000)
    parser.add_argument("--redis-decisions", type=int, default=3_000)
    arguments = parser.parse_args()
    if arguments.child:
        variant, decisions, url = arguments.child
        _child(variant, int(decisions), url)
        return
    if arguments.instructions:
        _print_instructions(arguments)
        return

    rows = ["| store | metrics | per decision (median) | cost vs off (median of pairs) |"]
    rows.append("|---|---|---|---|")
    memory = {
        "off": RateLimiter(POLICIES),
        "bare observer": RateLimiter(POLICIES, observer=BaseObserver()),
        "on": RateLimiter(POLICIES, observer=Metrics()),
    }
    rows += _compare("memory", memory, arguments.memory_decisions, arguments.rounds)
    binary = find_servers()[0]
    with LocalServer(binary) as server:
        redis = {
            "off": RateLimiter(POLICIES, server.url, timeout=1.0),
            "on": RateLimiter(POLICIES, server.url, timeout=1.0, observer=Metrics()),
        }
        try:
            rows += _compare(
                f"{binary.kind} (sync)", redis, arguments.redis_decisions, arguments.rounds
            )
        finally:
            for limiter in redis.values():
                limiter.close()
    one, five, fifteen = os.getloadavg()
    print(f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs\n")
    print("\n".join(rows))


def _print_instructions(arguments: argparse.Namespace) -> None:
    rows = ["| store | metrics | per decision (this process) | cost vs off |", "|---|---|---|---|"]
    variants = ("off", "bare observer", "on")
    if arguments.store != "redis":
        rows += _count("memory", "memory://", variants, arguments.memory_decisions // 10)
    if arguments.store != "memory":
        binary = find_servers()[0]
        with LocalServer(binary) as server:
            rows += _count(f"{binary.kind} (sync)", server.url, variants, arguments.redis_decisions)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
