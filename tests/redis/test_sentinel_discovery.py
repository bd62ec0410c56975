"""Sentinel discovery keeps the decision's deadline: a primary, a replica and three real
sentinels, listed after sentinels that accept connections and never answer (a listening
socket nobody reads: the kernel completes the handshake, no reply ever comes).

redis-py asks the sentinels one after another with the full timeout each, so two silent
sentinels first cost two timeouts. ratewall's sync store gives each sentinel an equal share
of the time left; the asyncio store asks them all at once. Bounds: the timeout + 50 % (the
stated slack) + 0.1 s for a loaded CI machine; before, these took at least twice the
timeout.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.embedded import LocalServer

from .._timing import unloaded_time
from . import _failover as f

TIMEOUT = 0.5
BOUND = TIMEOUT * 1.5 + 0.1

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def sentinels(
    redis_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[f.SentinelSet]:
    directory = tmp_path_factory.mktemp(f"discovery-{redis_server.kind}")
    with f.sentinel_set(redis_server.binary, Path(directory)) as topology:
        yield topology


@contextlib.contextmanager
def _silent_sentinels(count: int) -> Iterator[list[int]]:
    """Ports on 127.0.0.1 that accept connections (in the kernel's backlog) and never
    answer."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            listener = stack.enter_context(socket.socket())
            listener.bind((f.LOOPBACK, 0))
            listener.listen(16)
            ports.append(listener.getsockname()[1])
        yield ports


def _url(silent: list[int], real: list[int]) -> str:
    nodes = ",".join(f"{f.LOOPBACK}:{port}" for port in [*silent, *real])
    return f"redis+sentinel://{nodes}/{f.SERVICE}"


def _policies() -> dict[str, Policy]:
    return {"p": Policy(5, 60, failure_mode="closed")}


def test_sync_discovery_past_silent_sentinels_keeps_the_deadline(
    sentinels: f.SentinelSet,
) -> None:
    identity = f"sync{uuid.uuid4().hex[:6]}"
    with (
        _silent_sentinels(2) as silent,
        RateLimiter(_policies(), store=_url(silent, sentinels.sentinel_ports), timeout=TIMEOUT)
        as limiter,
    ):  # fmt: skip
        started = unloaded_time()
        decision = limiter.check(identity, "p")
        elapsed = unloaded_time() - started
        assert decision.source == "store", decision
        assert decision.remaining == 4
        assert elapsed < BOUND, f"the first decision took {elapsed:.3f} s"
        assert limiter.check(identity, "p").remaining == 3


async def test_async_discovery_past_silent_sentinels_keeps_the_deadline(
    sentinels: f.SentinelSet,
) -> None:
    identity = f"async{uuid.uuid4().hex[:6]}"
    with _silent_sentinels(2) as silent:
        url = _url(silent, sentinels.sentinel_ports)
        async with AsyncRateLimiter(_policies(), store=url, timeout=TIMEOUT) as limiter:
            started = unloaded_time()
            decision = await limiter.check(identity, "p")
            elapsed = unloaded_time() - started
            assert decision.source == "store", decision
            assert decision.remaining == 4
            assert elapsed < BOUND, f"the first decision took {elapsed:.3f} s"
            assert (await limiter.check(identity, "p")).remaining == 3


def test_sync_discovery_with_no_sentinel_answering_is_answered_by_the_failure_mode() -> None:
    with (
        _silent_sentinels(3) as silent,
        RateLimiter(_policies(), store=_url(silent, []), timeout=TIMEOUT) as limiter,
    ):
        started = unloaded_time()
        decision = limiter.check("nobody", "p")
        elapsed = unloaded_time() - started
        assert isinstance(decision, Decision)
        assert decision.degraded
        assert not decision.allowed
        assert elapsed < BOUND, f"answered after {elapsed:.3f} s"


async def test_async_discovery_with_no_sentinel_answering_is_answered_by_the_failure_mode() -> None:
    with _silent_sentinels(3) as silent:
        url = _url(silent, [])
        async with AsyncRateLimiter(_policies(), store=url, timeout=TIMEOUT) as limiter:
            started = unloaded_time()
            decision = await limiter.check("nobody", "p")
            elapsed = unloaded_time() - started
            assert decision.degraded
            assert not decision.allowed
            assert elapsed < BOUND, f"answered after {elapsed:.3f} s"
