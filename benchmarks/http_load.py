"""A uvicorn server process and a closed-loop HTTP/1.1 load generator, for the ``asgi`` mode.

The generator is deliberately small: one keep-alive connection per concurrent caller, one
request in flight per connection (no pipelining), raw asyncio streams. A GET and the parse of
its reply cost the generator a fraction of what uvicorn spends serving it; the harness checks
that by measuring both processes' CPU time per block (see ``phases/asgi.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

from peers import package_version

HERE: Final = Path(__file__).resolve().parent
HOST: Final = "127.0.0.1"


def server_description() -> str:
    """uvicorn's version and the loop and HTTP implementations its ``auto`` setting picks in
    this environment (uvloop and httptools when importable, else asyncio and h11)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {package_version('uvicorn')} ({loop}, {http})"


class ServerStartError(RuntimeError):
    """uvicorn exited or never answered."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class UvicornServer:
    """``uvicorn --factory <factory>`` in a process of its own, one worker, no access log, the
    loop and HTTP implementations uvicorn picks, on a free loopback port.

    It runs in its own session so that a Ctrl-C in the terminal reaches only the harness,
    which then stops it (:meth:`stop`, also from ``with``).
    """

    def __init__(
        self, factory: str, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        self.factory = factory
        self._prefix = tuple(prefix)  # a command that runs the server, e.g. valgrind's
        self._env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None  # uvicorn's own messages, shown if it fails to start
        self.port = 0

    def __enter__(self) -> UvicornServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> None:
        # Another process may take the free port between the probe and uvicorn's bind: retry.
        error: ServerStartError | None = None
        for _ in range(3):
            try:
                self._start_once(timeout)
            except ServerStartError as failed:
                self.stop()
                error = failed
            except BaseException:  # Ctrl-C while it starts: no process left behind
                self.stop()
                raise
            else:
                return
        assert error is not None
        raise error

    def _start_once(self, timeout: float) -> None:
        self.port = _free_port()
        log = self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        command = [
            *self._prefix,
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            self.factory,
            "--app-dir",
            str(HERE),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            # Connections idle while the other app's blocks run; keep them open all phase.
            "--timeout-keep-alive",
            "600",
        ]
        self._process = subprocess.Popen(
            command,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace").strip()[-2000:]
                raise ServerStartError(f"uvicorn {self.factory} exited: {output}")
            if _answers(self.port):
                return
            if time.monotonic() > deadline:
                raise ServerStartError(f"uvicorn {self.factory} did not answer in {timeout:.0f} s")
            time.sleep(0.05)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server has used so far (Linux ``/proc``), else ``None``."""
        if self._process is None:
            return None
        try:
            stat = Path(f"/proc/{self._process.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self._process = self._process, None
        log, self._log = self._log, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if log is not None:
                log.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as probe:
            probe.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return probe.recv(12).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


class UnexpectedResponseError(Exception):
    """A status other than 200 or 429, or a reply the generator cannot read."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection sending ``GET /`` one request at a time.

    :meth:`hit` answers ``True`` for 200 and ``False`` for 429 (the harness's allowed and
    refused); anything else raises and the next call reconnects. It counts the 200 replies
    that carry a ``RateLimit`` field, which tells a limited app from a bare one.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._request = (
            f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: ratewall-bench\r\n"
            # The identity of apps limited on the README's Header("X-User-ID"); one field
            # more for every app alike.
            "X-User-ID: bench-user\r\n\r\n"
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.ok = 0  # 200 replies
        self.decorated = 0  # 200 replies with a RateLimit field

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self._port)

    async def hit(self, _key: str) -> bool:
        if self._writer is None:
            await self.open()
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        try:
            writer.write(self._request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            start = head.find(b"\r\ncontent-length:")
            if start < 0:
                raise UnexpectedResponseError(f"no Content-Length in {head[:200]!r}")
            end = head.index(b"\r\n", start + 2)
            await reader.readexactly(int(head[start + 17 : end]))
            status = head[9:12]
        except BaseException:
            await self.close()
            raise
        if status == b"200":
            self.ok += 1
            if b"\r\nratelimit:" in head:
                self.decorated += 1
            return True
        if status == b"429":
            return False
        await self.close()
        raise UnexpectedResponseError(f"status {status.decode(errors='replace')}")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
