"""``ratewall serve`` side by side: decisions/s and latency of N concurrent callers over
100 keys, nothing refused, against (a) the in-process async limiter on the same store and
(b) envoyproxy/ratelimit (Go) on the same store, when its binary is given or Go can build it.

Every phase is bounded in time (``--seconds``) and count (``--max-calls``); every server it
starts binds 127.0.0.1 and is stopped.

    python benchmarks/service.py --concurrency 64 --seconds 5 --rounds 3 [--workers 2]
        [--store redis://127.0.0.1:6379/0] [--go-binary PATH | --no-go] [--serve-arg=ARG]

Both services run side by side on the same store and are measured in alternating phases
(ratewall, Go, ratewall, Go, ...), each with the same load generator and descriptors; the
summary gives the medians and their ratios, and the CPU each service (and the Redis it
started) spent per decision, read from /proc: on a shared machine the ratio of medians and
the CPU per decision move less than raw decisions/s.

Without ``--store`` it starts a Redis/Valkey server of its own. The load generator is one
Python process (asyncio: grpc.aio, and a minimal HTTP/1.1 client); on a small machine it
competes with the servers for the same cores, which the report states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ratewall import AsyncRateLimiter, Policy
from ratewall.embedded import LocalServer, find_server

KEYS = [f"key{i}" for i in range(100)]
LIMIT = 1_000_000_000  # per hour: nothing is refused
OK = rls_pb2.RateLimitResponse.Code.Value("OK")
PEER = "envoyproxy/ratelimit (Go)"
# The same request as the gRPC rows', in proto3 JSON (both services' POST /json).
RLS_JSON = '{"domain": "bench", "descriptors": [{"entries": [{"key": "key", "value": "KEY"}]}]}'

RATEWALL_CONFIG = f"""
policies:
  bench: {{limit: {LIMIT}, window: 3600}}
domains:
  bench:
    - {{key: key, policy: bench}}
timeout: 2s
"""
ENVOY_CONFIG = f"""
domain: bench
descriptors:
  - key: key
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def run_load(
    call: Callable[[str], Awaitable[bool]], concurrency: int, seconds: float, max_calls: int
) -> dict[str, float]:
    latencies: list[float] = []
    refused = 0
    calls = 0
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal refused, calls
        n = index
        while time.perf_counter() < deadline and calls < max_calls:
            calls += 1
            started = time.perf_counter()
            if not await call(KEYS[n % len(KEYS)]):
                refused += 1
            latencies.append(time.perf_counter() - started)
            n += concurrency

    for _ in range(concurrency):  # warm-up: connections, scripts
        await call(KEYS[0])
    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "decisions_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "calls": float(len(latencies)),
        "refused": float(refused),
    }


def grpc_caller(target: str) -> tuple[grpc.aio.Channel, Callable[[str], Awaitable[bool]]]:
    channel = grpc.aio.insecure_channel(target)
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    requests = {
        key: rls_pb2.RateLimitRequest(
            domain="bench",
            descriptors=[
                ratelimit_pb2.RateLimitDescriptor(
                    entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="key", value=key)]
                )
            ],
        )
        for key in KEYS
    }

    async def call(key: str) -> bool:
        answer = await stub.ShouldRateLimit(requests[key], timeout=10)
        return bool(answer.overall_code == OK)

    return channel, call


async def http_pool(
    port: int, size: int, path: str
) -> tuple[Callable[[bytes], Awaitable[bytes]], Callable[[], Awaitable[None]]]:
    """POST to ``path`` over ``size`` kept-alive HTTP/1.1 connections: a minimal client on
    asyncio streams (httpx's pool costs the load generator more than the server costs)."""
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    writers = []
    for _ in range(size):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        idle.put_nowait((reader, writer))
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        "content-length: {}\r\n\r\n"
    )

    async def post(body: bytes) -> bytes:
        reader, writer = await idle.get()
        try:
            writer.write(head.format(len(body)).encode() + body)
            headers = await reader.readuntil(b"\r\n\r\n")
            status = int(headers.split(b" ", 2)[1])
            length = 0
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
            return answer
        finally:
            idle.put_nowait((reader, writer))

    async def close() -> None:
        for writer in writers:
            writer.close()

    return post, close


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def go_binary(args: argparse.Namespace) -> tuple[str | None, str]:
    if args.no_go:
        return None, "skipped (--no-go)"
    if args.go_binary:
        return args.go_binary, args.go_binary
    gobin = Path(tempfile.gettempdir()) / "ratewall-bench-gobin"
    built = gobin / "service_cmd"
    if built.exists():
        return str(built), str(built)
    if shutil.which("go") is None:
        return None, "skipped: Go is not installed"
    result = subprocess.run(
        ["go", "install", "github.com/envoyproxy/ratelimit/src/service_cmd@latest"],
        env={**os.environ, "GOBIN": str(gobin)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        return None, f"skipped: go install failed: {result.stderr.strip()[-300:]}"
    return str(built), "go install github.com/envoyproxy/ratelimit/src/service_cmd@latest"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children that still run (Linux /proc), else 0."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for one in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def measured(
    call: Callable[[str], Awaitable[bool]], args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, float]:
    """One load phase, plus the CPU each process in ``pids`` spent per decision in it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = await run_load(call, args.concurrency, args.seconds, args.max_calls)
    for name, pid in pids.items():
        spent = cpu_seconds(pid) - before[name]
        result[f"{name}_us"] = spent / max(result["calls"], 1) * 1e6
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def start_go(binary: str, store: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    runtime = workdir / "runtime" / "ratelimit" / "config"
    runtime.mkdir(parents=True)
    (runtime / "bench.yaml").write_text(ENVOY_CONFIG)
    host, _, port = store.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    go_grpc, go_http, go_debug = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "USE_STATSD": "false",
        "LOG_LEVEL": "warn",
        "REDIS_SOCKET_TYPE": "tcp",
        "REDIS_URL": f"{host}:{port}",
        "RUNTIME_ROOT": str(workdir / "runtime"),
        "RUNTIME_SUBDIRECTORY": "ratelimit",
        "RUNTIME_WATCH_ROOT": "false",
        "HOST": "127.0.0.1",
        "GRPC_HOST": "127.0.0.1",
        "DEBUG_HOST": "127.0.0.1",
        "PORT": str(go_http),
        "GRPC_PORT": str(go_grpc),
        "DEBUG_PORT": str(go_debug),
    }
    go = subprocess.Popen([binary], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_port(go_grpc)
    return go, go_grpc, go_http


async def main_async(
    args: argparse.Namespace, store: str, workdir: Path, redis_pid: int | None
) -> list[str]:
    rows: list[str] = []
    n = args.concurrency
    extra = {"redis": redis_pid} if redis_pid is not None else {}

    def row(name: str, result: dict[str, float]) -> None:
        server = result.get("server_us")
        redis_us = result.get("redis_us")
        line = (
            f"| {name} | {result['decisions_per_s']:,.0f} | {result['p50_ms']:.2f} | "
            f"{result['p99_ms']:.2f} | {'' if server is None else f'{server:,.0f}'} | "
            f"{'' if redis_us is None else f'{redis_us:,.0f}'} | {result['calls']:,.0f} | "
            f"{result['refused']:.0f} |"
        )
        rows.append(line)
        print(line, flush=True)

    limiter = AsyncRateLimiter({"bench": Policy(LIMIT, 3600)}, store, timeout=2)

    async def in_process(key: str) -> bool:
        return (await limiter.check(key, "bench")).allowed

    row(
        "in-process AsyncRateLimiter (server column: this process)",
        await measured(in_process, args, {"server": os.getpid(), **extra}),
    )
    await limiter.aclose()

    config = workdir / "ratewall.yaml"
    config.write_text(RATEWALL_CONFIG)
    grpc_port, http_port = free_port(), free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "ratewall", "serve", "--config", str(config), "--store", store,
         "--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}",
         "--workers", str(args.workers), "--no-response-headers", *args.serve_arg],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    go: subprocess.Popen[bytes] | None = None
    binary, how = go_binary(args)
    results: dict[str, list[dict[str, float]]] = {}
    pools: list[Callable[[], Awaitable[None]]] = []

    def grpc_phase(port: int) -> Callable[[], Awaitable[dict[str, float]]]:
        async def phase() -> dict[str, float]:
            # A fresh channel per phase: one HTTP/2 connection, as Envoy opens per worker.
            channel, call = grpc_caller(f"127.0.0.1:{port}")
            try:
                return await measured(call, args, {"server": pid_of[port], **extra})
            finally:
                await channel.close()

        return phase

    def json_phase(port: int) -> Callable[[], Awaitable[dict[str, float]]]:
        async def phase() -> dict[str, float]:
            # Fresh connections per phase: servers close kept-alive connections left idle
            # (uvicorn after 5 s) while the other phases run.
            post, close = await http_pool(port, n, "/json")

            async def by_json(key: str) -> bool:
                body = RLS_JSON.replace("KEY", key).encode()
                return bool(json.loads(await post(body))["overallCode"] == "OK")

            try:
                return await measured(by_json, args, {"server": pid_of[port], **extra})
            finally:
                await close()

        return phase

    pid_of: dict[int, int] = {}
    try:
        wait_port(grpc_port)
        wait_port(http_port)
        pid_of[grpc_port] = pid_of[http_port] = service.pid
        ours = f"ratewall serve ({args.workers} worker(s))"
        phases = [(f"{ours}, gRPC", grpc_phase(grpc_port))]
        if binary is not None:
            go, go_grpc, go_http = start_go(binary, store, workdir)
            pid_of[go_grpc] = pid_of[go_http] = go.pid
            phases.append((f"{PEER}, gRPC", grpc_phase(go_grpc)))
        phases.append((f"{ours}, HTTP POST /json", json_phase(http_port)))
        if go is not None:
            wait_port(go_http)
            phases.append((f"{PEER}, HTTP POST /json", json_phase(go_http)))
        # Paired phases, alternating (ratewall, Go, ratewall, Go, ...): the machine's drift
        # hits both sides of a pair alike.
        for round_number in range(1, args.rounds + 1):
            for name, phase in phases:
                result = await phase()
                results.setdefault(name, []).append(result)
                row(f"{name}, round {round_number}", result)
        check, close_check = await http_pool(http_port, n, "/v1/check")
        pools.append(close_check)

        async def by_check(key: str) -> bool:
            body = json.dumps({"checks": [{"policy": "bench", "identity": key}]})
            return bool(json.loads(await check(body.encode()))["decisions"][0]["allowed"])

        row(
            f"{ours}, HTTP POST /v1/check",
            await measured(by_check, args, {"server": service.pid, **extra}),
        )
    finally:
        for close in pools:
            await close()
        stop(service)
        if go is not None:
            stop(go)

    summary = ["", f"Medians of {args.rounds} paired rounds:", ""]
    summary.append("| row | decisions/s | p50 ms | p99 ms | server CPU µs/dec |")
    summary.append("|---|---|---|---|---|")
    for name, measured_rows in results.items():
        summary.append(
            f"| {name} | {median([r['decisions_per_s'] for r in measured_rows]):,.0f} | "
            f"{median([r['p50_ms'] for r in measured_rows]):.2f} | "
            f"{median([r['p99_ms'] for r in measured_rows]):.2f} | "
            f"{median([r['server_us'] for r in measured_rows]):,.0f} |"
        )
    if binary is None:
        summary.append(f"| {PEER} | {how} | | | |")
    else:
        summary.append("")
        for protocol in ("gRPC", "HTTP POST /json"):
            mine, peer = results[f"{ours}, {protocol}"], results[f"{PEER}, {protocol}"]

            def ratio(
                field: str, mine: list[dict[str, float]] = mine, peer: list[dict[str, float]] = peer
            ) -> float:
                return median([r[field] for r in mine]) / median([r[field] for r in peer])

            summary.append(
                f"ratewall ÷ Go, {protocol}, ratio of medians: decisions/s "
                f"{ratio('decisions_per_s'):.2f}×, p99 {ratio('p99_ms'):.2f}×, server CPU per "
                f"decision {ratio('server_us'):.2f}×"
            )
        summary.append(f"(Go: {how})")
    for line in summary:
        print(line, flush=True)
    return rows + summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-calls", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--store", default=None)
    parser.add_argument("--go-binary", default=None)
    parser.add_argument("--no-go", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="paired gRPC rounds (default 3)")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="an extra argument for ratewall serve (repeatable), e.g. --serve-arg=--loop=asyncio",
    )
    args = parser.parse_args()
    server: LocalServer | None = None
    store = args.store
    if store is None:
        binary = find_server()
        if binary is None:
            print("no redis-server/valkey-server found; pass --store", file=sys.stderr)
            return 2
        server = LocalServer(binary).start()
        store = server.url
    print(
        f"{args.concurrency} concurrent callers, 100 keys, {args.seconds:g} s per row, "
        f"store {store}, {os.cpu_count()} cores shared by the load generator and the servers\n"
        "| row | decisions/s | p50 ms | p99 ms | server CPU µs/dec | Redis CPU µs/dec | calls "
        "| refused |\n|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            redis_pid = server.pid if server is not None else None
            asyncio.run(main_async(args, store, Path(workdir), redis_pid))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
