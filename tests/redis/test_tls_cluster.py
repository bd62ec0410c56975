"""``rediss+cluster://`` on a real TLS cluster (one node serving every slot, TLS on the
client port and the bus, a CA made for the test): decisions through TLS, sync and async,
and ``CLUSTERDOWN`` answered at once by the failure mode instead of after redis-py's
0.25 s sleep inside the call (the timeout here is that sleep's length, so the old
behaviour cannot pass)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.embedded import LocalServer, ServerBinary

from .._timing import unloaded_time
from . import _failover as f
from .test_tls import Certificates

TIMEOUT = 0.25

pytestmark = pytest.mark.timeout(120)


class TLSCluster:
    def __init__(self, server: LocalServer, tls_port: int, ca_file: Path) -> None:
        self.server = server
        self.tls_port = tls_port
        self.url = f"rediss+cluster://127.0.0.1:{tls_port}?ssl_ca_certs={ca_file}"

    def admin(self) -> redis.Redis:
        return redis.Redis(host=f.LOOPBACK, port=self.server.port, socket_timeout=5.0)

    def state(self) -> str:
        with self.admin() as admin:
            return f._field(admin.execute_command("CLUSTER", "INFO"), "cluster_state")


@pytest.fixture(scope="module")
def tls_cluster(
    server_binaries: list[ServerBinary], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TLSCluster]:
    binaries = [binary for binary in server_binaries if binary.kind == "redis"]
    if not binaries:
        pytest.fail("TLS tests need a redis-server built with TLS (apt-get install redis-server)")
    directory = tmp_path_factory.mktemp("tls-cluster")
    certificates = Certificates(directory)
    # With the bus on TLS, it takes the TLS port + 10000.
    tls_port = f._free_port(bus=True)
    server = LocalServer(
        binaries[0],
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates.server_cert),
            "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca_file),
            "--tls-auth-clients", "no",
            "--tls-cluster", "yes",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
        ],
    )  # fmt: skip
    with server:
        cluster = TLSCluster(server, tls_port, certificates.ca_file)
        with cluster.admin() as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        f.wait_until("the TLS cluster did not come up", lambda: cluster.state() == "ok", 30.0)
        yield cluster


@pytest.fixture
def down_slot(tls_cluster: TLSCluster) -> Iterator[tuple[str, int]]:
    """An identity whose slot is taken from the node (the cluster is then down) once the
    test calls the returned function; given back afterwards."""
    identity = f"down{uuid.uuid4().hex[:6]}"
    with tls_cluster.admin() as admin:
        slot = int(admin.execute_command("CLUSTER", "KEYSLOT", f"ratelimit:{{{identity}}}:p"))
    yield identity, slot
    with tls_cluster.admin() as admin:
        if tls_cluster.state() != "ok":
            admin.execute_command("CLUSTER", "ADDSLOTS", slot)
    f.wait_until("the TLS cluster did not come back", lambda: tls_cluster.state() == "ok", 30.0)


def _take(tls_cluster: TLSCluster, slot: int) -> None:
    with tls_cluster.admin() as admin:
        admin.execute_command("CLUSTER", "DELSLOTS", slot)
    f.wait_until("the TLS cluster did not go down", lambda: tls_cluster.state() == "fail", 30.0)


def _policies() -> dict[str, Policy]:
    return {"p": Policy(5, 60, failure_mode="closed")}


def test_sync_tls_cluster_down_is_answered_at_once(
    tls_cluster: TLSCluster, down_slot: tuple[str, int]
) -> None:
    identity, slot = down_slot
    with RateLimiter(_policies(), store=tls_cluster.url, timeout=TIMEOUT) as limiter:
        assert [limiter.check(identity, "p").remaining for _ in range(2)] == [4, 3]
        _take(tls_cluster, slot)
        started = unloaded_time()
        decision = limiter.check(identity, "p")
        elapsed = unloaded_time() - started
        assert decision.degraded
        assert not decision.allowed
        assert elapsed < TIMEOUT, f"CLUSTERDOWN answered after {elapsed:.3f} s"


async def test_async_tls_cluster_down_is_answered_at_once(
    tls_cluster: TLSCluster, down_slot: tuple[str, int]
) -> None:
    identity, slot = down_slot
    async with AsyncRateLimiter(_policies(), store=tls_cluster.url, timeout=TIMEOUT) as limiter:
        assert [(await limiter.check(identity, "p")).remaining for _ in range(2)] == [4, 3]
        _take(tls_cluster, slot)
        started = unloaded_time()
        decision = await limiter.check(identity, "p")
        elapsed = unloaded_time() - started
        assert isinstance(decision, Decision)
        assert decision.degraded
        assert not decision.allowed
        assert elapsed < TIMEOUT, f"CLUSTERDOWN answered after {elapsed:.3f} s"
