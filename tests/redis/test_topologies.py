"""Redis Cluster and Redis Sentinel, on real processes of each server kind.

A three-primary cluster (no replicas) and a master watched by one sentinel are started once
per module and server kind, on free loopback ports, and stopped at the end, whatever happens.
Through ``redis+cluster://`` and ``redis+sentinel://`` URLs the limiter must give the same
answers as on a standalone server (SPEC §1's flow, step by step), stay exact when one
asyncio batch spans many hash slots, keep one identity's keys on the shard of its hash tag,
never write a key without a TTL, refuse a cross-slot ``check_many`` without harming anyone
else, and release every connection when closed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.embedded import LocalServer, ServerBinary, _die_with_parent_hook
from ratewall.http import ClientIP, Header, RateLimitMiddleware, Route, RouteLimit
from ratewall.testing import FakeClock

from ._stats import script_calls

LOOPBACK: Final = "127.0.0.1"
# Creating the cluster (or waiting for the sentinel) must finish within this.
BOOT_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05
PORT_ATTEMPTS: Final = 5
CLUSTER_BUS_OFFSET: Final = 10_000
SLOT_RANGES: Final = ((0, 5460), (5461, 10922), (10923, 16383))
SERVICE: Final = "mymaster"
# Exactness and topology are under test, not latency: a loaded machine must not turn a slow
# reply into a StoreError.
TIMEOUT_S: Final = 2.0

# -- SPEC §1: POST /login as user_123, 5 requests per 60 s ---------------------------------

IDENTITY: Final = "user_123"
KEY: Final = "ratelimit:{user_123}:login"
NOON: Final = 1_715_947_200.0  # 2024-05-17 12:00:00 UTC
WINDOW_MS: Final = 60_000
SEED: Final = {"login": Policy(limit=5, window=60)}


@dataclass(frozen=True)
class Step:
    """One request: seconds after 12:00:00, the answer, and whether the store was asked."""

    at: float
    decision: Decision
    asked_store: bool


def _allowed(remaining: int, reset_after: float) -> Decision:
    return Decision(True, "login", 5, remaining, reset_after, None)


def _refused(reset_after: float, retry_after: float) -> Decision:
    return Decision(False, "login", 5, 0, reset_after, retry_after)


FLOW: Final = (
    Step(0, _allowed(4, 60.0), True),
    Step(10, _allowed(3, 50.0), True),
    Step(20, _allowed(2, 40.0), True),
    Step(25, _allowed(1, 35.0), True),
    Step(30, _allowed(0, 30.0), True),
    Step(45, _refused(15.0, 15.0), True),  # 429, Retry-After: 15
    Step(50, _refused(10.0, 10.0), False),  # the deny cache answers
    Step(61, _allowed(4, 60.0), True),  # 12:01:01, a new window
)


# -- process helpers ------------------------------------------------------------------------


def _client(port: int) -> redis.Redis:
    """A plain client on one node; bounded so a dead node fails the test, not hangs it."""
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=5.0, socket_connect_timeout=5.0)


def _wait_until(what: str, condition: Callable[[], bool], deadline: float) -> None:
    """Poll ``condition`` (errors count as "not yet") until it holds or ``deadline`` passes."""
    last_error: Exception | None = None
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError) as error:
            last_error = error
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} within {BOOT_TIMEOUT_S:g} s (last error: {last_error!r})")
        time.sleep(POLL_S)


def _command(client: redis.Redis, *args: str | int) -> Any:
    """``client.execute_command``, which redis-py leaves untyped."""
    execute: Callable[..., Any] = client.execute_command
    return execute(*args)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _cli_for(binary: ServerBinary) -> Path | None:
    """``redis-cli``/``valkey-cli`` next to the server binary, else on PATH."""
    name = f"{binary.kind}-cli"
    beside = binary.path.parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: it must be <= 55535."""
    while True:
        port = _free_port()
        if port > 65535 - CLUSTER_BUS_OFFSET:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


def _start_cluster_node(binary: ServerBinary, directory: Path) -> LocalServer:
    """A cluster-enabled server; a port someone took meanwhile is retried with another."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _cluster_port()
        node = LocalServer(
            binary,
            port=port,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "2000",
            ),
        )  # fmt: skip
        try:
            return node.start()
        except RuntimeError:
            node.stop()
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _create_cluster_with_cli(cli: Path, ports: list[int], deadline: float) -> None:
    addresses = [f"{LOOPBACK}:{port}" for port in ports]
    command = [str(cli), "--cluster", "create", *addresses]
    command += ["--cluster-replicas", "0", "--cluster-yes"]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=max(1.0, deadline - time.monotonic()),
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, f"{command}:\n{completed.stdout}\n{completed.stderr}"


def _create_cluster_with_commands(ports: list[int]) -> None:
    """What ``--cluster create`` does, for a kind without its CLI: slots, then MEET."""
    for port, (first, last) in zip(ports, SLOT_RANGES, strict=True):
        with _client(port) as client:
            _command(client, "CLUSTER", "ADDSLOTS", *range(first, last + 1))
    with _client(ports[0]) as client:
        for port in ports[1:]:
            _command(client, "CLUSTER", "MEET", LOOPBACK, port)


def _cluster_ok(port: int) -> bool:
    with _client(port) as client:
        return "cluster_state:ok" in _text(_command(client, "CLUSTER", "INFO"))


def _own_slots(client: redis.Redis) -> set[int]:
    """The slots a node serves, from its own line of ``CLUSTER NODES`` (server-side truth)."""
    text = _text(_command(client, "CLUSTER", "NODES"))
    myself = next(line for line in text.splitlines() if "myself" in line.split()[2])
    slots: set[int] = set()
    for item in myself.split()[8:]:
        if item.startswith("["):  # a slot being migrated or imported
            continue
        first, _, last = item.partition("-")
        slots.update(range(int(first), int(last or first) + 1))
    return slots


@dataclass(frozen=True)
class Cluster:
    """A running three-primary cluster: its nodes and each node's slots."""

    nodes: tuple[LocalServer, ...]
    slots: tuple[frozenset[int], ...]

    @property
    def url(self) -> str:
        return f"redis+cluster://{LOOPBACK}:{self.nodes[0].port}"

    def owner(self, slot: int) -> int:
        """The index in :attr:`nodes` of the node serving ``slot``."""
        return next(i for i, slots in enumerate(self.slots) if slot in slots)


class Sentinel:
    """A sentinel process watching one master, started with ``<server> <conf> --sentinel``.

    LocalServer starts data servers only; a sentinel needs its own writable config file
    (it rewrites it) and no data-server options.
    """

    def __init__(self, binary: ServerBinary, master_port: int, directory: Path) -> None:
        self._binary = binary
        self._master_port = master_port
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, deadline: float) -> None:
        for _ in range(5):  # another process may grab the free port before the sentinel
            self.port = _free_port()
            conf = self._directory / "sentinel.conf"
            conf.write_text(
                f"port {self.port}\n"
                f"bind {LOOPBACK}\n"
                "daemonize no\n"
                f'dir "{self._directory}"\n'
                f'logfile "{self._directory / "sentinel.log"}"\n'
                f"sentinel monitor {SERVICE} {LOOPBACK} {self._master_port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n",
                "utf-8",
            )
            with (self._directory / "stdio.log").open("wb") as stdio:
                self._process = subprocess.Popen(
                    [str(self._binary.path), str(conf), "--sentinel"],
                    stdin=subprocess.DEVNULL,
                    stdout=stdio,
                    stderr=subprocess.STDOUT,
                    cwd=self._directory,
                    start_new_session=True,
                    # Killed by the kernel if pytest dies without running its teardown.
                    preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - see its docstring
                )
            if self._wait_until_ready(deadline):
                return
            self.stop()
        pytest.fail(f"no free port for the sentinel:\n{self.logs()}")

    def _wait_until_ready(self, deadline: float) -> bool:
        """True once the sentinel names the master and sees it up; False if the port was
        taken (the process exited)."""
        process = self._process
        assert process is not None
        with _client(self.port) as client:
            while True:
                if process.poll() is not None:
                    if "Address already in use" in self.logs():
                        return False
                    pytest.fail(f"the sentinel exited with {process.returncode}:\n{self.logs()}")
                try:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                    state = client.sentinel_master(SERVICE)
                    if (
                        address is not None
                        and _text(address[0]) == LOOPBACK
                        and int(address[1]) == self._master_port
                        and state["is_master"]
                        and not state["is_sdown"]
                        and not state["is_odown"]
                    ):
                        return True
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() >= deadline:
                    pytest.fail(f"the sentinel did not answer within {BOOT_TIMEOUT_S:g} s")
                time.sleep(POLL_S)

    def logs(self) -> str:
        parts = []
        for name in ("stdio.log", "sentinel.log"):
            path = self._directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    redis_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Three primaries of ``redis_server``'s kind, slots 0-16383 spread over them."""
    binary = redis_server.binary
    directory = tmp_path_factory.mktemp(f"cluster-{binary.kind}")
    nodes: list[LocalServer] = []
    try:
        for _ in range(3):
            nodes.append(_start_cluster_node(binary, directory))  # noqa: PERF401 - keep started ones for cleanup
        ports = [node.port for node in nodes]
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        cli = _cli_for(binary)
        if cli is not None:
            _create_cluster_with_cli(cli, ports, deadline)
        else:
            _create_cluster_with_commands(ports)
        _wait_until(
            "the cluster did not report cluster_state:ok on every node",
            lambda: all(_cluster_ok(port) for port in ports),
            deadline,
        )
        slots = []
        for port in ports:
            with _client(port) as client:
                slots.append(frozenset(_own_slots(client)))
        assert sorted(len(s) for s in slots) == [5461, 5461, 5462], "three primaries"
        yield Cluster(tuple(nodes), tuple(slots))
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_url(cluster: Cluster) -> str:
    """The cluster's URL, every node emptied of keys and cached scripts for this test."""
    for node in cluster.nodes:
        with _client(node.port) as client:
            client.flushall()
            client.script_flush()
    return cluster.url


def _collect_garbage() -> None:
    """Finalize unreachable objects now, closing the connections a limiter (or redis-py)
    left open, without their ResourceWarnings.

    Leaked asyncio connections warn when the garbage collector finds them, in whichever test
    happens to run it (or at the very end of the session), and this suite turns warnings
    into errors: one leak would fail unrelated tests, of any module, at random. Leaks are
    asserted where they happen instead, by the ``*_releases_every_connection`` tests, which
    see them on the servers. Tests that fail keep their frames (and what those reference)
    alive until the session ends, so failing checks here hold plain values, not limiters or
    exceptions.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(autouse=True)
def _collect_dropped_connections() -> Iterator[None]:
    """:func:`_collect_garbage` after each test."""
    yield
    _collect_garbage()


def _ratewall_connections(port: int) -> set[str]:
    """Ids of the connections named ``ratewall`` (the limiter's client name) on a server
    or sentinel."""
    with _client(port) as client:
        text = _text(_command(client, "CLIENT", "LIST"))
    ids = set()
    for line in text.splitlines():
        fields = dict(field.partition("=")[::2] for field in line.split())
        if fields.get("name") == "ratewall":
            ids.add(fields["id"])
    return ids


def _still_open(
    names: dict[int, str], before: dict[int, set[str]], opened: dict[int, set[str]]
) -> dict[str, set[str]]:
    """The connections in ``opened`` but not ``before`` that are still open, by the name of
    their server, once all closed or after 2 s (a server sees a client's close a moment
    later)."""
    new = {port: opened[port] - before[port] for port in before}
    assert any(new.values()), "the limiter opened no connection at all"
    deadline = time.monotonic() + 2.0
    while True:
        left = {port: ids & _ratewall_connections(port) for port, ids in new.items()}
        if not any(left.values()) or time.monotonic() >= deadline:
            return {f"{names[port]} :{port}": ids for port, ids in left.items() if ids}
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def sentinel_master(
    redis_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalServer, Sentinel]]:
    """A master of ``redis_server``'s kind and one sentinel monitoring it as ``mymaster``."""
    directory = tmp_path_factory.mktemp(f"sentinel-{redis_server.kind}")
    master = LocalServer(redis_server.binary)
    sentinel: Sentinel | None = None
    try:
        master.start()
        sentinel = Sentinel(redis_server.binary, master.port, directory)
        sentinel.start(time.monotonic() + BOOT_TIMEOUT_S)
        yield master, sentinel
    finally:
        if sentinel is not None:
            sentinel.stop()
        master.stop()


@pytest.fixture
def sentinel_url(sentinel_master: tuple[LocalServer, Sentinel]) -> str:
    master, sentinel = sentinel_master
    with _client(master.port) as client:
        client.flushall()
        client.script_flush()
    return f"redis+sentinel://{LOOPBACK}:{sentinel.port}/{SERVICE}"


# -- observing the store --------------------------------------------------------------------


class Observer:
    """Checks each step of the flow on a topology against the same step on the standalone
    server (``reference``, same kind, same clock): the same answers, and byte for byte the
    same stored value, whatever its encoding. ``reader`` follows the topology to the key;
    the script call counters of ``servers`` show whether the store was asked."""

    def __init__(
        self, reader: redis.Redis, servers: list[redis.Redis], reference: redis.Redis
    ) -> None:
        self.reader = reader
        self.servers = servers
        self.reference = reference
        self.calls = script_calls(*servers)
        self.value: bytes | str | None = None
        self.pttl = -2
        assert reader.exists(KEY) == 0
        assert reference.exists(KEY) == 0

    def after(self, step: Step, decision: Decision, on_standalone: Decision) -> None:
        where = f"at +{step.at}s"
        calls = script_calls(*self.servers)
        value = self.reader.get(KEY)
        pttl: int = self.reader.pttl(KEY)
        assert decision == step.decision, where
        assert on_standalone == step.decision, where
        assert calls - self.calls == (1 if step.asked_store else 0), where
        assert value is not None, where
        assert value == self.reference.get(KEY), where
        assert 0 < pttl <= WINDOW_MS, f"{where}: PTTL {pttl}"  # never without a TTL
        if decision.allowed:
            assert value != self.value, where  # counted
        else:
            assert value == self.value, where  # a refusal writes nothing...
            assert pttl <= self.pttl, where  # ...nor renews the TTL
        self.calls, self.value, self.pttl = calls, value, pttl


def _run_flow(store_url: str, reference_url: str, observer: Observer) -> None:
    """SPEC §1 through ``store_url``, in lockstep with the standalone ``reference_url``."""
    clock = FakeClock(NOON)
    with (
        RateLimiter(SEED, store=store_url, clock=clock, timeout=TIMEOUT_S) as limiter,
        RateLimiter(SEED, store=reference_url, clock=clock, timeout=TIMEOUT_S) as reference,
    ):
        for step in FLOW:
            clock.set(NOON + step.at)
            on_standalone = reference.check(IDENTITY, "login")
            observer.after(step, limiter.check(IDENTITY, "login"), on_standalone)


async def _run_flow_async(store_url: str, reference_url: str, observer: Observer) -> None:
    """:func:`_run_flow` with an AsyncRateLimiter on ``store_url``."""
    clock = FakeClock(NOON)
    with RateLimiter(SEED, store=reference_url, clock=clock, timeout=TIMEOUT_S) as reference:
        async with AsyncRateLimiter(
            SEED, store=store_url, clock=clock, timeout=TIMEOUT_S
        ) as limiter:
            for step in FLOW:
                clock.set(NOON + step.at)
                on_standalone = reference.check(IDENTITY, "login")
                observer.after(step, await limiter.check(IDENTITY, "login"), on_standalone)


@pytest.fixture
def cluster_clients(cluster: Cluster, cluster_url: str) -> Iterator[list[redis.Redis]]:
    """One plain client per node (index = node index), on the emptied cluster."""
    clients = [_client(node.port) for node in cluster.nodes]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def cluster_reader(cluster: Cluster, cluster_clients: list[redis.Redis]) -> redis.Redis:
    """A plain client on the node that serves the seed flow's key (by the server's slot)."""
    return cluster_clients[cluster.owner(_slot(cluster_clients[0], KEY))]


def _slot(client: redis.Redis, key: str) -> int:
    """The key's hash slot, as the server computes it."""
    slot: int = _command(client, "CLUSTER", "KEYSLOT", key)
    return slot


def _all_keys(clients: list[redis.Redis]) -> dict[int, set[str]]:
    """Every key on every node, by node index."""
    return {
        index: {key.decode() for key in client.scan_iter(count=1000)}
        for index, client in enumerate(clients)
    }


def _assert_every_key_expires(clients: list[redis.Redis]) -> int:
    """No key without a TTL on any node; returns how many keys there are."""
    total = 0
    for index, keys in _all_keys(clients).items():
        for key in keys:
            pttl: int = clients[index].pttl(key)
            assert pttl > 0, f"{key} on node {index}: PTTL {pttl}"
            total += 1
    return total


# -- Redis Cluster --------------------------------------------------------------------------


def test_cluster_seed_flow(
    cluster_url: str,
    cluster_reader: redis.Redis,
    cluster_clients: list[redis.Redis],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    observer = Observer(cluster_reader, cluster_clients, redis_client)
    _run_flow(cluster_url, redis_url, observer)
    assert _assert_every_key_expires(cluster_clients) == 1


async def test_cluster_seed_flow_async(
    cluster_url: str,
    cluster_reader: redis.Redis,
    cluster_clients: list[redis.Redis],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    observer = Observer(cluster_reader, cluster_clients, redis_client)
    await _run_flow_async(cluster_url, redis_url, observer)
    assert _assert_every_key_expires(cluster_clients) == 1


IDENTITIES: Final = tuple(f"user-{n}" for n in range(30))
DAILY: Final = {"daily": Policy(limit=3, window="1d")}


@dataclass(frozen=True)
class Burst:
    """What 300 concurrent checks over the 30 identities gave (plain values only)."""

    wanted: list[str]
    decisions: list[Decision]
    failures: list[str]
    script_calls: int


async def _burst(url: str, clients: list[redis.Redis], *, warm_up: bool) -> Burst:
    """300 checks over the 30 identities, all started in one event-loop turn, on a fresh
    AsyncRateLimiter (after one call first, with ``warm_up``): the async store batches them,
    and on a cluster a batch is split into one script call per slot."""
    wanted = [IDENTITIES[n % len(IDENTITIES)] for n in range(300)]
    async with AsyncRateLimiter(DAILY, store=url, timeout=TIMEOUT_S) as limiter:
        if warm_up:
            assert (await limiter.peek("warm-up", "daily")).allowed
        calls = script_calls(*clients)
        results = await asyncio.gather(
            *(limiter.check(who, "daily") for who in wanted), return_exceptions=True
        )
        calls = script_calls(*clients) - calls
    return Burst(
        wanted,
        [r for r in results if isinstance(r, Decision)],
        [repr(r) for r in results if isinstance(r, BaseException)],
        calls,
    )


def _assert_three_each(cluster: Cluster, clients: list[redis.Redis], burst: Burst) -> None:
    failures = burst.failures
    assert not failures, f"{len(failures)} of {len(burst.wanted)} checks failed: {failures[0]}"
    assert not any(d.degraded for d in burst.decisions)
    pairs = zip(burst.wanted, burst.decisions, strict=True)
    admitted = Counter(who for who, decision in pairs if decision.allowed)
    assert admitted == dict.fromkeys(IDENTITIES, 3)
    keys = _all_keys(clients)
    assert {key for node_keys in keys.values() for key in node_keys} == {
        f"ratelimit:{{{identity}}}:daily" for identity in IDENTITIES
    }
    assert all(keys.values()), "every shard holds some of the keys"
    assert _assert_every_key_expires(clients) == len(IDENTITIES)
    # The store agrees: a fresh limiter (no deny cache) finds every identity at its limit.
    with RateLimiter(DAILY, store=cluster.url, timeout=TIMEOUT_S) as fresh:
        for identity in IDENTITIES:
            decision = fresh.peek(identity, "daily")
            assert (decision.allowed, decision.remaining) == (False, 0), identity


def _assert_identities_spread(cluster: Cluster, client: redis.Redis) -> None:
    slots = {_slot(client, identity) for identity in IDENTITIES}
    assert len(slots) == len(IDENTITIES)  # 30 identities, 30 slots...
    assert {cluster.owner(slot) for slot in slots} == {0, 1, 2}  # ...on every shard


async def test_cluster_exact_when_one_batch_spans_many_slots(
    cluster: Cluster, cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # A fresh limiter (a process just started) meets its first burst of traffic: these are
    # its first store calls. Server time, a one-day window.
    _assert_identities_spread(cluster, cluster_clients[0])
    burst = await _burst(cluster_url, cluster_clients, warm_up=False)
    _collect_garbage()
    _assert_three_each(cluster, cluster_clients, burst)


async def test_cluster_exact_when_one_batch_spans_many_slots_after_a_first_call(
    cluster: Cluster, cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # The same, once one call has gone through (the cluster client knows the slots, the
    # script is loaded on one shard only): exactness across slots, apart from start-up.
    _assert_identities_spread(cluster, cluster_clients[0])
    burst = await _burst(cluster_url, cluster_clients, warm_up=True)
    _assert_three_each(cluster, cluster_clients, burst)
    # Round trips were shared: batches, each split into one script call per slot.
    assert burst.script_calls < len(burst.wanted)


def test_cluster_exact_sync_over_many_identities(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    with RateLimiter(DAILY, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        admitted = Counter(
            who for who in IDENTITIES for _ in range(5) if limiter.check(who, "daily").allowed
        )
    assert admitted == dict.fromkeys(IDENTITIES, 3)
    assert _assert_every_key_expires(cluster_clients) == len(IDENTITIES)


TWO: Final = {"login": Policy(5, 60), "burst": Policy(2, 60, "gcra")}


def test_cluster_check_many_one_identity(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    clock = FakeClock(NOON)
    memory = RateLimiter(TWO, clock=clock)
    items: list[tuple[str, str] | tuple[str, str, int]] = [("alice", "login"), ("alice", "burst")]
    with RateLimiter(TWO, store=cluster_url, clock=clock, timeout=TIMEOUT_S) as limiter:
        answers = []
        for step in (0, 1, 1, 5, 0, 31, 0):
            clock.advance(step)
            decisions = limiter.check_many(items)
            assert decisions == memory.check_many(items), f"at +{clock() - NOON}s"
            answers.append(all(decisions))
        # The third request is refused by "burst" and consumes none of "login": 3 of 5 are
        # used, so a check now would leave 1.
        assert answers == [True, True, False, False, False, True, False]
        assert limiter.peek("alice", "login") == memory.peek("alice", "login")
        assert limiter.peek("alice", "login").remaining == 5 - 3 - 1
    assert _assert_every_key_expires(cluster_clients) == 2


async def test_cluster_check_many_one_identity_async(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    clock = FakeClock(NOON)
    memory = RateLimiter(TWO, clock=clock)
    items: list[tuple[str, str] | tuple[str, str, int]] = [("bob", "login"), ("bob", "burst")]
    async with AsyncRateLimiter(TWO, store=cluster_url, clock=clock, timeout=TIMEOUT_S) as lim:
        for step in (0, 0, 0, 31, 0):
            clock.advance(step)
            assert await lim.check_many(items) == memory.check_many(items)
    assert _assert_every_key_expires(cluster_clients) == 2


def _two_slots(client: redis.Redis) -> list[tuple[str, str] | tuple[str, str, int]]:
    """check_many items for two identities whose keys hash to different slots."""
    assert _slot(client, "alice") != _slot(client, "10.0.0.1")
    return [("alice", "login"), ("10.0.0.1", "burst")]


def test_cluster_check_many_across_slots_decides_each_identity_on_its_shard(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # One atomic script call cannot span shards, so items of identities in different hash
    # slots are decided per slot: each as a separate check would decide it (the README's
    # route checks a user and an IP together; on a Cluster that must still limit).
    clock = FakeClock(NOON)
    memory = RateLimiter(TWO, clock=clock)
    mixed = _two_slots(cluster_clients[0])
    with RateLimiter(TWO, store=cluster_url, clock=clock, timeout=TIMEOUT_S) as limiter:
        answers = []
        for step in (0, 1, 1, 5, 0, 0, 31, 0):
            clock.advance(step)
            decisions = limiter.check_many(mixed)
            alone = [memory.check(*item) for item in mixed]
            assert decisions == alone, f"at +{clock() - NOON}s"
            answers.append([d.allowed for d in decisions])
        # "burst" (gcra, 2 per 60 s) refuses the 3rd to 6th requests, yet "login" counts
        # each of alice's (its group passes on its own shard): at +38 s burst passes again,
        # but alice has used her 5 logins of the window.
        assert answers == [[True, True]] * 2 + [[True, False]] * 3 + [[False, False]] + [
            [False, True],
            [False, False],
        ]
        assert limiter.peek("alice", "login") == memory.peek("alice", "login")
    assert _assert_every_key_expires(cluster_clients) == 2


async def test_cluster_check_many_across_slots_decides_each_identity_on_its_shard_async(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    clock = FakeClock(NOON)
    memory = RateLimiter(TWO, clock=clock)
    mixed = _two_slots(cluster_clients[0])
    async with AsyncRateLimiter(TWO, store=cluster_url, clock=clock, timeout=TIMEOUT_S) as lim:
        for step in (0, 0, 0, 31, 0):
            clock.advance(step)
            decisions = await lim.check_many(mixed)
            assert decisions == [memory.check(*item) for item in mixed]
    assert _assert_every_key_expires(cluster_clients) == 2


def test_cluster_check_many_keeps_each_identitys_items_all_or_nothing(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # Two policies of one identity share a slot: still one atomic group, while the other
    # identity's item is its own. bob's "burst" refusal spends none of bob's "login".
    policies = {"login": Policy(5, 60), "burst": Policy(1, 60), "per_ip": Policy(10, 60)}
    assert _slot(cluster_clients[0], "bob") != _slot(cluster_clients[0], "10.0.0.1")
    items: list[tuple[str, str] | tuple[str, str, int]] = [
        ("bob", "login"),
        ("bob", "burst"),
        ("10.0.0.1", "per_ip"),
    ]
    with RateLimiter(policies, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        first = limiter.check_many(items)
        second = limiter.check_many(items)
        assert [d.allowed for d in first] == [True, True, True]
        assert [d.allowed for d in second] == [True, False, True]
        assert limiter.peek("bob", "login").remaining == 5 - 1 - 1  # only the first counted
        assert limiter.peek("10.0.0.1", "per_ip").remaining == 10 - 2 - 1  # both counted


def test_cluster_check_many_across_slots_never_admits_beyond_the_limit(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    policies = {name: Policy(2, 60, failure_mode="open") for name in ("login", "burst")}
    mixed = _two_slots(cluster_clients[0])
    with RateLimiter(policies, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        admitted = sum(all(d.allowed for d in limiter.check_many(mixed)) for _ in range(10))
        assert all(d.source == "store" for d in limiter.check_many(mixed))
    assert admitted == 2, f"{admitted} of 10 cross-slot requests admitted with a limit of 2"


async def test_cluster_cross_slot_request_travels_with_other_callers(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # The async store shares round trips between concurrent callers and splits each batch
    # per slot: a request spanning slots is decided alongside the others, each correctly.
    mixed = _two_slots(cluster_clients[0])
    async with AsyncRateLimiter(TWO, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        await limiter.peek("warm-up", "login")  # the client is set up: no start-up race
        results = await asyncio.gather(
            limiter.check("dave", "login"),
            limiter.check("erin", "login"),
            limiter.check_many(mixed),
            limiter.check("frank", "login"),
        )
    assert results[2] == [
        Decision(True, "login", 5, 4, 60.0, None),
        Decision(True, "burst", 2, 1, 30.0, None),
    ]
    assert [results[i] for i in (0, 1, 3)] == [Decision(True, "login", 5, 4, 60.0, None)] * 3


async def test_cluster_route_with_a_user_and_an_ip_limit_limits(
    cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    # The README's route: "login" by the X-User-ID header and "login_ip" by client address,
    # two identities in two hash slots. Through the ASGI middleware on a Cluster it must
    # limit (it once let every request pass, degraded), with no failure-mode answer.
    user, address = "clusteruser", "203.0.113.9"
    assert _slot(cluster_clients[0], user) != _slot(cluster_clients[0], address)
    policies = {"login": Policy(5, 60), "login_ip": Policy(20, 60, "sliding_window")}
    route = Route(
        "/login",
        (RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())),
        method="POST",
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with AsyncRateLimiter(policies, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        middleware = RateLimitMiddleware(app, limiter, [route])
        transport = httpx.ASGITransport(app=middleware, client=(address, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = [await client.post("/login", headers={"X-User-ID": user}) for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert not any("ratelimit-degraded" in a.headers for a in answers)
    assert answers[-1].headers["ratelimit"].startswith('"login";r=0;t=60, "login_ip";')
    with RateLimiter(policies, store=cluster_url, timeout=TIMEOUT_S) as reader:
        # The refused 6th and 7th were counted by login_ip on its own shard (7 in all), and
        # consumed nothing of login.
        assert reader.peek(address, "login_ip").remaining == 20 - 7 - 1
        assert reader.peek(user, "login").retry_after is not None


def test_cluster_close_releases_every_connection(cluster: Cluster, cluster_url: str) -> None:
    ports = [node.port for node in cluster.nodes]
    names = {port: f"node {index}" for index, port in enumerate(ports)}
    before = {port: _ratewall_connections(port) for port in ports}
    limiter = RateLimiter(DAILY, store=cluster_url, timeout=TIMEOUT_S)
    for identity in IDENTITIES:  # every shard
        assert limiter.check(identity, "daily").allowed
    opened = {port: _ratewall_connections(port) for port in ports}
    limiter.close()
    left = _still_open(names, before, opened)  # while the limiter lives: GC would close them
    del limiter
    _collect_garbage()
    assert not left, f"connection ids left open after close(): {left}"


async def test_cluster_aclose_releases_every_connection(cluster: Cluster, cluster_url: str) -> None:
    ports = [node.port for node in cluster.nodes]
    names = {port: f"node {index}" for index, port in enumerate(ports)}
    before = {port: _ratewall_connections(port) for port in ports}
    limiter = AsyncRateLimiter(DAILY, store=cluster_url, timeout=TIMEOUT_S)
    for identity in IDENTITIES:  # one at a time: every shard, no start-up race
        assert (await limiter.check(identity, "daily")).allowed
    opened = {port: _ratewall_connections(port) for port in ports}
    await limiter.aclose()
    left = _still_open(names, before, opened)  # while the limiter lives: GC would close them
    del limiter
    _collect_garbage()
    assert not left, f"connection ids left open after aclose(): {left}"


HASHED: Final = "Zoë Smith {ops}"  # not raw: stored as ~<BLAKE2b digest>


def test_cluster_keys_live_on_the_shard_of_their_hash_tag(
    cluster: Cluster, cluster_url: str, cluster_clients: list[redis.Redis]
) -> None:
    identities = [*IDENTITIES[:12], HASHED]
    with RateLimiter(TWO, store=cluster_url, timeout=TIMEOUT_S) as limiter:
        for identity in identities:
            assert all(limiter.check_many([(identity, "login"), (identity, "burst")]))
    keys = _all_keys(cluster_clients)
    placed = {key: index for index, node_keys in keys.items() for key in node_keys}
    assert len(placed) == 2 * len(identities)
    probe = cluster_clients[0]
    by_tag: dict[str, set[str]] = {}
    for key, index in placed.items():
        tag = key[key.index("{") + 1 : key.index("}")]
        by_tag.setdefault(tag, set()).add(key)
        slot = _slot(probe, key)
        assert slot == _slot(probe, tag), f"{key} hashes on its identity only"
        assert cluster.owner(slot) == index, f"{key} is on node {index}, not its slot's owner"
        assert cluster_clients[index].exists(key) == 1
    # One identity's two keys share the tag; the non-raw identity is a digest, not its text.
    assert set(by_tag) == {*IDENTITIES[:12], next(t for t in by_tag if t.startswith("~"))}
    assert all(len(group) == 2 for group in by_tag.values())
    expected = Counter(cluster.owner(_slot(probe, tag)) for tag in by_tag for _ in range(2))
    for index, client in enumerate(cluster_clients):
        size: int = client.dbsize()
        assert size == expected[index], f"DBSIZE of node {index}"
    assert len(set(placed.values())) > 1, "spread over several shards"
    assert _assert_every_key_expires(cluster_clients) == 2 * len(identities)


# -- Redis Sentinel -------------------------------------------------------------------------


@pytest.fixture
def master_client(sentinel_master: tuple[LocalServer, Sentinel]) -> Iterator[redis.Redis]:
    with _client(sentinel_master[0].port) as client:
        yield client


def test_sentinel_seed_flow(
    sentinel_url: str, master_client: redis.Redis, redis_url: str, redis_client: redis.Redis
) -> None:
    observer = Observer(master_client, [master_client], redis_client)
    _run_flow(sentinel_url, redis_url, observer)
    assert _assert_every_key_expires([master_client]) == 1


async def test_sentinel_seed_flow_async(
    sentinel_url: str, master_client: redis.Redis, redis_url: str, redis_client: redis.Redis
) -> None:
    observer = Observer(master_client, [master_client], redis_client)
    await _run_flow_async(sentinel_url, redis_url, observer)
    assert _assert_every_key_expires([master_client]) == 1


def test_sentinel_url_selects_the_database(
    sentinel_url: str, sentinel_master: tuple[LocalServer, Sentinel]
) -> None:
    with RateLimiter(SEED, store=f"{sentinel_url}/3", timeout=TIMEOUT_S) as limiter:
        assert limiter.check(IDENTITY, "login").remaining == 4
    port = sentinel_master[0].port
    with redis.Redis(host=LOOPBACK, port=port, db=3, socket_timeout=5.0) as db3:
        assert db3.get(KEY) is not None
        assert db3.pttl(KEY) > 0
    with _client(port) as db0:
        assert db0.dbsize() == 0


def test_sentinel_close_releases_every_connection(
    sentinel_url: str, sentinel_master: tuple[LocalServer, Sentinel]
) -> None:
    master, sentinel = sentinel_master
    ports = (sentinel.port, master.port)
    names = {sentinel.port: "sentinel", master.port: "master"}
    before = {port: _ratewall_connections(port) for port in ports}
    limiter = RateLimiter(SEED, store=sentinel_url, timeout=TIMEOUT_S)
    assert limiter.check(IDENTITY, "login").allowed
    opened = {port: _ratewall_connections(port) for port in ports}
    # The sentinels are asked on connections of their own, closed after each discovery.
    assert opened[master.port] - before[master.port], "no connection to the master"
    limiter.close()
    left = _still_open(names, before, opened)  # while the limiter lives: GC would close them
    del limiter
    _collect_garbage()
    assert not left, f"connection ids left open after close(): {left}"


async def test_sentinel_aclose_releases_every_connection(
    sentinel_url: str, sentinel_master: tuple[LocalServer, Sentinel]
) -> None:
    master, sentinel = sentinel_master
    ports = (sentinel.port, master.port)
    names = {sentinel.port: "sentinel", master.port: "master"}
    before = {port: _ratewall_connections(port) for port in ports}
    limiter = AsyncRateLimiter(SEED, store=sentinel_url, timeout=TIMEOUT_S)
    assert (await limiter.check(IDENTITY, "login")).allowed
    opened = {port: _ratewall_connections(port) for port in ports}
    # The sentinels are asked on connections of their own, closed after each discovery.
    assert opened[master.port] - before[master.port], "no connection to the master"
    await limiter.aclose()
    left = _still_open(names, before, opened)  # while the limiter lives: GC would close them
    del limiter
    _collect_garbage()
    assert not left, f"connection ids left open after aclose(): {left}"
