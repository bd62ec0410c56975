"""Failover under load: kill the primary of a Sentinel set (a primary, a replica, three
sentinels) and of a Cluster (three primaries, three replicas) while worker processes check
the same identities against three policies that differ only by failure mode (open, closed,
local with ``local_nodes`` = the number of workers). Prints a Markdown table: exceptions
that reached the caller, degraded answers, the topology's switch time, the time until every
decision came from the store again, latency, and the most admitted beyond the limit for
one identity (with the writes the killed primary acknowledged but never replicated).

    python benchmarks/failover.py [--workers 4] [--timeout 0.1] [--limit 20]
        [--server redis|valkey] [--topologies sentinel,cluster] [--async]

``--async`` runs the workers on AsyncRateLimiter (each round's three checks made at once).

Every server binds 127.0.0.1 and is stopped at the end; each run is bounded (60 s per wait).
The harness is tests/redis/_failover.py, which tests/redis/test_failover.py runs CI-sized.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis import _failover as f

from ratewall.embedded import find_servers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--rotate", type=float, default=0.5, help="seconds per identity")
    parser.add_argument("--pace", type=float, default=0.002, help="seconds between rounds")
    parser.add_argument("--server", choices=("redis", "valkey"), default=None)
    parser.add_argument("--topologies", default="sentinel,cluster")
    parser.add_argument("--async", dest="asynchronous", action="store_true")
    args = parser.parse_args()
    binaries = [b for b in find_servers() if args.server in (None, b.kind)]
    if not binaries:
        print("no server binary found", file=sys.stderr)
        return 1
    binary = binaries[0]
    print(
        f"{binary.kind} {binary.version}, {args.workers} "
        f"{'async ' if args.asynchronous else ''}workers, timeout {args.timeout} s"
    )
    print(f.HEADER)
    with tempfile.TemporaryDirectory() as scratch:
        for topology in args.topologies.split(","):
            tag = f"r{uuid.uuid4().hex[:6]}_"
            if topology == "sentinel":
                with f.sentinel_set(binary, Path(scratch) / "sentinel") as s:
                    load = f.Load(
                        s.url,
                        args.timeout,
                        args.limit,
                        args.workers,
                        args.rotate,
                        args.pace,
                        tag,
                        args.asynchronous,
                    )
                    report = f.run(load, lambda s=s: f.kill(s.primary), s.failed_over)
            else:
                with f.cluster_set(binary, Path(scratch) / "cluster") as c:
                    load = f.Load(
                        c.url,
                        args.timeout,
                        args.limit,
                        args.workers,
                        args.rotate,
                        args.pace,
                        tag,
                        args.asynchronous,
                    )
                    victim = c.primary_of(f"ratelimit:{{{tag}0}}:open")
                    alive = [n for n in c.nodes if n is not victim]
                    report = f.run(
                        load,
                        lambda v=victim: f.kill(v),
                        lambda a=alive, c=c: c.healthy(a),
                        reader_url=c.url_via(alive[0]),
                    )
            for row in f.summary(f"{topology} ({binary.kind})", report):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
