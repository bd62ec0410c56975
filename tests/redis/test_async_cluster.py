"""AsyncRateLimiter on a real Cluster (three primaries, a replica each): every decision is
answered by its deadline, whatever redis-py's asyncio cluster does inside the call.

redis-py's asyncio cluster sleeps 0.25 s and closes every connection on ``CLUSTERDOWN``,
re-reads the slot map inside a call after a connection error, and a caller queued behind
the script calls in flight used to wait for them before its own. ratewall reads
``CLUSTERDOWN``/``TRYAGAIN`` as an immediate failure and waits for each redis-py call only
until the batch's deadline, without cancelling it (a cancelled redis-py asyncio call can put
back a connection whose reply is still on the way): the policy's failure mode answers.

Bounds: a decision within the timeout + 50 % (the stated slack) + 0.1 s for a loaded CI
machine. A frozen primary (SIGSTOP) stands in for a node that accepts and never answers;
the cluster's node timeout here (5 s) is longer than any freeze, so no failover starts.
The failover under load (SIGKILL of a primary) is in test_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer
from ratewall.stores._redispy import _AsyncFailFastParser, aclose_client, make_client
from ratewall.testing import FakeClock

from .._timing import unloaded_time
from . import _failover as f

TIMEOUT = 0.4
BOUND = TIMEOUT * 1.5 + 0.1
BREAKER_COOLDOWN = 1.0
CYCLES = 10

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(
    redis_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[f.ClusterSet]:
    directory = tmp_path_factory.mktemp(f"async-cluster-{redis_server.kind}")
    with f.cluster_set(redis_server.binary, Path(directory), node_timeout_ms=5000) as topology:
        yield topology


@contextlib.contextmanager
def _frozen(node: LocalServer) -> Iterator[None]:
    os.kill(node.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.pid, signal.SIGCONT)


async def _timed(limiter: AsyncRateLimiter, identity: str, policy: str) -> tuple[object, float]:
    started = unloaded_time()
    try:
        outcome: object = await limiter.check(identity, policy)
    except Exception as error:
        outcome = error
    return outcome, unloaded_time() - started


async def _staggered(
    limiter: AsyncRateLimiter, identity: str, policy: str, count: int
) -> list[tuple[object, float]]:
    """``count`` checks made one event-loop turn apart: the first two leave as script calls
    of their own (two in flight), the others queue behind them."""
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(_timed(limiter, identity, policy)))
        await asyncio.sleep(0)  # one loop turn, no time
    return list(await asyncio.gather(*tasks))


def _key(identity: str, policy: str) -> str:
    return f"ratelimit:{{{identity}}}:{policy}"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((f.LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


async def test_async_cluster_down_is_answered_at_once(cluster: f.ClusterSet) -> None:
    """A node answering CLUSTERDOWN (one slot unassigned) fails the call at once, not after
    redis-py's 0.25 s sleep: well within the timeout (0.25 s here, the length of that
    sleep, so the old behaviour cannot pass)."""
    timeout = 0.25
    identity = f"down{uuid.uuid4().hex[:6]}"
    policies = {"closed": Policy(5, 60, failure_mode="closed"), "strict": Policy(5, 60)}
    owner = cluster.primary_of(_key(identity, "closed"))
    with redis.Redis(host=f.LOOPBACK, port=owner.port, socket_timeout=5.0) as admin:
        slot = int(admin.execute_command("CLUSTER", "KEYSLOT", _key(identity, "closed")))
        clock = FakeClock()
        async with AsyncRateLimiter(
            policies, store=cluster.url, timeout=timeout, clock=clock
        ) as limiter:
            assert (await limiter.check(identity, "closed")).source == "store"
            admin.execute_command("CLUSTER", "DELSLOTS", slot)
            try:
                f.wait_until(
                    "the cluster did not go down",
                    lambda: (
                        f._field(admin.execute_command("CLUSTER", "INFO"), "cluster_state")
                        == "fail"
                    ),
                    30.0,
                )
                # Two failures, below the breaker's threshold: both reach the cluster.
                outcome, elapsed = await _timed(limiter, identity, "closed")
                assert isinstance(outcome, Decision), outcome
                assert outcome.degraded
                assert not outcome.allowed
                assert elapsed < timeout, f"CLUSTERDOWN answered after {elapsed:.3f} s"
                outcome, elapsed = await _timed(limiter, identity, "strict")
                assert isinstance(outcome, StoreError), outcome
                assert "ClusterUnavailableError" in str(outcome)
                assert elapsed < timeout, f"CLUSTERDOWN answered after {elapsed:.3f} s"
            finally:
                admin.execute_command("CLUSTER", "ADDSLOTS", slot)
                f.wait_until(
                    "the cluster did not come back",
                    lambda: cluster.healthy(cluster.nodes),
                    30.0,
                )
            # Nothing was closed or put to sleep: the next call decides on the store.
            assert (await limiter.check(identity, "strict")).source == "store"


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_an_async_cluster_limiter_constructs_while_the_cluster_is_down(mode: str) -> None:
    url = f"redis+cluster://{f.LOOPBACK}:{_closed_port()}"
    policies = {"api": Policy(5, 60, failure_mode=mode), "strict": Policy(5, 60)}
    async with AsyncRateLimiter(policies, store=url, timeout=TIMEOUT) as limiter:
        outcome, elapsed = await _timed(limiter, "user_1", "api")
        assert elapsed < BOUND
        assert isinstance(outcome, Decision), outcome
        assert outcome.degraded
        assert outcome.allowed == (mode != "closed")
        with pytest.raises(StoreError):
            await limiter.check("user_1", "strict")
        with pytest.raises(StoreError):
            await limiter.ping()


async def test_queued_calls_on_a_frozen_primary_are_answered_by_their_deadline(
    cluster: f.ClusterSet,
) -> None:
    """Five checks one loop turn apart on a primary that accepts and never answers: two
    script calls in flight, three queued behind them. Each is answered by the failure mode
    within the timeout + slack (the queued ones used to wait for a call in flight first)."""
    identity = f"frozen{uuid.uuid4().hex[:6]}"
    policies = {"p": Policy(1000, 3600, failure_mode="closed")}
    async with AsyncRateLimiter(policies, store=cluster.url, timeout=TIMEOUT) as limiter:
        assert (await limiter.check(identity, "p")).source == "store"
        with _frozen(cluster.primary_of(_key(identity, "p"))):
            results = await _staggered(limiter, identity, "p", 5)
        for outcome, elapsed in results:
            assert isinstance(outcome, Decision), outcome
            assert outcome.degraded
            assert not outcome.allowed
            assert elapsed < BOUND, [round(e, 3) for _, e in results]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ratewall_connections(cluster: f.ClusterSet) -> int:
    total = 0
    for node in cluster.nodes:
        with redis.Redis(host=f.LOOPBACK, port=node.port, socket_timeout=5.0) as admin:
            total += sum(c.get("name") == "ratewall" for c in admin.client_list())
    return total


def _settled(count: Callable[[], int], expected: int) -> int:
    """``count()`` once it is at most ``expected``, or after 2 s (closed sockets leave the
    server within a poll interval or two)."""
    deadline = time.monotonic() + 2.0
    value = count()
    while value > expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = count()
    return value


async def _from_the_store(
    limiter: AsyncRateLimiter, clock: FakeClock, identity: str, policy: str
) -> list[Decision]:
    """Two decisions from the store once the breaker's cooldown has passed (on the fake
    clock); a call still answered by the failure mode is retried, at most 10 times."""
    decisions: list[Decision] = []
    for _ in range(10):
        clock.advance(BREAKER_COOLDOWN)
        decision = await limiter.check(identity, policy)
        if decision.source == "store":
            decisions.append(decision)
            if len(decisions) == 2:
                return decisions
        else:
            decisions.clear()
    raise AssertionError(f"no decision from the store again: {decisions}")


async def test_freeze_cycles_leak_nothing_and_mix_up_no_reply(cluster: f.ClusterSet) -> None:
    """Calls left running past their deadline end on their own: after each freeze of the
    same primary the limiter decides from the store again, two decisions in a row count
    down by exactly one (no connection hands a late reply to the wrong caller), and the
    connections do not grow with the cycles.

    redis-py reconnects lazily (a connection marked after an error is replaced when next
    used) and re-reads the slot map through a randomly chosen node, whose own connection
    stays open: from the second cycle on, at most one more connection per node may appear,
    whatever the number of cycles; a leak of one per cycle exceeds that."""
    clock = FakeClock()
    identity = f"cycle{uuid.uuid4().hex[:6]}"  # one slot, so one primary, every cycle
    policies = {f"p{n}": Policy(1000, 3600, failure_mode="open") for n in range(CYCLES)}
    node = cluster.primary_of(_key(identity, "p0"))
    async with AsyncRateLimiter(
        policies,
        store=cluster.url,
        timeout=TIMEOUT,
        clock=clock,
        breaker_cooldown=BREAKER_COOLDOWN,
    ) as limiter:
        baseline_fds = baseline_server = 0
        for cycle in range(CYCLES):
            policy = f"p{cycle}"
            assert (await limiter.check(identity, policy)).source == "store"
            with _frozen(node):
                results = await _staggered(limiter, identity, policy, 3)
            for outcome, elapsed in results:
                assert isinstance(outcome, Decision), outcome
                assert outcome.degraded
                assert outcome.allowed
                assert elapsed < BOUND, (cycle, [round(e, 3) for _, e in results])
            first, second = await _from_the_store(limiter, clock, identity, policy)
            assert second.remaining == first.remaining - 1, (cycle, first, second)
            if cycle == 1:
                baseline_fds = _open_fds() + len(cluster.nodes)
                baseline_server = _ratewall_connections(cluster) + len(cluster.nodes)
        assert _settled(_open_fds, baseline_fds) <= baseline_fds
        count = _ratewall_connections
        assert _settled(lambda: count(cluster), baseline_server) <= baseline_server
    assert _settled(lambda: count(cluster), 0) == 0, "aclose() left connections open"


async def test_the_tls_cluster_form_fails_fast_too() -> None:
    """``rediss+cluster://`` reaches the nodes through redis-py's TLS connection class: its
    connections read CLUSTERDOWN/TRYAGAIN the same way (the seed's and every node found
    later, which are built from the client's keyword arguments)."""
    client = make_client(
        "rediss+cluster://127.0.0.1:1?ssl_cert_reqs=none", TIMEOUT, asynchronous=True
    )
    try:
        assert "SSL" in client.connection_kwargs["connection_class"].__name__
        assert client.connection_kwargs["parser_class"] is _AsyncFailFastParser
        for node in client.nodes_manager.startup_nodes.values():
            assert node.connection_kwargs["parser_class"] is _AsyncFailFastParser
            connection = node.connection_class(**node.connection_kwargs)
            assert type(connection._parser) is _AsyncFailFastParser
    finally:
        await aclose_client(client)


def test_a_sync_limiter_finds_the_cluster_through_its_second_seed(cluster: f.ClusterSet) -> None:
    url = f"redis+cluster://{f.LOOPBACK}:{_closed_port()},{f.LOOPBACK}:{cluster.nodes[1].port}"
    with RateLimiter({"p": Policy(5, 60)}, store=url, timeout=TIMEOUT) as limiter:
        decision = limiter.check(f"seed{uuid.uuid4().hex[:6]}", "p")
        assert decision.source == "store"
        assert decision.remaining == 4
        limiter.ping()


async def test_an_async_limiter_finds_the_cluster_through_its_second_seed(
    cluster: f.ClusterSet,
) -> None:
    url = f"redis+cluster://{f.LOOPBACK}:{_closed_port()},{f.LOOPBACK}:{cluster.nodes[1].port}"
    async with AsyncRateLimiter({"p": Policy(5, 60)}, store=url, timeout=TIMEOUT) as limiter:
        decision = await limiter.check(f"seed{uuid.uuid4().hex[:6]}", "p")
        assert decision.source == "store"
        assert decision.remaining == 4
        await limiter.ping()
