"""A lean RESP2 client for the one thing the limiter sends: its script call (``FCALL``, or
``EVALSHA`` where the server has no functions; see :class:`Script`).

redis-py spends ~200 Python calls per command (pool checkout with a health check, socket
blocking-mode toggles, fork checks, observability hooks). A limiter's round trip is its
whole cost, so standalone/TLS/unix connections use this module instead: commands packed
and replies parsed by hiredis, sockets configured once, connections reused LIFO.

* Sync: :class:`ConnectionPool` hands each thread an idle :class:`Connection`.
* Async: one :class:`AsyncConnection` pipelines every in-flight call over one socket
  (replies come back in order); the store's batching keeps the number of calls small.

Failure rules (the limiter's, not a cache's): every call has one deadline (the store
timeout); nothing is retried, except that a pooled connection found dead on first use (the
server restarted, or closed an idle connection) is replaced once. In that rare case the
script may have run before the connection died, so a request can be counted twice — the safe
direction for a limiter (never counted zero times, never over-admitted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import hiredis

from .._fork import abandon, disown_socket, disown_transport, reset_in_child
from .._urls import parse_url

__all__ = [
    "AsyncConnection",
    "ConnectionPool",
    "Endpoint",
    "ReplyError",
    "Script",
    "ScriptCall",
    "StoreConnectionError",
    "StoreProtocolError",
    "StoreTimeoutError",
    "bulk",
]

ReplyError = hiredis.ReplyError


_TIMEOUTS_BEFORE_RECONNECT = 3

# Replies that say "this server cannot serve you now": a replica (READONLY: a failover
# demoted the server this connection reached, behind an address that now leads to the new
# primary), a server loading its data set (LOADING), a replica cut from its primary
# (MASTERDOWN). The call fails (the policy's failure mode answers), and so that the next
# call does not meet the same server, the connection is dropped, as redis-py does.
_WRONG_SERVER: Final = ("READONLY", "LOADING", "MASTERDOWN")


def wrong_server(reply: Any) -> bool:
    """Whether ``reply`` is an error after which the connection must not be reused."""
    return isinstance(reply, ReplyError) and str(reply).startswith(_WRONG_SERVER)


class StoreTimeoutError(TimeoutError):
    """The store did not answer within the timeout."""


class StoreConnectionError(ConnectionError):
    """The connection to the store failed or closed mid-call."""


class StoreProtocolError(Exception):
    """The store answered something the limiter cannot read."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: a ``redis://``, ``rediss://`` or ``unix://`` URL's parts
    (parsed by :func:`ratewall._urls.parse_url`) and the store timeout."""

    host: str | None
    port: int
    path: str | None  # unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int
    timeout: float
    ssl_context: ssl.SSLContext | None = None  # built once, from the URL's TLS options

    @classmethod
    def from_url(cls, url: str, timeout: float) -> Endpoint:
        parsed = parse_url(url)
        if parsed.kind != "redis":
            raise ValueError(f"{parsed!r} is not a standalone server's URL")
        return cls(
            parsed.host,
            parsed.port,
            parsed.path,
            parsed.tls is not None,
            parsed.username,
            parsed.password,
            parsed.db,
            timeout,
            parsed.tls.context() if parsed.tls is not None else None,
        )

    def handshake(self) -> list[tuple[str | int, ...]]:
        commands: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(_SETNAME)
        return commands


def _pack(command: Sequence[str | int]) -> bytes:
    """hiredis' RESP encoder (its type stub wrongly declares a 1-tuple parameter)."""
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


def _check(reply: Any) -> Any:
    if isinstance(reply, ReplyError):
        raise reply
    return reply


_SETNAME: Final = ("CLIENT", "SETNAME", "ratewall")


def _check_handshake(command: tuple[str | int, ...], reply: Any) -> None:
    """Raise a handshake command's error, except a refused ``CLIENT SETNAME``: the name only
    labels the connection in ``CLIENT LIST``, and a user whose ACL lacks ``client|setname``
    (the least a limiter needs has no reason to include it) must still connect."""
    if command == _SETNAME and isinstance(reply, ReplyError) and str(reply).startswith("NOPERM"):
        return
    _check(reply)


# The steps of one script call. It starts with FCALL (or EVALSHA once the server is known
# to lack functions) and takes at most three more round trips to recover: FCALL, FUNCTION
# LOAD, FCALL again; or EVALSHA, EVAL; or, when FUNCTION LOAD is refused, EVALSHA and EVAL
# after it. Every step is sent on the same connection, under the call's one deadline.
FCALL, LOAD, FCALL_AGAIN, EVALSHA, EVAL = range(5)


class Script:
    """A script's text, its SHA1, and the commands that run it.

    On servers with functions (Redis 7+, Valkey) the script is a function library: FUNCTION
    LOAD runs its definitions once, and each FCALL runs only ``run``. As a plain script
    (EVALSHA, re-sent as EVAL on NOSCRIPT) every call redefines all of it first: a one-key
    decision then costs the server three times the instructions (255,000 against 86,000 for
    a fixed window on Redis 7.0 here, counted by callgrind). The library
    and the function are named after the script's hash, so that two ratewall versions
    sharing a server during a rolling deploy never replace each other's code; each version
    loads its library once per server (a library is a few kB; ``FUNCTION DELETE
    ratewall_<hash>`` removes an old one).

    The server tells which way works, and the first call finds out (:meth:`next_step`):
    "Function not found" (a new server, FUNCTION FLUSH, a restart without persistence, a
    failover) loads the library and calls again; a server without functions (Redis 6) or a
    user whose ACL denies FCALL or FUNCTION LOAD switches this script to EVALSHA for good.

    A command is built around a *body*: the RESP bulk strings of numkeys, the keys and the
    arguments (``argc`` of them), already encoded by the caller, so that the same body serves
    every step."""

    __slots__ = (
        "_eval_head",
        "_evalsha_head",
        "_fcall_head",
        "_load",
        "functions",
        "library",
        "sha",
        "text",
    )

    def __init__(self, text: str, *, functions: bool = True) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._evalsha_head = b"$7\r\nEVALSHA\r\n" + bulk(self.sha)
        self._eval_head = b"$4\r\nEVAL\r\n" + bulk(text)
        self.library = f"ratewall_{self.sha[:16]}"
        self._fcall_head = b"$5\r\nFCALL\r\n" + bulk(self.library)
        self._load = _pack(("FUNCTION", "LOAD", _library_code(text, self.library)))
        # Cleared when the server turns out to lack functions (or to deny them to this user).
        self.functions = functions

    def first_step(self) -> int:
        return FCALL if self.functions else EVALSHA

    def command(self, step: int, argc: int, body: bytes) -> bytes:
        """The packed command of ``step`` for ``body``."""
        if step in (FCALL, FCALL_AGAIN):
            return b"*%d\r\n%b%b" % (argc + 2, self._fcall_head, body)
        if step == EVALSHA:
            return b"*%d\r\n%b%b" % (argc + 2, self._evalsha_head, body)
        if step == EVAL:
            return b"*%d\r\n%b%b" % (argc + 2, self._eval_head, body)
        return self._load

    def next_step(self, step: int, reply: Any) -> int | None:
        """What to send after ``step`` answered ``reply``, or ``None``: the call's reply is
        ``reply``. Only the answers that mean "not loaded here" or "not available here" lead
        on; an error of the script itself is the call's reply."""
        if step == LOAD:
            if not isinstance(reply, ReplyError) or "already exists" in str(reply):
                return FCALL_AGAIN  # loaded now, or by another client meanwhile
            if wrong_server(reply):
                return None  # a replica refusing writes says nothing about functions
            self.functions = False  # refused (ACL, out of memory, ...): plain scripts then
            return EVALSHA
        if not isinstance(reply, ReplyError):
            return None
        message = str(reply)
        if step == FCALL:
            if message.startswith("ERR Function not found"):
                return LOAD
            lowered = message.lower()
            if message.startswith("ERR unknown command") or (
                message.startswith("NOPERM") and "fcall" in lowered
            ):
                self.functions = False
                return EVALSHA
        elif step == EVALSHA and message.startswith("NOSCRIPT"):
            return EVAL
        return None


_RUN_CALL: Final = "return run(KEYS, ARGV)"


def _library_code(text: str, library: str) -> str:
    """The script as a function library: its definitions, then ``run`` registered under the
    library's name instead of called (the script's last statement, ``return run(KEYS, ARGV)``)."""
    definitions, found, rest = text.rpartition(_RUN_CALL)
    if not found or rest.strip():
        raise ValueError(f"the script must end with {_RUN_CALL!r}")
    return f"#!lua name={library}\n{definitions}redis.register_function('{library}', run)\n"


def bulk(value: str | int) -> bytes:
    """One RESP bulk string (what the server sees as one argument)."""
    encoded = value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(encoded), encoded)


# A socket's timeout is changed (one system call) only when the time left differs from it
# by more than this: a call on a pooled connection then costs no extra system call, and an
# operation can end at most this late after the call's deadline.
_TIMEOUT_SLACK: Final = 0.001


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (``time.monotonic()``), or TimeoutError if none is left."""
    left = deadline - time.monotonic()
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

    __slots__ = ("_reader", "_sock", "_timeout", "used")

    def __init__(self, endpoint: Endpoint, deadline: float) -> None:
        self.used = False
        self._reader = hiredis.Reader()
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
                _check_handshake(command, self.call(_pack(command), deadline))
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

    def _bound(self, deadline: float) -> None:
        """Give the socket's next operation the time left until ``deadline``."""
        left = _time_left(deadline)
        if abs(left - self._timeout) > _TIMEOUT_SLACK:
            self._sock.settimeout(left)
            self._timeout = left

    def call(self, packed: bytes, deadline: float) -> Any:
        """Send one packed command and return its reply (a ReplyError is returned, not
        raised), by ``deadline``."""
        try:
            sock = self._sock
            self._bound(deadline)
            sock.sendall(packed)
            reader = self._reader
            reply = reader.gets()
            while reply is False:
                self._bound(deadline)
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
        deadline = time.monotonic() + self.endpoint.timeout
        if script is None:
            script = self.script
        step = script.first_step()
        packed = script.command(step, argc, body)
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = Connection(self.endpoint, deadline)
        try:
            try:
                reply = connection.call(packed, deadline)
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
        except BaseException:
            connection.close()
            raise
        self._release(connection, reply)
        return _check(reply)

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
            reply = connection.call(_pack(command), deadline)
        except BaseException:
            connection.close()
            raise
        self._release(connection, reply)
        return _check(reply)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: AsyncConnection) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self, exc)


class _Waiter(Protocol):
    """What waits for one reply on the connection: a future, or a :class:`ScriptCall`."""

    def done(self) -> bool: ...

    def set_result(self, reply: Any, /) -> None: ...

    def set_exception(self, error: BaseException, /) -> None: ...


ScriptDone = Callable[[Any, BaseException | None], None]


class ScriptCall:
    """One script call on an :class:`AsyncConnection`, driven by callbacks rather than a task
    (the batching store makes thousands a second, and a task per call costs more than the
    call's own Python work).

    It has one deadline, the store timeout, from its start: it covers connecting, loading
    the script again and the one fresh try on a connection found dead. ``done(reply, None)`` or
    ``done(None, error)`` is called exactly once, within the deadline (a ReplyError from the
    script is an error). A reply that arrives after the deadline is dropped.
    """

    __slots__ = (
        "_argc",
        "_body",
        "_connection",
        "_done",
        "_finished",
        "_loop",
        "_retried",
        "_script",
        "_step",
        "_timer",
        "_was_used",
    )

    def __init__(
        self,
        connection: AsyncConnection,
        loop: asyncio.AbstractEventLoop,
        argc: int,
        body: bytes,
        done: ScriptDone,
        script: Script | None = None,
    ) -> None:
        self._connection = connection
        self._loop = loop
        self._argc = argc
        self._body = body
        self._done = done
        self._finished = False
        self._script = connection.script if script is None else script
        self._step = self._script.first_step()
        self._retried = False
        self._was_used = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self, deadline: float | None = None) -> None:
        """Send the call; it fails at ``deadline`` (loop time), by default the store timeout
        from now (a batching caller passes its oldest waiter's, so that nobody queued behind
        calls in flight waits longer than the timeout in all)."""
        connection = self._connection
        loop = self._loop
        if deadline is None:
            deadline = loop.time() + connection.endpoint.timeout
        self._timer = loop.call_at(deadline, self._timed_out)
        if connection.ready:
            self._send()
        else:
            connection.when_connected(self)

    def _send(self) -> None:
        connection = self._connection
        self._was_used = connection.used
        connection.send(self._script.command(self._step, self._argc, self._body), self)

    def connected(self, error: BaseException | None) -> None:
        """Called by the connection once a connection attempt made for this call ends."""
        if self._finished:
            return
        if error is not None:
            self._finish(None, error)
        elif self._connection.ready:
            self._send()
        else:
            self._finish(None, StoreConnectionError("the connection to the store is closed"))

    # -- the waiter protocol: the connection hands over the reply, or the connection's end.

    def done(self) -> bool:
        return self._finished

    def set_result(self, reply: Any) -> None:
        connection = self._connection
        if isinstance(reply, ReplyError) or self._step == LOAD:
            step = self._script.next_step(self._step, reply)
            if step is not None:
                # Not loaded on this server (a flush, a restart, a failover), or no functions
                # here: the next step on the same connection, under the same deadline.
                self._step = step
                if connection.ready:
                    connection.send(self._script.command(step, self._argc, self._body), self)
                    return
                reply = StoreConnectionError("the connection to the store is closed")
            if isinstance(reply, BaseException):
                self._finish(None, reply)
                if isinstance(reply, ReplyError) and wrong_server(reply):
                    # The calls pipelined behind this one meet the same server: they fail
                    # with this error too, and the next call connects anew.
                    connection.fail(reply)
                return
        connection.used = True
        connection.timeouts = 0
        self._finish(reply, None)

    def set_exception(self, error: BaseException) -> None:
        if (
            isinstance(error, StoreConnectionError)
            and self._was_used
            and not self._retried
            and not self._connection.closed
        ):
            # The connection had worked and died since (server restart, idle timeout): one
            # fresh try, as the sync pool does.
            self._retried = True
            self._connection.when_connected(self)
            return
        self._finish(None, error)

    def _timed_out(self) -> None:
        if self._finished:
            return
        # The late reply, if it comes, is matched to this call and dropped, so the other
        # calls pipelined on the connection are unaffected. Only a connection that keeps
        # timing out is given up (a blackholed server).
        connection = self._connection
        connection.timeouts += 1
        self._finish(None, StoreTimeoutError("the store did not answer in time"))
        if connection.timeouts >= _TIMEOUTS_BEFORE_RECONNECT:
            connection.fail(StoreTimeoutError("the store stopped answering"))

    def _finish(self, reply: Any, error: BaseException | None) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self._done(reply, error)


class _Connected:
    """Waits for :meth:`AsyncConnection.when_connected` on behalf of a plain command."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future

    def connected(self, error: BaseException | None) -> None:
        if self._future.done():
            return
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(None)


class AsyncConnection:
    """One pipelined asyncio connection: calls are written as they come and their replies
    matched in order. Reconnects lazily after any failure. Must be used from one loop."""

    def __init__(self, endpoint: Endpoint, script: Script) -> None:
        self.endpoint = endpoint
        self.script = script
        self.used = False  # a call has succeeded on the current socket
        self.timeouts = 0  # consecutive timed-out calls on the current socket
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._reader = hiredis.Reader()
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._connecting: asyncio.Task[None] | None = None
        self._after_connect: list[ScriptCall | _Connected] = []
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        """Forget the parent's socket, its calls in flight and its connection attempt: all
        belong to the parent's event loop. The next call connects anew."""
        if self._transport is not None:
            disown_transport(self._transport)
        self._transport = None
        self._protocol = None
        self._reader = hiredis.Reader()
        self._pending = collections.deque()
        abandon(self._connecting)
        self._connecting = None
        self._after_connect = []
        self.used = False
        self.timeouts = 0

    @property
    def ready(self) -> bool:
        """Connected: :meth:`send` may be called."""
        transport = self._transport
        return self._connecting is None and transport is not None and not transport.is_closing()

    def send(self, packed: bytes, waiter: _Waiter) -> None:
        """Write a packed command; ``waiter`` gets its reply. Only when :attr:`ready`."""
        self._pending.append(waiter)
        cast("asyncio.Transport", self._transport).write(packed)

    def run_script(
        self,
        argc: int,
        body: bytes,
        done: ScriptDone,
        deadline: float | None = None,
        script: Script | None = None,
    ) -> None:
        """Run the script (the connection's, or ``script``) on ``body`` (see
        :class:`Script`); ``done`` gets the outcome by ``deadline`` (see
        :meth:`ScriptCall.start`). Call from the connection's loop."""
        ScriptCall(self, asyncio.get_running_loop(), argc, body, done, script).start(deadline)

    def when_connected(self, call: ScriptCall | _Connected) -> None:
        """Connect (one attempt shared by every call that needs it), then tell ``call``."""
        if self._connecting is None:
            if self.ready:
                call.connected(None)
                return
            if self._transport is not None:
                # The server closed it (EOF seen, connection_lost not yet delivered). The
                # calls in flight on it may come back here, for their fresh try.
                self.fail(StoreConnectionError("the store closed the connection"))
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        self._after_connect.append(call)

    async def _connect(self) -> None:
        error: BaseException | None = None
        try:
            await self._open()
        except Exception as failure:  # noqa: BLE001 - handed to every call that waited for it
            error = failure
        except BaseException as failure:  # cancelled by aclose(): tell the calls, then stop
            error = StoreConnectionError(f"connecting to the store was interrupted: {failure!r}")
            raise
        finally:
            self._connecting = None
            calls, self._after_connect = self._after_connect, []
            for call in calls:
                call.connected(error)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        reader = hiredis.Reader()
        if endpoint.path is not None:
            connect = loop.create_unix_connection(lambda: _Protocol(self), endpoint.path)
        else:
            connect = loop.create_connection(
                lambda: _Protocol(self),
                endpoint.host or "localhost",
                endpoint.port,
                ssl=endpoint.ssl_context,
            )
        try:
            async with asyncio.timeout(endpoint.timeout):
                transport, protocol = await connect
                sock = transport.get_extra_info("socket")
                if sock is not None and endpoint.path is None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._reader = reader
                self._transport = transport
                self._protocol = protocol
                self.used = False
                self.timeouts = 0
                for command in endpoint.handshake():
                    future: asyncio.Future[Any] = loop.create_future()
                    self.send(_pack(command), future)
                    _check_handshake(command, await future)
        except TimeoutError as error:
            self.fail(StoreTimeoutError("connecting to the store timed out"))
            raise StoreTimeoutError(
                f"connecting to the store timed out after {endpoint.timeout}s"
            ) from error
        except BaseException:
            self.fail(StoreConnectionError("connecting to the store failed"))
            raise

    def _received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        reply = reader.gets()
        while reply is not False:
            if pending:
                waiter = pending.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
            reply = reader.gets()

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        # A socket given up earlier (its loss is delivered a loop turn after the abort) must
        # not take its successor down.
        if protocol is self._protocol:
            self.fail(StoreConnectionError(f"the store connection was lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Drop the socket; every call waiting for a reply on it gets ``error``."""
        transport, self._transport = self._transport, None
        self._protocol = None
        self.used = False
        self.timeouts = 0
        pending, self._pending = self._pending, collections.deque()
        for waiter in pending:
            if not waiter.done():
                waiter.set_exception(error)
        if transport is not None:
            transport.abort()

    async def command(self, *command: str | int) -> Any:
        """Send one plain command (``PING``), connecting first if needed, within the store
        timeout; its reply, raised if it is an error."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.endpoint.timeout):
            if not self.ready:
                connected: asyncio.Future[None] = loop.create_future()
                self.when_connected(_Connected(connected))
                await connected
            future: asyncio.Future[Any] = loop.create_future()
            self.send(_pack(command), future)
            reply = await future
            if wrong_server(reply):
                self.fail(reply)
            return _check(reply)

    async def aclose(self) -> None:
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.fail(StoreConnectionError("the store connection was closed"))
        # transport.abort() closes the socket in a callback on the next loop turn: yield
        # once so the connection is really gone when aclose() returns.
        await asyncio.sleep(0)
