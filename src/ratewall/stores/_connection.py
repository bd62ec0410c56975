"""The synchronous lean connection: :class:`ConnectionPool` hands each thread an idle
:class:`Connection` (blocking sockets, reused last-in first-out), and every step of a call
(resolving, connecting, the TLS and command handshakes, sending, each read) gets the time
left until the call's one deadline. See :mod:`._resp` for the protocol and the failure
rules."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from typing import Any, Final

import hiredis

from .._fork import disown_socket, reset_in_child
from ._resp import (
    Endpoint,
    ReplyError,
    Script,
    StoreConnectionError,
    StoreTimeoutError,
    check_handshake,
    checked,
    pack,
    wrong_server,
)

__all__ = ["Connection", "ConnectionPool"]


# A socket's timeout is changed (one system call) only when the time left differs from it
# by more than this: a call on a pooled connection then costs no extra system call, and an
# operation can end at most this late after the call's deadline.
_TIMEOUT_SLACK: Final = 0.001


_monotonic: Final = time.monotonic


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (``time.monotonic()``), or TimeoutError if none is left."""
    left = deadline - _monotonic()
    if left <= 0:
        raise TimeoutError("no time left before the call's deadline")
    return left


def _resolve(host: str, port: int, deadline: float) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for a TCP connection, within the deadline.

    The C resolver cannot be interrupted and takes its own timeouts (seconds per server and
    attempt), so a name is resolved in a daemon thread and waited for only until the
    deadline; a resolution still hanging then finishes (or not) on its own, holding nothing
    but that thread. Addresses (``127.0.0.1``, ``::1``) are converted here at once. Nothing
    is cached: after a failover the name may lead elsewhere."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    outcome: list[list[tuple[Any, ...]] | OSError] = []
    finished = threading.Event()

    def resolve() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            outcome.append(error)
        finally:
            finished.set()

    threading.Thread(target=resolve, name="ratewall-resolve", daemon=True).start()
    if not finished.wait(_time_left(deadline)):
        raise TimeoutError(f"resolving {host!r} took longer than the store timeout")
    result = outcome[0]
    if isinstance(result, OSError):
        raise result
    return result


def _connect_tcp(host: str, port: int, deadline: float) -> socket.socket:
    """A connected TCP socket to the first address of ``host`` that accepts, by the deadline."""
    error: OSError | None = None
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(address)
        except OSError as failure:
            sock.close()
            if isinstance(failure, TimeoutError):
                raise
            error = failure
            continue
        return sock
    raise error or OSError(f"no address found for {host!r}")


class Connection:
    """One blocking socket with a hiredis reader. Not thread-safe: the pool lends it out.

    Every operation takes the deadline of the call it serves (``time.monotonic()`` based):
    name resolution, connecting, the TLS and command handshakes, each command and each
    read get the time left, so a call ends by its deadline whatever step is slow."""

    __slots__ = ("_reader", "_sock", "_timeout", "_unchanged_below", "used")

    def __init__(self, endpoint: Endpoint, deadline: float) -> None:
        self.used = False
        self._reader = hiredis.Reader()
        # A fresh call (see call()) sends with the socket's timeout as it is unless it is
        # shorter than this: the store timeout less the slack.
        self._unchanged_below = endpoint.timeout - _TIMEOUT_SLACK
        sock: socket.socket | None = None
        try:
            if endpoint.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_time_left(deadline))
                sock.connect(endpoint.path)
            else:
                assert endpoint.host is not None
                sock = _connect_tcp(endpoint.host, endpoint.port, deadline)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if endpoint.ssl_context is not None:
                    sock.settimeout(_time_left(deadline))  # the TLS handshake's bound
                    sock = endpoint.ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
            self._timeout = _time_left(deadline)
            sock.settimeout(self._timeout)
            self._sock = sock
            for command in endpoint.handshake():
                check_handshake(command, self.call(pack(command), deadline))
        except BaseException as error:
            # A refused password, a TLS failure, a timeout: the socket goes now, not when
            # the garbage collector finds it (a retrying caller would pile them up).
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            if isinstance(error, TimeoutError) and not isinstance(error, StoreTimeoutError):
                raise StoreTimeoutError(
                    f"connecting to the store took longer than the {endpoint.timeout}s timeout"
                ) from error
            raise
        self.used = False  # the handshake does not count: only calls made for the limiter

    def call(self, packed: bytes, deadline: float, fresh: bool = False) -> Any:
        """Send one packed command and return its reply (a ReplyError is returned, not
        raised), by ``deadline``.

        Before each socket operation the socket gets the time left (see
        :data:`_TIMEOUT_SLACK`); the tests are written out rather than called, as they run
        on every decision. ``fresh`` says that the deadline was set just now, the whole
        store timeout away (the pool's first attempt on a pooled connection): the time left
        is then the timeout, so the send needs no clock, only a socket timeout no shorter
        than the timeout less the slack (a previous call may have shortened it). That is
        one clock read and one test less per decision (see benchmarks/README.md,
        "Two commits side by side")."""
        try:
            sock = self._sock
            if fresh:
                if self._timeout < self._unchanged_below:
                    left = deadline - _monotonic()
                    if left <= 0:
                        raise TimeoutError("no time left before the call's deadline")
                    sock.settimeout(left)
                    self._timeout = left
            else:
                left = deadline - _monotonic()
                if left <= 0:
                    raise TimeoutError("no time left before the call's deadline")
                if not -_TIMEOUT_SLACK <= left - self._timeout <= _TIMEOUT_SLACK:
                    sock.settimeout(left)
                    self._timeout = left
            sock.sendall(packed)
            reader = self._reader
            reply = reader.gets()
            while reply is False:
                left = deadline - _monotonic()
                if left <= 0:
                    raise TimeoutError("no time left before the call's deadline")
                # One-sided: the send gave the socket at most the time left then (plus the
                # slack), and the time left only shrinks since.
                if self._timeout - left > _TIMEOUT_SLACK:
                    sock.settimeout(left)
                    self._timeout = left
                chunk = sock.recv(65536)
                if not chunk:
                    raise StoreConnectionError("the store closed the connection")
                reader.feed(chunk)
                reply = reader.gets()
        except TimeoutError as error:
            self.close()
            raise StoreTimeoutError("the store did not answer in time") from error
        except OSError:
            self.close()
            raise
        self.used = True
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def disown(self) -> None:
        """In a forked child: let go of the parent's socket (see :mod:`ratewall._fork`)."""
        disown_socket(self._sock)


class ConnectionPool:
    """Idle connections, reused last-in first-out; thread-safe without a lock (list.pop and
    list.append are atomic). A forked child starts with no connections of its own."""

    def __init__(self, endpoint: Endpoint, script: Script, max_idle: int = 64) -> None:
        self.endpoint = endpoint
        self._timeout = endpoint.timeout
        self.script = script
        self._idle: list[Connection] = []
        self._max_idle = max_idle
        self._closed = False
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        # Connections lent out at the fork belong to threads that do not exist here: only
        # the idle ones are still referenced.
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.disown()

    def run_script(self, argc: int, body: bytes, script: Script | None = None) -> Any:
        """Run the script (the pool's, or ``script``) on ``body`` (see :class:`Script`) and
        return its reply, within one deadline (the store timeout) for every step:
        connecting, the script's recovery, the fresh try on a dead pooled connection."""
        deadline = _monotonic() + self._timeout
        if script is None:
            script = self.script
        step = script.first_step()
        packed = script.command(step, argc, body)
        try:
            connection = self._idle.pop()
            fresh = True  # see Connection.call
        except IndexError:
            connection = Connection(self.endpoint, deadline)  # connecting took some time
            fresh = False
        try:
            try:
                reply = connection.call(packed, deadline, fresh)
            except (StoreConnectionError, ConnectionResetError, BrokenPipeError):
                if not connection.used:
                    raise
                # A pooled connection found dead (server restart, idle timeout): one fresh try.
                connection = Connection(self.endpoint, deadline)
                reply = connection.call(packed, deadline)
            if isinstance(reply, ReplyError):
                # Not loaded on this server, or no functions here: at most two more steps.
                next_step = script.next_step(step, reply)
                while next_step is not None:
                    step = next_step
                    reply = connection.call(script.command(step, argc, body), deadline)
                    next_step = script.next_step(step, reply)
                drop = wrong_server(reply)
            else:
                drop = False
        except BaseException:
            connection.close()
            raise
        # _release, written out: the usual reply is no error, and tested as such only once.
        if drop or self._closed or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle.append(connection)
        return checked(reply)

    def _release(self, connection: Connection, reply: Any) -> None:
        """Pool ``connection`` again after ``reply``, or close it (see :data:`_WRONG_SERVER`)."""
        if self._closed or len(self._idle) >= self._max_idle or wrong_server(reply):
            connection.close()
        else:
            self._idle.append(connection)

    def command(self, *command: str | int) -> Any:
        """Send one plain command (``PING``) on a pooled connection; its reply, raised if it
        is an error."""
        deadline = time.monotonic() + self.endpoint.timeout
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = Connection(self.endpoint, deadline)
        try:
            reply = connection.call(pack(command), deadline)
        except BaseException:
            connection.close()
            raise
        self._release(connection, reply)
        return checked(reply)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
