"""Running ``ratewall serve`` as a subprocess for tests: free loopback ports, waiting for
every worker to say it is ready, and a SIGTERM at the end whose exit status is checked."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

Code = rls_pb2.RateLimitResponse.Code


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """``ratewall serve ARGS`` on free ports; ``with Service(...) as service:``."""

    def __init__(self, *args: str, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.workers = workers
        self.command = [
            sys.executable,
            "-m",
            "ratewall",
            "serve",
            *args,
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--workers",
            str(workers),
        ]
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Self:
        self.process = subprocess.Popen(
            self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=self.env,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.wait_for("ready", count=self.workers)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                self.stop()  # a service that never got ready must not outlive its test
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                left = deadline - time.monotonic()
                assert self.process is not None
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {text!r} from the service: {self.lines}")
                self._changed.wait(min(left, 0.1))

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._reader.join(5)
            if self.process.stderr is not None:
                self.process.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        code = self.stop()
        if exc_type is None:
            assert code == 0, self.lines


def rls_request(domain: str, *descriptors: Any, hits: int = 0) -> Any:
    """A RateLimitRequest; each descriptor is a list of (key, value) pairs, or a pair of
    that list and the descriptor's own hits_addend."""
    request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for given in descriptors:
        entries, own = given if isinstance(given, tuple) else (given, None)
        added = request.descriptors.add(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
        )
        if own is not None:
            added.hits_addend.value = own
    return request


def rls_stub(target: str) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(target)
    return channel, rls_pb2_grpc.RateLimitServiceStub(channel)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)
