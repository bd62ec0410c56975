"""What a change did to the cost of a decision: two checkouts of ratewall, side by side.

Counts the instructions this process executes per decision (valgrind's callgrind; the
server's are not counted) for the same scenarios in two source trees — typically an older
commit checked out with ``git worktree add --detach ../base COMMIT`` and its own venv, and
this tree — and prints each scenario's ratio. Instruction counts do not drift with the
machine's load as times do, so the two trees can be measured one after the other, on a
busy machine, and still compare exactly::

    git worktree add --detach ../base 934e060
    (cd ../base && python3 -m venv .venv && .venv/bin/python -m pip install -e '.[dev]')
    .venv/bin/python benchmarks/compare_commits.py --base ../base     # ~3 min
    .venv/bin/python benchmarks/compare_commits.py --base ../base --wall 7   # wall time

``--wall ROUNDS`` times the scenarios instead (each child times its own decisions after a
warm-up), running the two trees alternately, ROUNDS pairs per scenario, and reports the
median of the pairs' ratios with the machine's load average: on a shared machine only
the ratio means anything, and only with the load beside it.

Instructions are not time (cache misses and the round trip are not in them), so the Redis
rows say what the change did to ratewall's own work around a round trip, not to latency.
Each count is the difference between runs of 2N and N decisions, over N, so the
interpreter's start-up and the limiter's construction cancel out. Needs ``valgrind`` on
PATH (Debian: ``apt-get install valgrind``); a diagnostic, not part of the tests.

Scenarios, each through the public API only (so that any commit since the API was fixed
can run them): ``memory`` (an allowed check on the memory store), ``sync`` (an allowed
check on a Redis/Valkey server), ``deny`` (a refusal answered by the local deny cache),
``async64`` (64 concurrent allowed checks per event-loop turn, per decision) and ``peek``
(a sync peek on the server).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCENARIOS = ("memory", "sync", "deny", "async64", "peek")

# The child program runs in each tree's own interpreter, so it imports nothing from this
# tree: it is source text, run with ``python -c``.
CHILD = """
import asyncio, sys, time
from ratewall import AsyncRateLimiter, Policy, RateLimiter

scenario, decisions, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# --wall: a warm-up of a tenth, then the decisions timed; prints nanoseconds per decision.
timed = len(sys.argv) > 4
policies = {"api": Policy(limit=10**9, window=3600), "tight": Policy(limit=1, window=3600)}

def report(started, count):
    if timed:
        print((time.perf_counter() - started) / count * 1e9)

if scenario == "async64":
    async def run():
        async with AsyncRateLimiter(policies, store=url, timeout=1.0) as limiter:
            async def turns(count):
                for turn in range(count):
                    await asyncio.gather(
                        *(limiter.check(f"user_{caller}", "api") for caller in range(64))
                    )
            turns_ = max(1, decisions // 64)
            if timed:
                await turns(max(1, turns_ // 10))
            started = time.perf_counter()
            await turns(turns_)
            report(started, turns_ * 64)
    asyncio.run(run())
else:
    store = "memory://" if scenario == "memory" else url
    with RateLimiter(policies, store=store, timeout=1.0) as limiter:
        def run(count):  # a loop per scenario: no call per decision beyond the limiter's
            if scenario == "deny":
                for _ in range(count):
                    limiter.check("user_1", "tight")
            elif scenario == "peek":
                for _ in range(count):
                    limiter.peek("user_1", "api")
            else:
                for _ in range(count):
                    limiter.check("user_1", "api")
        if scenario == "deny":
            limiter.check("user_1", "tight")
            limiter.check("user_1", "tight")  # refused by the store: now in the deny cache
        if timed:
            run(decisions // 10)
        started = time.perf_counter()
        run(decisions)
        report(started, decisions)
"""


def _instructions(python: str, scenario: str, decisions: int, url: str) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                python,
                "-c",
                CHILD,
                scenario,
                str(decisions),
                url,
            ],
            check=True,
            capture_output=True,
            env=environment,
            cwd=scratch,  # never import ratewall from a source tree by accident
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def per_decision(python: str, scenario: str, decisions: int, url: str) -> float:
    twice = _instructions(python, scenario, 2 * decisions, url)
    once = _instructions(python, scenario, decisions, url)
    return (twice - once) / decisions


def wall(python: str, scenario: str, decisions: int, url: str) -> float:
    """Nanoseconds per decision, timed by the child itself after a warm-up."""
    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.run(
            [python, "-c", CHILD, scenario, str(decisions), url, "time"],
            check=True,
            capture_output=True,
            text=True,
            cwd=scratch,  # never import ratewall from a source tree by accident
        )
    return float(run.stdout.split()[-1])


def _wall_rows(
    trees: tuple[str, str], names: tuple[str, str], scenarios: list[str], url: str, rounds: int
) -> list[str]:
    """Each round runs both trees once per scenario, alternating which goes first; a row
    gives the median time per decision of each and the median of the rounds' ratios (a
    pair is measured seconds apart, so the machine's drift moves it less)."""
    rows = [
        f"| scenario | {names[0]} (ns) | {names[1]} (ns) | ratio (median of pairs) |",
        "|---|---|---|---|",
    ]
    decisions = {"memory": 100_000, "deny": 100_000}
    for scenario in scenarios:
        times: tuple[list[float], list[float]] = ([], [])
        for round_ in range(rounds):
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for side in order:
                times[side].append(wall(trees[side], scenario, decisions.get(scenario, 6_400), url))
        ratios = [new / old for old, new in zip(times[0], times[1], strict=True)]
        rows.append(
            f"| {scenario} | {statistics.median(times[0]):,.0f} | "
            f"{statistics.median(times[1]):,.0f} | {statistics.median(ratios):.3f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _python(tree: Path) -> str:
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{tree}: no .venv/bin/python (create the tree's venv first)")
    return str(python)


def _commit(tree: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "") or str(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the older source tree")
    parser.add_argument(
        "--head", type=Path, default=Path(__file__).resolve().parent.parent, help="this tree"
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--decisions", type=int, default=2_000, help="N (runs N and 2N)")
    parser.add_argument(
        "--wall",
        type=int,
        metavar="ROUNDS",
        help="time per decision (wall clock) instead of instructions, in ROUNDS alternating "
        "pairs of runs; 6,400 decisions a run (memory and deny: 100,000)",
    )
    arguments = parser.parse_args()
    scenarios = arguments.scenarios.split(",")
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    base, head = _python(arguments.base), _python(arguments.head)

    # The server comes from this tree's process manager; the children only get its URL.
    sys.path.insert(0, str(arguments.head / "src"))
    from ratewall.embedded import LocalServer, find_servers

    binary = find_servers()[0]
    names = (_commit(arguments.base), _commit(arguments.head))
    rows = [
        f"| scenario | {names[0]} | {names[1]} | ratio |",
        "|---|---|---|---|",
    ]
    with LocalServer(binary) as server:
        if arguments.wall:
            rows = _wall_rows((base, head), names, scenarios, server.url, arguments.wall)
            print(f"wall time per decision; server: {binary.kind}; {_load()}\n")
            print("\n".join(rows))
            return
        for scenario in scenarios:
            old = per_decision(base, scenario, arguments.decisions, server.url)
            new = per_decision(head, scenario, arguments.decisions, server.url)
            rows.append(f"| {scenario} | {old:,.0f} | {new:,.0f} | {new / old:.3f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"instructions per decision, this process only; server: {binary.kind}\n")
    print("\n".join(rows))


def _load() -> str:
    """The machine's load averages (1, 5, 15 minutes): what the wall times ran beside."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
