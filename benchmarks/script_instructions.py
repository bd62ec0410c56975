"""Instructions the server executes per unbatched decision, counted by callgrind.

``script_cost.py`` reads the server's own timing of the script, which this machine's noise
moves by tens of percent for unbatched calls (each one finds the server idle). This script
counts what does not move: the CPU instructions redis-server (or valkey-server) executes
inside ``FCALL`` (valgrind's callgrind, ``Ir``, collected only within ``fcallCommand``) per
sync ``check`` of one key, the call every unbatched decision makes, for each algorithm::

    .venv/bin/python benchmarks/script_instructions.py                    # ~20 s
    .venv/bin/python benchmarks/script_instructions.py --server valkey --calls 500

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``). The server runs under
callgrind on a free loopback port in a temporary directory; each algorithm's policy is never
exhausted, so every counted call admits and writes. Warm-up calls (the first loads the
library) are not counted (``callgrind_control -z``). The server is stopped afterwards, also
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from asgi_instructions import callgrind_control, instructions_in

from ratewall import ALGORITHMS, Policy, RateLimiter
from ratewall.embedded import ServerBinary, find_servers

WARM_UP = 50
START_TIMEOUT = 60.0  # seconds; a server under valgrind starts slowly


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(client: redis.Redis, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server under callgrind did not start") from None
            time.sleep(0.1)


def measure(binary: ServerBinary, algorithm: str, calls: int) -> float:
    """Instructions per lone ``check`` of ``algorithm``, inside the server's FCALL."""
    with tempfile.TemporaryDirectory(prefix="ratewall-callgrind-") as directory:
        port = _free_port()
        command = [
            "valgrind",
            "--tool=callgrind",
            "--toggle-collect=fcallCommand",
            f"--callgrind-out-file={directory}/callgrind.out",
            str(binary.path),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", directory),
            *("--save", "", "--appendonly", "no"),
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_for(redis.Redis.from_url(url), process)
            policies = {"bench": Policy(1_000_000, "1h", algorithm=algorithm)}
            with RateLimiter(policies, store=url, timeout=10.0) as limiter:
                for _ in range(WARM_UP):
                    limiter.check("user_1", "bench")
                callgrind_control("-z", process.pid)
                for _ in range(calls):
                    limiter.check("user_1", "bench")
                callgrind_control("-d", process.pid)
            count = instructions_in(Path(directory))
        finally:
            process.terminate()
            process.wait()
    if count == 0:
        server = f"{binary.kind} {binary.version}"
        raise RuntimeError(f"no FCALL was counted: {server} has no functions (Redis 7+)?")
    return count / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated")
    parser.add_argument("--calls", type=int, default=1000, help="counted per algorithm")
    parser.add_argument("--server", choices=("redis", "valkey"), help="default: the first found")
    arguments = parser.parse_args()
    algorithms = arguments.algorithms.split(",")
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown algorithm {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}")
    if arguments.calls < 1:
        parser.error("--calls must be at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is not on PATH: apt-get install valgrind")
    binaries = [b for b in find_servers() if arguments.server in (None, b.kind)]
    if not binaries:
        sys.exit(f"no {arguments.server or 'redis or valkey'} server found")
    binary = binaries[0]
    print(f"{binary.kind} {binary.version} under callgrind, {arguments.calls} lone checks each")
    print()
    print("| algorithm | instructions per FCALL |")
    print("|---|---:|")
    for algorithm in algorithms:
        print(f"| {algorithm} | {measure(binary, algorithm, arguments.calls):,.0f} |")


if __name__ == "__main__":
    main()
