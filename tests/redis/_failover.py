"""Failover under load, measured: the topologies (a primary, a replica and three sentinels;
a cluster of three primaries with a replica each), the load (worker processes checking the
same identities against three policies that differ only by failure mode), the kill, and
what the decisions show.

Shared by tests/redis/test_failover.py (CI-sized, asserting bounds) and
benchmarks/failover.py (the numbers in the README). Everything binds 127.0.0.1, every wait
is bounded, and every process started here is stopped by the context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from ratewall import AsyncRateLimiter, Policy, RateLimiter
from ratewall.admin import AdminStore
from ratewall.embedded import LocalServer, ServerBinary, _die_with_parent_hook

LOOPBACK: Final = "127.0.0.1"
SERVICE: Final = "mymaster"
MODES: Final = ("open", "closed", "local")
# Decision codes a worker records.
STORE_ALLOWED, STORE_REFUSED, FAILED_OPEN, FAILED_CLOSED, LOCAL_ALLOWED, LOCAL_REFUSED, ERROR = (
    range(7)
)
ALLOWED_CODES: Final = (STORE_ALLOWED, FAILED_OPEN, LOCAL_ALLOWED)
WINDOW: Final = 3600  # no window passes during a run: counts are comparable to the limit
CLUSTER_BUS_OFFSET: Final = 10_000


class TopologyError(RuntimeError):
    """A topology did not come up (or fail over) within its bound."""


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=2.0, socket_connect_timeout=2.0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(reply: object, name: str) -> str:
    """One field of an INFO-like reply, which redis-py may have parsed into a dict."""
    if isinstance(reply, dict):
        return _text(reply.get(name, ""))
    for line in _text(reply).splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> float:
    """Poll ``condition`` (errors count as "not yet") until it holds; the seconds it took.
    Raises TopologyError after ``timeout``."""
    started = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (redis.RedisError, OSError) as error:
            last = error
        if time.monotonic() - started > timeout:
            raise TopologyError(f"{what} within {timeout:g} s (last error: {last!r})")
        time.sleep(0.05)


def _free_port(bus: bool = False) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        if not bus:
            return port
        if port > 65535 - CLUSTER_BUS_OFFSET:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


def kill(server: LocalServer) -> None:
    """SIGKILL: a crash, nothing flushed, no goodbye to replicas or clients."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGKILL)


# -- Sentinel: a primary, a replica, three sentinels ----------------------------------------


class _SentinelProcess:
    def __init__(self, binary: ServerBinary, primary_port: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind {LOOPBACK}\ndaemonize no\n"
            f'dir "{directory}"\nlogfile "{directory / "sentinel.log"}"\n'
            f"sentinel monitor {SERVICE} {LOOPBACK} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n",
            "utf-8",
        )
        self.process = subprocess.Popen(
            [str(binary.path), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=directory,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - see its docstring
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class SentinelSet:
    primary: LocalServer
    replica: LocalServer
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        nodes = ",".join(f"{LOOPBACK}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/{SERVICE}"

    def master_port(self) -> int:
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
                if address is not None:
                    return int(address[1])
        return 0

    def failed_over(self) -> bool:
        """Every sentinel names the replica, and the replica says it is a master."""
        for port in self.sentinel_ports:
            with _client(port) as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
                if address is None or int(address[1]) != self.replica.port:
                    return False
        with _client(self.replica.port) as client:
            return _field(client.info("replication"), "role") == "master"


def _replica_in_sync(replica: LocalServer) -> bool:
    with _client(replica.port) as client:
        return _field(client.info("replication"), "master_link_status") == "up"


@contextlib.contextmanager
def sentinel_set(
    binary: ServerBinary, directory: Path, boot: float = 30.0
) -> Iterator[SentinelSet]:
    primary = LocalServer(binary, extra_args=("--repl-diskless-sync-delay", "0"))
    replica: LocalServer | None = None
    sentinels: list[_SentinelProcess] = []
    try:
        primary.start()
        replica = LocalServer(binary, extra_args=("--replicaof", LOOPBACK, str(primary.port)))
        replica.start()
        wait_until("the replica did not sync", lambda: _replica_in_sync(replica), boot)
        for n in range(3):
            sentinels.append(_SentinelProcess(binary, primary.port, directory / f"s{n}"))  # noqa: PERF401 - keep started ones for cleanup

        def ready() -> bool:
            for sentinel in sentinels:
                with _client(sentinel.port) as client:
                    state = client.sentinel_master(SERVICE)
                    if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                        return False
            return True

        wait_until("the sentinels did not find each other and the replica", ready, boot)
        yield SentinelSet(primary, replica, [s.port for s in sentinels])
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        if replica is not None:
            replica.stop()
        primary.stop()


# -- Cluster: three primaries, three replicas -----------------------------------------------


@dataclass
class ClusterSet:
    nodes: list[LocalServer]

    @property
    def url(self) -> str:
        return self.url_via(self.nodes[0])

    @staticmethod
    def url_via(node: LocalServer) -> str:
        return f"redis+cluster://{LOOPBACK}:{node.port}"

    def primary_of(self, key: str) -> LocalServer:
        with _client(self.nodes[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for first, last, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    port = int(owner[1])
                    return next(node for node in self.nodes if node.port == port)
        raise TopologyError(f"no node serves {key!r}")

    def healthy(self, alive: list[LocalServer]) -> bool:
        """cluster_state:ok on every live node, and every slot served by a live primary."""
        ports = {node.port for node in alive}
        for node in alive:
            with _client(node.port) as client:
                if _field(client.execute_command("CLUSTER", "INFO"), "cluster_state") != "ok":
                    return False
        with _client(alive[0].port) as client:
            slots = client.execute_command("CLUSTER", "SLOTS")
        return sum(int(r[1]) - int(r[0]) + 1 for r in slots if int(r[2][1]) in ports) == 16384


def cli_for(binary: ServerBinary) -> Path | None:
    name = f"{binary.kind}-cli"
    beside = binary.path.parent / name
    if beside.is_file():
        return beside
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def cluster_set(
    binary: ServerBinary, directory: Path, boot: float = 60.0, node_timeout_ms: int = 1000
) -> Iterator[ClusterSet]:
    """Six nodes, three primaries with a replica each. A primary unreachable for
    ``node_timeout_ms`` is failed over."""
    cli = cli_for(binary)
    if cli is None:
        raise TopologyError(f"no {binary.kind}-cli to create a cluster with replicas")
    directory.mkdir(parents=True, exist_ok=True)
    nodes: list[LocalServer] = []
    try:
        for _ in range(6):
            port = _free_port(bus=True)
            node = LocalServer(
                binary,
                port=port,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--repl-diskless-sync-delay", "0",
                ),
            )  # fmt: skip
            nodes.append(node)
            node.start()
        command = [str(cli), "--cluster", "create"]
        command += [f"{LOOPBACK}:{node.port}" for node in nodes]
        command += ["--cluster-replicas", "1", "--cluster-yes"]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=boot, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise TopologyError(f"{command}: {done.stdout}\n{done.stderr}")
        cluster = ClusterSet(nodes)
        wait_until("the cluster did not become healthy", lambda: cluster.healthy(nodes), boot)

        def replicas_in_sync() -> bool:
            synced = 0
            for node in nodes:
                with _client(node.port) as client:
                    info = client.info("replication")
                synced += _field(info, "master_link_status") == "up"
            return synced == 3

        wait_until("the cluster's replicas did not sync", replicas_in_sync, boot)
        yield cluster
    finally:
        for node in nodes:
            node.stop()


# -- load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    url: str
    timeout: float
    limit: int
    workers: int
    rotate_every: float  # seconds each identity is hammered before the next one
    pace: float  # seconds between one worker's rounds (one check per mode)
    tag: str  # makes identities unique per run
    asynchronous: bool = False  # AsyncRateLimiter, the three checks of a round concurrent

    def policies(self) -> dict[str, Policy]:
        return {
            mode: Policy(self.limit, WINDOW, failure_mode=mode, local_nodes=self.workers)
            for mode in MODES
        }


def _code(decision: Any) -> int:
    if decision.source == "local":
        return LOCAL_ALLOWED if decision.allowed else LOCAL_REFUSED
    if decision.source == "failure":
        return FAILED_OPEN if decision.allowed else FAILED_CLOSED
    return STORE_ALLOWED if decision.allowed else STORE_REFUSED


def worker(load: Load, start: float, stop: Any, ready: Any, out: Any) -> None:
    """One process's load: until ``stop`` is set, a round every ``load.pace`` seconds of one
    check per mode on the identity of the moment. Sends its records to ``out``: (monotonic
    time, mode index, identity index, seconds, code)."""
    if load.asynchronous:
        asyncio.run(_async_worker(load, start, stop, ready, out))
        return
    records: list[tuple[float, int, int, float, int]] = []
    limiter = RateLimiter(
        load.policies(), store=load.url, timeout=load.timeout, breaker_cooldown=0.5
    )
    told = False
    try:
        while not stop.is_set():
            now = time.monotonic()
            index = int((now - start) / load.rotate_every)
            identity = f"{load.tag}{index}"
            for m, mode in enumerate(MODES):
                began = time.perf_counter()
                try:
                    code = _code(limiter.check(identity, mode))
                except Exception:  # counted: an exception reached the caller
                    code = ERROR
                records.append((now, m, index, time.perf_counter() - began, code))
                if not told and code in (STORE_ALLOWED, STORE_REFUSED):
                    ready.release()
                    told = True
            time.sleep(load.pace)  # pacing the load, not waiting for an event
    finally:
        limiter.close()
        out.put(records)


async def _async_worker(load: Load, start: float, stop: Any, ready: Any, out: Any) -> None:
    """:func:`worker` with an AsyncRateLimiter: a round's three checks are made at once, so
    that they share (and queue for) the store's script calls in flight."""
    records: list[tuple[float, int, int, float, int]] = []
    limiter = AsyncRateLimiter(
        load.policies(), store=load.url, timeout=load.timeout, breaker_cooldown=0.5
    )
    told = False

    async def one(identity: str, m: int) -> tuple[float, int]:
        began = time.perf_counter()
        try:
            code = _code(await limiter.check(identity, MODES[m]))
        except Exception:  # counted: an exception reached the caller
            code = ERROR
        return time.perf_counter() - began, code

    try:
        while not stop.is_set():
            now = time.monotonic()
            index = int((now - start) / load.rotate_every)
            identity = f"{load.tag}{index}"
            results = await asyncio.gather(*(one(identity, m) for m in range(len(MODES))))
            for m, (seconds, code) in enumerate(results):
                records.append((now, m, index, seconds, code))
                if not told and code in (STORE_ALLOWED, STORE_REFUSED):
                    ready.release()
                    told = True
            await asyncio.sleep(load.pace)  # pacing the load, not waiting for an event
    finally:
        await limiter.aclose()
        out.put(records)


@dataclass
class Report:
    """What the decisions showed around one kill."""

    killed_at: float
    switched_after: float  # the topology's own view: new primary in place
    records: list[tuple[float, int, int, float, int]] = field(default_factory=list)
    stored: dict[tuple[int, int], int] = field(default_factory=dict)  # (mode, identity) -> count
    limit: int = 0
    workers: int = 0
    timeout: float = 0.0

    def during(self) -> list[tuple[float, int, int, float, int]]:
        return [r for r in self.records if r[0] >= self.killed_at]

    def counts(self, mode: str) -> dict[int, int]:
        m = MODES.index(mode)
        totals: dict[int, int] = dict.fromkeys(range(7), 0)
        for record in self.during():
            if record[1] == m:
                totals[record[4]] += 1
        return totals

    def recovery(self, mode: str) -> float:
        """Seconds from the kill to the last decision not made by the store (0: none)."""
        m = MODES.index(mode)
        degraded = [r[0] for r in self.during() if r[1] == m and r[4] not in (0, 1)]
        return max(degraded) - self.killed_at if degraded else 0.0

    def latencies(self, mode: str | None = None) -> list[float]:
        return sorted(r[3] for r in self.during() if mode is None or r[1] == MODES.index(mode))

    def admitted(self, mode: str) -> dict[int, int]:
        """Per identity touched since the kill, every admission of the run (store or not)."""
        m = MODES.index(mode)
        touched = {r[2] for r in self.during() if r[1] == m}
        totals = dict.fromkeys(touched, 0)
        for r in self.records:
            if r[1] == m and r[2] in totals and r[4] in ALLOWED_CODES:
                totals[r[2]] += 1
        return totals

    def lost(self, mode: str) -> dict[int, int]:
        """Per identity, store admissions the store no longer counts (acknowledged by the
        killed primary, never replicated)."""
        m = MODES.index(mode)
        admitted: dict[int, int] = {}
        for r in self.records:
            if r[1] == m and r[4] == STORE_ALLOWED:
                admitted[r[2]] = admitted.get(r[2], 0) + 1
        return {
            i: max(0, n - self.stored.get((m, i), 0))
            for i, n in admitted.items()
            if (m, i) in self.stored
        }

    def over(self, mode: str) -> int:
        """The most admitted beyond the limit for one identity."""
        return max([0, *(n - self.limit for n in self.admitted(mode).values())])


def run(
    load: Load,
    kill_primary: Callable[[], None],
    switched: Callable[[], bool],
    *,
    settle: float = 1.0,
    after: float = 2.0,
    bound: float = 60.0,
    reader_url: str | None = None,
) -> Report:
    """Start the workers, kill the primary once all decide on the store and ``settle``
    seconds passed, wait (polling, at most ``bound`` s) until ``switched()``, keep the load
    ``after`` seconds more, stop, and read what the store kept of each identity (through
    ``reader_url``, by default the load's: a cluster URL must not name the killed node)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    ready = context.Semaphore(0)
    out: Any = context.Queue()
    start = time.monotonic()
    processes = [
        context.Process(target=worker, args=(load, start, stop, ready, out), daemon=True)
        for _ in range(load.workers)
    ]
    for process in processes:
        process.start()
    records: list[tuple[float, int, int, float, int]] = []
    try:
        for _ in processes:
            if not ready.acquire(timeout=bound):
                raise TopologyError(f"the workers did not reach the store within {bound:g} s")
        time.sleep(settle)  # steady load before the kill (not an assertion)
        killed_at = time.monotonic()
        kill_primary()
        switched_after = wait_until("the topology did not fail over", switched, bound)
        deadline = time.monotonic() + after
        while time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for _ in processes:
            with contextlib.suppress(Exception):
                records.extend(out.get(timeout=bound))
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    report = Report(killed_at, switched_after, records, limit=load.limit, workers=load.workers)
    report.timeout = load.timeout
    identities = {r[2] for r in records}
    with AdminStore(reader_url or load.url, timeout=2.0) as admin:
        for m, mode in enumerate(MODES):
            for index in identities:
                key = f"ratelimit:{{{load.tag}{index}}}:{mode}"
                state = admin.read(key, "fixed_window").state
                report.stored[(m, index)] = int(state[0]) if state else 0
    return report


def summary(name: str, report: Report) -> list[str]:
    """Markdown table rows: one per failure mode."""
    rows = []
    share = -(-report.limit // report.workers)
    for mode in MODES:
        counts = report.counts(mode)
        lat = report.latencies(mode)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0
        lost = sum(report.lost(mode).values())
        rows.append(
            f"| {name} | {mode} | {sum(counts.values())} | {counts[ERROR]} | "
            f"{counts[FAILED_OPEN]} | {counts[FAILED_CLOSED]} | "
            f"{counts[LOCAL_ALLOWED]}/{counts[LOCAL_REFUSED]} | "
            f"{report.switched_after:.2f} | {report.recovery(mode):.2f} | "
            f"{1000 * p99:.0f} / {1000 * (lat[-1] if lat else 0):.0f} "
            f"({sum(x > 1.5 * report.timeout for x in lat)}) | "
            f"{report.over(mode)} (limit {report.limit}, share {share}, lost {lost}) |"
        )
    return rows


HEADER: Final = (
    "| topology | failure mode | decisions after the kill | exceptions | failed open | "
    "failed closed | local allowed/refused | switch (s) | recovered (s) | "
    "p99 / max ms (how many > 1.5 × timeout) | "
    "most over the limit per identity |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _node_id(port: int) -> str:
    with _client(port) as client:
        return _text(client.execute_command("CLUSTER", "MYID"))


def migrate_slot(
    cluster: ClusterSet, key: str, step: float = 0.2
) -> tuple[LocalServer, LocalServer]:
    """Move ``key``'s slot to another primary the way ``redis-cli --cluster reshard`` does
    (IMPORTING, MIGRATING, MIGRATE of its keys, then SETSLOT NODE everywhere), pausing
    ``step`` seconds between the steps so that the load meets each state (ASK included).
    Returns (source, target)."""
    source = cluster.primary_of(key)
    with _client(source.port) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        primaries = {int(row[2][1]) for row in client.execute_command("CLUSTER", "SLOTS")}
    target = next(n for n in cluster.nodes if n.port in primaries and n is not source)
    source_id, target_id = _node_id(source.port), _node_id(target.port)
    with _client(source.port) as src, _client(target.port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        time.sleep(step)  # pacing the migration under load, not waiting for an event
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
            for name in keys:
                src.execute_command("MIGRATE", LOOPBACK, target.port, name, 0, 5000)
                time.sleep(step)  # the load now meets ASK for the moved key
        for node in cluster.nodes:
            with contextlib.suppress(redis.RedisError), _client(node.port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return source, target
