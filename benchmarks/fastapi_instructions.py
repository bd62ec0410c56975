"""Instructions per request of rate-limited FastAPI apps inside uvicorn, counted by callgrind.

FastAPI users reach for a dependency first, so its own cost per request matters as much as
the middleware's. This script counts, for each app of ``fastapi_apps`` (a bare FastAPI app,
the same app with a no-op dependency, with ratewall's ASGI middleware, with ratewall's
``RateLimit`` dependency on the memory and the Redis store, and with the peers slowapi
(decorator and ASGI middleware) and fastapi-limiter (on Redis)), the CPU instructions the
uvicorn process executes per request (valgrind's callgrind, ``Ir``), and prints each over
the bare app::

    .venv/bin/pip install -r benchmarks/requirements.txt     # slowapi, fastapi-limiter
    .venv/bin/python benchmarks/fastapi_instructions.py          # ~6 min
    .venv/bin/python benchmarks/fastapi_instructions.py --apps bare,ratewall_dependency

Needs ``valgrind`` on PATH (Debian/Ubuntu: ``apt-get install valgrind``; macOS has none: run
it in a Linux container). The Redis rows start their own server (the first binary
``ratewall.embedded.find_server()`` finds) on a free loopback port, stopped at the end.
Each server is warmed up with 400 requests, its counters are zeroed, ``--requests``
requests are sent over four keep-alive connections and counted. Instructions are not time,
but they are exact: the same code gives the same count to a tenth of a percent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from asgi_instructions import measure_factory
from fastapi_apps import ALGORITHM_VARIABLE, REDIS_VARIABLE
from http_load import server_description

APPS = {
    "bare": "bare FastAPI app",
    "noop_dependency": "a no-op dependency taking Request and Response (FastAPI's own cost)",
    "ratewall_middleware": "ratewall ASGI middleware, memory store",
    "ratewall_dependency": "ratewall RateLimit dependency, memory store",
    "ratewall_dependency_header": "ratewall RateLimit dependency, Header identity",
    "ratewall_dependency_redis": "ratewall RateLimit dependency, Redis store",
    "slowapi_decorator": "slowapi @limiter.limit, headers on, memory storage",
    "slowapi_middleware": "slowapi SlowAPIASGIMiddleware, headers on, memory storage",
    "fastapi_limiter_redis": "fastapi-limiter RateLimiter dependency, Redis bucket",
}
NEEDS_REDIS = {"ratewall_dependency_redis", "fastapi_limiter_redis"}


@contextlib.contextmanager
def redis_if_needed(apps: list[str]) -> Iterator[str | None]:
    if not NEEDS_REDIS.intersection(apps):
        yield None
        return
    from ratewall.embedded import LocalServer

    with LocalServer() as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated; bare first")
    parser.add_argument("--algorithm", default="fixed_window", help="for ratewall's rows")
    parser.add_argument("--requests", type=int, default=1000, help="counted per app")
    arguments = parser.parse_args()
    apps = arguments.apps.split(",")
    unknown = sorted(set(apps) - set(APPS))
    if unknown:
        parser.error(f"unknown app {', '.join(unknown)}; known: {', '.join(APPS)}")
    if "bare" not in apps:
        apps.insert(0, "bare")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is not on PATH: apt-get install valgrind")
    print(f"uvicorn under callgrind: {server_description()}, {arguments.requests} requests each")
    counts: dict[str, float] = {}
    with redis_if_needed(apps) as redis_url:
        env = {ALGORITHM_VARIABLE: arguments.algorithm}
        if redis_url is not None:
            env[REDIS_VARIABLE] = redis_url
        for app in apps:
            counts[app] = measure_factory(f"fastapi_apps:{app}", env, arguments.requests)
            print(f"  {app}: {counts[app]:,.0f}", file=sys.stderr)
    bare = counts["bare"]
    print()
    print("| app | instructions per request | over bare | bare ÷ app |")
    print("|---|---:|---:|---:|")
    for app, count in counts.items():
        print(f"| {APPS[app]} | {count:,.0f} | {count - bare:+,.0f} | {bare / count:.3f} |")
    if "ratewall_dependency" in counts and "ratewall_middleware" in counts:
        dependency = counts["ratewall_dependency"] - bare
        middleware = counts["ratewall_middleware"] - bare
        print(f"\nratewall dependency ÷ middleware, each over bare: {dependency / middleware:.2f}")
        if "noop_dependency" in counts:
            own = counts["ratewall_dependency"] - counts["noop_dependency"]
            print(
                "ratewall dependency over the no-op dependency ÷ middleware over bare: "
                f"{own / middleware:.2f}"
            )


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent)
    main()
