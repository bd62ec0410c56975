"""Instructions per request of the ASGI apps inside uvicorn, counted by callgrind.

The ``asgi`` mode of ``run.py`` compares requests/s, which a shared machine moves by several
percent from block to block. This script counts what does not move: the CPU instructions
uvicorn executes per request (valgrind's callgrind, ``Ir``), for the bare app, the three
reference apps of ``asgi_apps`` (the bare app sending two fixed fields shaped like the
RateLimit fields: what the server's own handling of those fields costs; the smallest
middleware adding them; the smallest rate-limiting middleware, for the first algorithm), and
the app inside ratewall's middleware (``asgi_apps:limited``) per algorithm. Instructions are
not time (cache misses are not counted), but a change that removes instructions from the
middleware shows here exactly::

    .venv/bin/python benchmarks/asgi_instructions.py                  # ~11 min
    .venv/bin/python benchmarks/asgi_instructions.py --algorithms gcra --requests 1000

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``); it is a diagnostic, not
part of ``run.py`` or of the tests. Each server runs under callgrind on a free loopback port,
is warmed up, has its counters zeroed (``callgrind_control -z``), serves ``--requests``
requests over four keep-alive connections, and has them dumped (``-d``) to a temporary
directory; it is stopped afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from asgi_apps import ALGORITHM_VARIABLE, LIMIT_VARIABLE, WINDOW_VARIABLE
from http_load import HttpConnection, UvicornServer, server_description

ALGORITHMS = ("fixed_window", "sliding_window", "sliding_log", "token_bucket", "gcra")
CONNECTIONS = 4
WARM_UP = 400


async def _serve(port: int, requests: int) -> None:
    connections = [HttpConnection(port) for _ in range(CONNECTIONS)]
    await asyncio.gather(*(connection.open() for connection in connections))

    async def hit(connection: HttpConnection) -> None:
        for _ in range(requests // CONNECTIONS):
            await connection.hit("")

    try:
        await asyncio.gather(*(hit(connection) for connection in connections))
    finally:
        for connection in connections:
            await connection.close()


def instructions_in(dump_directory: Path) -> int:
    """The ``Ir`` total of the dump ``callgrind_control -d`` wrote (the first, ``.1``)."""
    dump = dump_directory / "callgrind.out.1"
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dump}")


def measure(factory: str, algorithm: str, requests: int) -> float:
    """Instructions uvicorn executes per request of ``factory`` (``algorithm`` configures the
    limited app; the others ignore it)."""
    env = {ALGORITHM_VARIABLE: algorithm, LIMIT_VARIABLE: str(10**9), WINDOW_VARIABLE: "60"}
    return measure_factory(factory, env, requests)


def measure_factory(factory: str, env: dict[str, str], requests: int) -> float:
    """Instructions uvicorn executes per request of the app ``factory`` builds with ``env``
    in its environment (``GET /``, ``requests`` of them after a warm-up)."""
    with tempfile.TemporaryDirectory(prefix="ratewall-callgrind-") as directory:
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.out"]
        server = UvicornServer(factory, env, prefix=prefix)
        try:
            server.start(
                timeout=600.0
            )  # a Python under valgrind starts slowly (more on a busy machine)
            asyncio.run(_serve(server.port, WARM_UP))
            callgrind_control("-z", server.pid)
            asyncio.run(_serve(server.port, requests))
            callgrind_control("-d", server.pid)
            # Read now: stopping the server writes one more dump (of its shutdown).
            count = instructions_in(Path(directory))
        finally:
            server.stop()
        return count / (requests // CONNECTIONS * CONNECTIONS)


def callgrind_control(command: str, pid: int | None) -> None:
    """``callgrind_control <command> <pid>``: ``-z`` zeroes the counters, ``-d`` dumps them."""
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated")
    parser.add_argument("--requests", type=int, default=2000, help="counted per app")
    arguments = parser.parse_args()
    algorithms = arguments.algorithms.split(",")
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown algorithm {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}")
    if arguments.requests < CONNECTIONS:
        parser.error(f"--requests must be at least {CONNECTIONS} (one per connection)")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is not on PATH: apt-get install valgrind")
    print(f"uvicorn under callgrind: {server_description()}, {arguments.requests} requests each")
    bare = measure("asgi_apps:bare", ALGORITHMS[0], arguments.requests)
    rows = [
        ("bare app", bare),
        (
            "bare app sending two RateLimit-shaped fields (ref-fields)",
            measure("asgi_apps:fields", ALGORITHMS[0], arguments.requests),
        ),
        (
            "the smallest middleware adding two such fields (ref-headers)",
            measure("asgi_apps:headers", ALGORITHMS[0], arguments.requests),
        ),
        (
            f"the smallest rate-limiting middleware, {algorithms[0]} (ref-minimal)",
            measure("asgi_apps:minimal", algorithms[0], arguments.requests),
        ),
    ]
    for algorithm in algorithms:
        count = measure("asgi_apps:limited", algorithm, arguments.requests)
        rows.append((f"with the middleware, {algorithm}", count))
    print()
    print("| app | instructions per request | over bare | bare ÷ app |")
    print("|---|---:|---:|---:|")
    for name, count in rows:
        print(f"| {name} | {count:,.0f} | {count - bare:+,.0f} | {bare / count:.3f} |")


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent)
    main()
