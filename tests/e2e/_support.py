"""Helpers for the end-to-end tests: server processes of our own, in-thread servers, bursts
of concurrent requests, and which processes talk to the store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import httpx
import uvicorn
from werkzeug.serving import make_server

from ..http._support import ratelimit_members

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = [
    "EXAMPLES",
    "Spawned",
    "assert_exact_admission",
    "assert_example_shares_one_limit",
    "burst",
    "descendants",
    "example_argv",
    "free_port",
    "processes_connected_to",
    "serve_asgi",
    "serve_wsgi",
    "server_processes",
    "spawned",
    "still_running",
    "warm_up_workers",
    "wire",
]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_POLL = 0.05


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Spawned:
    """A process of ours in its own process group (as a terminal's foreground job would
    be), its output collected in a temporary file."""

    def __init__(self, process: subprocess.Popen[bytes], output: IO[bytes]) -> None:
        self.process = process
        self._output = output

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self._output.flush()
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def wait_for_http(self, url: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``url`` until the server answers anything (bounded; fails with its output)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.process.args!r} exited with {self.process.returncode} while "
                    f"starting:\n{self.output()[-3000:]}"
                )
            try:
                httpx.get(url, timeout=1.0)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{url} did not answer within {timeout:g} s:\n{self.output()[-3000:]}"
                    ) from None
                time.sleep(_POLL)
            else:
                return

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ctrl-C: SIGINT to the whole process group; the exit code (fails on a hang)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        return self._exit_code("SIGINT", timeout)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """``kill PID``: SIGTERM to this process alone; the exit code (fails on a hang)."""
        self.process.terminate()
        return self._exit_code("SIGTERM", timeout)

    def _exit_code(self, sent: str, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.process.args!r} did not exit within {timeout:g} s of {sent}:\n"
                f"{self.output()[-3000:]}"
            ) from None

    def stop(self) -> None:
        """Stop the process and everything left in its group, whatever state it is in."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        # Workers orphaned by a leader that died first are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def spawned(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Spawned]:
    """Run ``argv`` (``python`` is this interpreter) until the block ends, then stop it."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
        running = Spawned(process, output)
        try:
            yield running
        finally:
            running.stop()


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(remote_port: int) -> set[str]:
    """Inodes of the established TCP connections to ``remote_port`` on this host."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rpartition(":")[2], 16) == remote_port:
                    inodes.add(fields[9])
    return inodes


def processes_connected_to(port: int, root: int) -> set[int]:
    """The processes below ``root`` holding a TCP connection to ``port`` (Linux /proc)."""
    inodes = _socket_inodes(port)
    connected: set[int] = set()
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        connected.add(pid)
    return connected


def descendants(root: int) -> set[int]:
    """The live processes below ``root`` (Linux /proc)."""
    return {pid for pid in _descendants(root) if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def server_processes(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are live Redis/Valkey server processes."""
    found: set[int] = set()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if _alive(pid) and (b"redis-server" in command or b"valkey-server" in command):
            found.add(pid)
    return found


def still_running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still alive (not zombies)."""
    return {pid for pid in pids if _alive(pid)}


def burst(url: str, requests: Sequence[Mapping[str, str]]) -> list[httpx.Response]:
    """One POST to ``url`` per header mapping in ``requests``, released together from as
    many threads."""
    count = len(requests)
    start = threading.Barrier(count)
    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=count)) as client:

        def post(headers: Mapping[str, str]) -> httpx.Response:
            start.wait(timeout=10.0)
            return client.post(url, headers=dict(headers))

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(post, requests))


def warm_up_workers(
    url: str, server: Spawned, store_port: int, workers: int, prefix: str
) -> set[int]:
    """Send requests of throwaway users until ``workers`` processes have talked to the
    store (each connects on its first limited request); their pids. Bounded."""
    deadline = time.monotonic() + START_TIMEOUT
    for round_ in range(1_000_000):
        connected = processes_connected_to(store_port, server.pid)
        if len(connected) >= workers:
            return connected
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {len(connected)} of {workers} workers served a request:\n"
                f"{server.output()[-3000:]}"
            )
        burst(url, [{"X-User-ID": f"{prefix}-{round_}-{index}"} for index in range(8)])
    raise AssertionError("unreachable")


def assert_exact_admission(responses: Sequence[httpx.Response], limit: int) -> None:
    """Exactly ``limit`` admitted; every answer carries the RateLimit fields, every refusal
    ``Retry-After`` and a problem+json body naming the policy."""
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * limit + [429] * (len(responses) - limit)
    for response in responses:
        members = ratelimit_members(response.headers)
        assert list(members) == ["login"]
        assert (members["login"]["q"], members["login"]["w"]) == (limit, 60)
        if response.status_code == 429:
            assert members["login"]["r"] == 0
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert response.headers["content-type"] == "application/problem+json"
            problem = json.loads(response.content)
            assert (problem["status"], problem["violated-policies"]) == (429, ["login"])
    remaining = sorted(
        int(str(ratelimit_members(response.headers)["login"]["r"]))
        for response in responses
        if response.status_code == 200
    )
    assert remaining == list(range(limit))


def example_argv(server: Literal["gunicorn", "uvicorn"], target: str, port: int) -> list[str]:
    """The command line that serves the docs/examples app ``target`` (``module:app``) with
    two worker processes on ``port``."""
    if server == "gunicorn":
        return [
            *("python", "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}"),
            *("--chdir", str(EXAMPLES), target),
        ]
    return [
        *("python", "-m", "uvicorn", target, "--app-dir", str(EXAMPLES)),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-access-log"),
    ]


def assert_example_shares_one_limit(
    server: Literal["gunicorn", "uvicorn"], target: str, redis_url: str, redis_port: int
) -> None:
    """The README's example app ``target``, under ``server`` with two workers sharing the
    Redis at ``redis_url``: 20 concurrent logins of one user, once both workers have served,
    admit exactly the limit of 5."""
    port = free_port()
    with spawned(example_argv(server, target, port), env={"RATEWALL_STORE": redis_url}) as app:
        url = f"http://127.0.0.1:{port}"
        app.wait_for_http(url + "/")
        warm_up_workers(url + "/login", app, redis_port, 2, "warm-up")
        user = f"user-{uuid.uuid4().hex[:8]}"
        assert_exact_admission(burst(url + "/login", [{"X-User-ID": user}] * 20), limit=5)


@contextlib.contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[str]:
    """``app`` under werkzeug's threaded WSGI server on a free loopback port; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free loopback port; its URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="none",
        http="h11",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)


def wire(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What a response put on the wire, minus what the server itself adds (``date``,
    ``server``): for comparing two integrations' answers byte for byte."""
    headers = sorted(
        (name.lower(), value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("date", "server", "connection")
    )
    return response.status_code, headers, response.content
