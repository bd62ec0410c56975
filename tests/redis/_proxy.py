"""A small TCP fault proxy for tests: it sits on a loopback port between a client and a
real server and, on command, forwards, refuses, blackholes, resets or delays the traffic,
or switches to another server (a failover behind one address, as managed Redis does).

Threads, not asyncio, so that sync and async clients can both be tested against it from
the test's own thread. Everything is bounded: sockets poll with a short timeout and every
thread stops when the proxy closes (a context manager).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal, Self

Mode = Literal["forward", "refuse", "blackhole", "reset", "delay"]

_POLL = 0.02  # seconds: how often idle threads look at the stop flag
_LOOPBACK = "127.0.0.1"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """``127.0.0.1:<port>`` forwarding to ``target`` until told otherwise.

    * ``forward``: bytes pass both ways (after ``delay`` seconds each way in ``delay`` mode);
    * ``refuse``: nothing listens on the port (new connections are refused); open ones are
      reset;
    * ``blackhole``: nothing moves (as when packets are dropped: nothing is read, so TCP
      delivers the bytes once the fault ends); new connections wait, unconnected;
    * ``reset``: every open connection and every new one gets a TCP RST.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Mode = "forward"
        self.delay = 0.0
        self.connections_made = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"redis://{_LOOPBACK}:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, self.port))
        listener.listen(64)
        listener.settimeout(_POLL)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch fault; ``refuse`` and ``reset`` also cut every open connection."""
        with self._lock:
            was_refusing = self.mode == "refuse"
            self.mode = mode
            self.delay = delay
            if mode == "refuse" and self._listener is not None:
                self._listener.close()
                self._listener = None
            if was_refusing and mode != "refuse":
                self._listen()
            if mode in ("refuse", "reset"):
                self._cut_all()

    def switch(self, target: tuple[str, int]) -> None:
        """Send new connections to ``target``; open ones stay where they are."""
        self.target = target

    def _cut_all(self) -> None:
        open_sockets, self._open = self._open, set()
        for sock in open_sockets:
            _reset(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(_POLL)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                mode = self.mode
                if mode == "reset":
                    _reset(client)
                    continue
                self.connections_made += 1
                self._open.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        server: socket.socket | None = None
        try:
            while self.mode == "blackhole" and not self._stop.is_set():
                time.sleep(_POLL)
            server = socket.create_connection(self.target, timeout=1.0)
            with self._lock:
                self._open.add(server)
            self._pump(client, server)
        except (OSError, ValueError):  # a socket cut by set_mode() or close() meanwhile
            pass
        finally:
            with self._lock:
                self._open.discard(client)
                if server is not None:
                    self._open.discard(server)
            with contextlib.suppress(OSError):
                client.close()
            if server is not None:
                with contextlib.suppress(OSError):
                    server.close()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        sockets = [client, server]
        while not self._stop.is_set():
            if self.mode == "blackhole":
                time.sleep(_POLL)
                continue
            readable, _, _ = select.select(sockets, [], [], _POLL)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if self.mode == "delay" and self.delay:
                    time.sleep(self.delay)
                (server if sock is client else client).sendall(data)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._cut_all()
        self._acceptor.join(timeout=2)
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
