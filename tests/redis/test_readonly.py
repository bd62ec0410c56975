"""A failover behind one address (managed Redis, a DNS name or a proxy that moves to the new
primary): connections opened before it still reach the demoted server, which answers every
write with READONLY. The call that meets it fails (the failure mode answers); the
connection is dropped, so the next call reaches the new primary. (Before this rule, the
pool kept the replica's connection and every later decision failed until a restart.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from ratewall import AsyncRateLimiter, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer
from ratewall.testing import FakeClock

from ._proxy import FaultProxy

POLICIES = {"login": Policy(5, 60, failure_mode="raise")}
TIMEOUT = 2.0  # generous: this test is about which server answers, not how fast


def _wait_for_link(replica: LocalServer) -> None:
    with redis.Redis(port=replica.port, socket_timeout=5.0) as client:
        deadline = time.monotonic() + 10
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced with its primary"
            time.sleep(0.05)


@pytest.fixture
def primary_and_replica(redis_server: LocalServer) -> Iterator[tuple[LocalServer, LocalServer]]:
    # No 5 s wait for more replicas before a diskless full sync (the default).
    with LocalServer(
        redis_server.binary, extra_args=["--repl-diskless-sync-delay", "0"]
    ) as primary:
        replica_of = ["--replicaof", "127.0.0.1", str(primary.port)]
        with LocalServer(redis_server.binary, extra_args=replica_of) as replica:
            _wait_for_link(replica)
            yield primary, replica


def test_a_readonly_reply_drops_the_pooled_connection(
    primary_and_replica: tuple[LocalServer, LocalServer],
) -> None:
    primary, replica = primary_and_replica
    with (
        FaultProxy(("127.0.0.1", replica.port)) as proxy,
        RateLimiter(POLICIES, store=proxy.url, timeout=TIMEOUT, clock=FakeClock()) as limiter,
    ):
        with pytest.raises(StoreError) as caught:
            limiter.check("user_1", "login")  # the replica refuses the write
        assert str(caught.value.__cause__).startswith("READONLY")
        proxy.switch(("127.0.0.1", primary.port))  # the address now leads to the primary
        # The connection that met the replica is gone: the next decision is the primary's.
        decision = limiter.check("user_1", "login")
        assert decision.allowed
        assert decision.remaining == 4
        assert not decision.degraded


async def test_a_readonly_reply_drops_the_async_connection(
    primary_and_replica: tuple[LocalServer, LocalServer],
) -> None:
    primary, replica = primary_and_replica
    with FaultProxy(("127.0.0.1", replica.port)) as proxy:
        async with AsyncRateLimiter(
            POLICIES, store=proxy.url, timeout=TIMEOUT, clock=FakeClock()
        ) as limiter:
            with pytest.raises(StoreError) as caught:
                await limiter.check("user_1", "login")
            assert str(caught.value.__cause__).startswith("READONLY")
            proxy.switch(("127.0.0.1", primary.port))
            decision = await limiter.check("user_1", "login")
            assert decision.allowed
            assert decision.remaining == 4
            assert not decision.degraded
