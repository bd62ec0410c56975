"""Waiting mode under contention: N processes call ``limiter.acquire`` in a loop against one
shared limit on a Redis/Valkey server of their own, and this script reports how much of
the limit they used, and that they never got more than it allows::

    .venv/bin/python benchmarks/waiting.py                                  # ~15 s
    .venv/bin/python benchmarks/waiting.py --algorithm fixed_window --limit 50 --window 1

For bucket algorithms (``token_bucket``, ``gcra``; burst = limit) at most ``limit +
limit/window × elapsed`` admissions can happen in ``elapsed`` seconds (the bucket starts
full); for ``fixed_window`` at most ``limit`` per window, the windows back to back from the
first admission. *Used* is admissions / that maximum, measured from the moment every
process starts waiting to the last admission. Times are the machine's wall clock, which is
also the server's ``TIME`` (one machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from ratewall import Policy, RateLimiter
from ratewall.embedded import LocalServer, find_servers


def _waiter(url: str, policy: Policy, seconds: float, go: Event, out: Connection) -> None:
    limiter = RateLimiter({"partner": policy}, url, timeout=1.0)
    limiter.peek("all-workers", "partner")  # connected before the start
    out.send("ready")
    go.wait(60)
    start = time.time()
    admitted: list[float] = []
    while (left := start + seconds - time.time()) > 0:
        if limiter.acquire("all-workers", "partner", timeout=left).allowed:
            admitted.append(time.time())
    limiter.close()
    out.send((start, admitted))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--algorithm", default="token_bucket")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args()
    policy = Policy(args.limit, args.window, algorithm=args.algorithm)
    servers = find_servers()
    if not servers:
        print("no redis-server or valkey-server found", file=sys.stderr)
        return 2
    context = multiprocessing.get_context("fork")
    with LocalServer(servers[0]) as server:
        go = context.Event()
        pipes: list[Connection] = []
        children = []
        for _ in range(args.processes):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_waiter, args=(server.url, policy, args.seconds, go, sender), daemon=True
            )
            child.start()
            pipes.append(receiver)
            children.append(child)
        for receiver in pipes:
            receiver.recv()  # "ready"
        go.set()
        reports = [receiver.recv() for receiver in pipes]
        for child in children:
            child.join(10)
    start = min(report[0] for report in reports)
    times = sorted(t for report in reports for t in report[1])
    if not times:
        print("nothing was admitted")
        return 1
    elapsed = times[-1] - start
    extra = ""
    if args.algorithm in ("token_bucket", "gcra"):
        most = args.limit + args.limit / args.window * elapsed
        used = len(times) / most
    else:
        # Windows open at the first admission after the previous one ended; the last one
        # may be cut short by the end of the run, so "used" counts the complete ones: the
        # share of the limit they admitted, times the share of the time they covered (a
        # window opens a little after the previous ends: the waiters' jitter).
        opened = _windows(times, args.window)
        most = args.limit * len(opened)
        complete = opened[:-1] or opened
        per_window = sum(count for _, count in complete) / (args.limit * len(complete))
        cycle = (
            (opened[-1][0] - opened[0][0]) / (len(opened) - 1) if len(opened) > 1 else args.window
        )
        used = per_window * args.window / cycle
        extra = f" (windows filled {per_window:.1%}, a window every {cycle:.3f} s)"
    print(
        f"{args.processes} processes, {policy.describe()}, {elapsed:.2f} s: "
        f"{len(times)} admitted, at most {most:.0f} allowed "
        f"({'never above it' if len(times) <= most else 'ABOVE THE LIMIT'}); "
        f"{used:.1%} of the limit used{extra}; {servers[0].kind} {servers[0].version}"
    )
    return 0 if len(times) <= most else 1


def _windows(times: list[float], window: float) -> list[tuple[float, int]]:
    """(opening time, admissions) of each fixed window, from sorted admission times."""
    opened: list[tuple[float, int]] = []
    for moment in times:
        if opened and moment < opened[-1][0] + window:
            opened[-1] = (opened[-1][0], opened[-1][1] + 1)
        else:
            opened.append((moment, 1))
    return opened


if __name__ == "__main__":
    sys.exit(main())
