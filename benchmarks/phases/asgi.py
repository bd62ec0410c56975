"""The phase of the ASGI mode: a library's middleware-wrapped app and the bare app, each in
a uvicorn process of its own, driven in turns by one HTTP load generator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

from asgi_apps import (
    ALGORITHM_VARIABLE,
    LIMIT_VARIABLE,
    WINDOW_VARIABLE,
    limited_app,
    memory_limiter,
)
from harness import CpuTally, Tally, async_block, schedule, separate_cpus
from http_load import HttpConnection, UvicornServer
from modes import SHAPES, Mode
from peers import FLOOR_ASGI, Library, LimitSpec
from phase_result import PhaseResult

from .common import SANITY_EXPECTED, SANITY_LIMIT, Context, MisconfiguredError, cycle

ASGI_BARE: Final = "asgi_apps:bare"  # the floor of the ASGI mode: the app without middleware


async def _check_asgi(spec: LimitSpec) -> None:
    """The limited app, built in this process by the factory uvicorn uses, with limit 3:
    200, 200, 200, then 429 (the middleware is there and limits)."""
    limiter = memory_limiter(spec.algorithm, SANITY_LIMIT, 86_400)
    app = limited_app(limiter)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    try:
        for _ in SANITY_EXPECTED:
            await app(scope, receive, send)
    finally:
        await limiter.aclose()
    if statuses != [200] * SANITY_LIMIT + [429]:
        raise MisconfiguredError(f"limit {SANITY_LIMIT} answered {statuses}")


async def run_asgi_phase(
    ctx: Context, library: Library, spec: LimitSpec, mode: Mode, result: PhaseResult
) -> None:
    """Two uvicorn processes, the limited app (L) and the bare one (F), driven in turns by the
    same closed-loop generator: one keep-alive connection per caller, opened before timing."""
    if library.asgi_app is None:
        raise MisconfiguredError(f"{library.name} has no ASGI middleware")
    await _check_asgi(spec)
    shape = SHAPES[mode.shape]
    env = {
        ALGORITHM_VARIABLE: spec.algorithm,
        LIMIT_VARIABLE: str(shape.limit),
        WINDOW_VARIABLE: str(shape.window),
    }
    servers = {"library": UvicornServer(library.asgi_app, env), "floor": UvicornServer(ASGI_BARE)}
    connections: dict[str, list[HttpConnection]] = {}
    with contextlib.ExitStack() as running:
        for server in servers.values():
            running.enter_context(server)
        pids = [server.pid for server in servers.values() if server.pid is not None]
        pinned = running.enter_context(separate_cpus(pids))
        try:
            for role, server in servers.items():
                connections[role] = [HttpConnection(server.port) for _ in range(mode.concurrency)]
                await asyncio.gather(*(c.open() for c in connections[role]))
            keys = cycle(shape.keys)  # unused by HTTP: the identity is the client address
            tallies = {"library": Tally(), "floor": Tally()}
            cpu = {"library": CpuTally(), "floor": CpuTally()}
            for step in schedule(ctx.settings.for_asgi(), mode.concurrency):
                server = servers[step.role]
                server_before = server.cpu_seconds()
                generator_before = time.process_time()
                began = time.perf_counter()
                sample = await async_block(
                    [c.hit for c in connections[step.role]],
                    keys,
                    step.seconds,
                    at_least=0 if step.measured else ctx.settings.warmup_calls,
                )
                if not step.measured:
                    continue
                server_after = server.cpu_seconds()
                tallies[step.role].add(sample)
                used = cpu[step.role]
                used.wall += time.perf_counter() - began
                used.generator += time.process_time() - generator_before
                if used.server is not None and server_before is not None and server_after:
                    used.server += server_after - server_before
                else:
                    used.server = None
            decorated = {
                role: sum(c.decorated for c in conns) for role, conns in connections.items()
            }
            ok = sum(c.ok for c in connections["library"])
            if bool(decorated["library"]) != library.asgi_fields or decorated["floor"]:
                raise MisconfiguredError(
                    f"responses with a RateLimit field: {decorated['library']} from "
                    f"{library.asgi_app}, {decorated['floor']} from the bare app"
                )
            result.fill(tallies["library"], tallies["floor"], FLOOR_ASGI, server=False)
            result.fill_asgi(tallies, cpu, decorated["library"] / ok, mode.concurrency, pinned)
        finally:
            for conns in connections.values():
                for connection in conns:
                    await connection.close()
