"""``ratewall demo`` as a user runs it: worker processes sharing a real Redis/Valkey, the
embedded server's life cycle, and the walkthrough."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ratewall.embedded import LocalServer, ServerBinary

from ._support import (
    Spawned,
    assert_exact_admission,
    burst,
    descendants,
    free_port,
    processes_connected_to,
    server_processes,
    spawned,
    still_running,
    warm_up_workers,
)

pytestmark = pytest.mark.slow

# The seed policy with a store timeout that a loaded machine cannot exceed: the demo's default
# 50 ms would let a slow first round trip fail open and admit a sixth request.
SEED_CONFIG = "timeout: 2.0\npolicies:\n  login: {limit: 5, window: 60}\n"
WORKERS = 2


@pytest.fixture(scope="module")
def demo(
    redis_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Spawned]]:
    """``ratewall demo`` with two workers on the session's server; its URL and process."""
    config = tmp_path_factory.mktemp("demo") / "limits.yaml"
    config.write_text(SEED_CONFIG)
    port = free_port()
    argv = ["python", "-m", "ratewall", "demo", "--port", str(port), "--store", redis_server.url]
    with spawned([*argv, "--workers", str(WORKERS), "--config", str(config)]) as process:
        url = f"http://127.0.0.1:{port}"
        process.wait_for_http(url + "/")
        yield url, process


def test_worker_processes_admit_exactly_the_limit(
    demo: tuple[str, Spawned], redis_server: LocalServer, redis_url: str
) -> None:
    url, process = demo
    workers = warm_up_workers(url + "/login", process, redis_server.port, WORKERS, "warm-up")
    assert len(workers) == WORKERS  # both processes have served requests and share the store

    user = f"user-{uuid.uuid4().hex[:8]}"
    responses = burst(url + "/login", [{"X-User-ID": user}] * 40)
    assert_exact_admission(responses, limit=5)
    # The two workers still the only ones talking to the store: nothing was restarted.
    assert processes_connected_to(redis_server.port, process.pid) == workers


ODD_IDENTITIES: list[bytes] = [
    b"x" * 10_000,  # a 10 kB identity
    "caf\u00e9 \u2603 \U0001f4a5".encode(),  # UTF-8 beyond ASCII
    b"\xff\xfe\x80 latin-1 bytes",
    b"{user_123}:login",  # a hash tag and the key separator
    b'"quoted" \\ back\\slash',
    b"../../etc/passwd",
    b"%00%0d%0a",
    b"tabs\tinside",
    b"",  # empty: counts as missing
    b" ".join([b"user_123"] * 500),  # 4.5 kB with spaces
]


def test_missing_huge_and_odd_identities_never_cause_a_5xx(
    demo: tuple[str, Spawned], redis_url: str
) -> None:
    url = demo[0] + "/login"
    with httpx.Client(timeout=10.0) as client:
        statuses = [client.post(url).status_code for _ in range(7)]  # no X-User-ID at all
        assert statuses == [200] * 5 + [429] * 2  # the client address stands in for it
        for identity in ODD_IDENTITIES:
            statuses = [
                client.post(url, headers={b"X-User-ID": identity}).status_code for _ in range(2)
            ]
            assert all(status < 500 for status in statuses), (identity[:40], statuses)
        # A long identity has its own quota, like any other.
        statuses = [
            client.post(url, headers={b"X-User-ID": b"y" + b"x" * 10_000}).status_code
            for _ in range(6)
        ]
        assert statuses == [200] * 5 + [429]
        # Sent twice with different values, the header is ambiguous: it counts as missing.
        twice = client.post(url, headers=[("X-User-ID", "a"), ("X-User-ID", "b")])
        assert twice.status_code == 429  # the client address's quota, spent above
    # Bytes no HTTP client would send: the server refuses them, never with a 5xx.
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port or 80), timeout=10.0) as raw:
        raw.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\nX-User-ID: a\x01\x7fb\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        status_line = raw.recv(1024).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 ")
    assert int(status_line.split()[1]) < 500


@pytest.mark.redis  # needs a server binary
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_demo_without_store_starts_and_stops_its_own_server(stop: str) -> None:
    port = free_port()
    with spawned(["python", "-m", "ratewall", "demo", "--port", str(port)]) as demo:
        demo.wait_for_http(f"http://127.0.0.1:{port}/")
        # Its own server, uvicorn and the workers; processes of other test runs are no concern.
        processes = descendants(demo.pid)
        servers = server_processes(processes)
        response = httpx.post(
            f"http://127.0.0.1:{port}/login", headers={"X-User-ID": "u"}, timeout=10.0
        )
        assert response.status_code == 200
        # Ctrl-C reaches the whole process group; `kill PID` (SIGTERM) the demo alone.
        assert (demo.interrupt() if stop == "ctrl-c" else demo.terminate()) == 0
        output = demo.output()
    assert len(servers) == 1, output
    embedded = re.search(r"started \w+ \S+ \(.+\) at redis://127\.0\.0\.1:(\d+)/0", output)
    assert embedded is not None, output
    assert "stopped the embedded server" in output
    assert still_running(processes) == set()  # nothing it started is left running
    with pytest.raises(ConnectionRefusedError):  # and the server's port is closed
        socket.create_connection(("127.0.0.1", int(embedded[1])), timeout=1.0).close()


@pytest.mark.redis  # needs a server binary
def test_walkthrough_replays_the_seed(server_binaries: list[ServerBinary]) -> None:
    # It replays 61 seed seconds in about 7 real ones: once is enough (not once per server
    # kind), on a server of its own.
    if not server_binaries:
        pytest.fail("no Redis or Valkey server binary found", pytrace=False)
    with LocalServer(server_binaries[0]) as store:
        argv = ["python", "-m", "ratewall", "demo", "--walkthrough", "--store", store.url]
        with spawned(argv) as run:
            code = run.process.wait(40)
            output = run.output()
    assert code == 0, output
    rows = re.findall(
        r"^(1st|2nd|3rd|4th|5th|6th|6th again|7th) +\S+ +\S+ +(\d{3}) ", output, re.MULTILINE
    )
    assert [status for _, status in rows] == ["200"] * 5 + ["429", "429", "200"], output


def _wait_for_output(process: Spawned, text: str, count: int) -> str:
    """The demo's output once ``text`` occurs ``count`` times in it (bounded)."""
    deadline = time.monotonic() + 30
    while (output := process.output()).count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not seen {count} times within 30 s:\n{output[-3000:]}")
        time.sleep(0.05)
    return output


def test_sighup_makes_every_worker_reload_its_config(
    redis_server: LocalServer, tmp_path: Path
) -> None:
    config = tmp_path / "limits.yaml"
    config.write_text(SEED_CONFIG)
    port = free_port()
    argv = ["python", "-m", "ratewall", "demo", "--port", str(port), "--store", redis_server.url]
    with spawned([*argv, "--workers", str(WORKERS), "--config", str(config)]) as process:
        url = f"http://127.0.0.1:{port}"
        process.wait_for_http(url + "/")
        warm_up_workers(url + "/login", process, redis_server.port, WORKERS, "hup-warm-up")

        config.write_text(SEED_CONFIG.replace("limit: 5", "limit: 2"))
        os.kill(process.pid, signal.SIGHUP)
        _wait_for_output(process, "): reloaded ", WORKERS)
        responses = burst(url + "/login", [{"X-User-ID": f"user-{uuid.uuid4().hex[:8]}"}] * 20)
        assert_exact_admission(responses, limit=2)  # whichever worker answered

        config.write_text(SEED_CONFIG.replace("limit: 5", "limit: -1"))
        os.kill(process.pid, signal.SIGHUP)
        output = _wait_for_output(process, "): reload rejected: ", WORKERS)
        assert f"reload rejected: {config}: policies.login.limit: must be a positive" in output
        responses = burst(url + "/login", [{"X-User-ID": f"user-{uuid.uuid4().hex[:8]}"}] * 20)
        assert_exact_admission(responses, limit=2)  # the old config stays
        assert still_running({process.pid}) == {process.pid}
