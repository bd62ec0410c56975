"""A lean RESP2 client for the one thing the limiter sends: ``EVALSHA`` (``EVAL`` on NOSCRIPT).

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
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

__all__ = ["AsyncConnection", "ConnectionPool", "Endpoint", "ReplyError", "StoreTimeoutError"]

ReplyError = hiredis.ReplyError


_TIMEOUTS_BEFORE_RECONNECT = 3


class StoreTimeoutError(TimeoutError):
    """The store did not answer within the timeout."""


class StoreConnectionError(ConnectionError):
    """The connection to the store failed or closed mid-call."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, parsed from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    host: str | None
    port: int
    path: str | None  # unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int
    timeout: float

    @classmethod
    def from_url(cls, url: str, timeout: float) -> Endpoint:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
            return cls(None, 0, parts.path, False, username, password, db, timeout)
        path = parts.path.strip("/")
        db = int(path) if path else int(query.get("db", ["0"])[0])
        return cls(
            parts.hostname or "localhost",
            parts.port or 6379,
            None,
            parts.scheme == "rediss",
            username,
            password,
            db,
            timeout,
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
        commands.append(("CLIENT", "SETNAME", "ratewall"))
        return commands


def _pack(command: Sequence[str | int]) -> bytes:
    """hiredis' RESP encoder (its type stub wrongly declares a 1-tuple parameter)."""
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


def _check(reply: Any) -> Any:
    if isinstance(reply, ReplyError):
        raise reply
    return reply


class Script:
    """A script's text, its SHA1, and its EVALSHA/EVAL commands."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def evalsha(self, keys: Sequence[str], args: Sequence[int | str]) -> bytes:
        return _pack(("EVALSHA", self.sha, len(keys), *keys, *args))

    def eval(self, keys: Sequence[str], args: Sequence[int | str]) -> bytes:
        return _pack(("EVAL", self.text, len(keys), *keys, *args))


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


class Connection:
    """One blocking socket with a hiredis reader. Not thread-safe: the pool lends it out."""

    __slots__ = ("_reader", "_sock", "used")

    def __init__(self, endpoint: Endpoint) -> None:
        self.used = False
        self._reader = hiredis.Reader()
        try:
            if endpoint.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(endpoint.timeout)
                sock.connect(endpoint.path)
            else:
                assert endpoint.host is not None
                sock = socket.create_connection((endpoint.host, endpoint.port), endpoint.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if endpoint.tls:
                    sock = ssl.create_default_context().wrap_socket(
                        sock, server_hostname=endpoint.host
                    )
        except TimeoutError as error:
            raise StoreTimeoutError(
                f"connecting to the store timed out after {endpoint.timeout}s"
            ) from error
        sock.settimeout(endpoint.timeout)
        self._sock = sock
        for command in endpoint.handshake():
            _check(self.call(_pack(command)))
        self.used = False  # the handshake does not count: only calls made for the limiter

    def call(self, packed: bytes) -> Any:
        """Send one packed command and return its reply (a ReplyError is returned, not raised)."""
        try:
            self._sock.sendall(packed)
            reader = self._reader
            reply = reader.gets()
            while reply is False:
                chunk = self._sock.recv(65536)
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


class ConnectionPool:
    """Idle connections, reused last-in first-out; thread-safe without a lock (list.pop and
    list.append are atomic)."""

    def __init__(self, endpoint: Endpoint, script: Script, max_idle: int = 64) -> None:
        self.endpoint = endpoint
        self.script = script
        self._idle: list[Connection] = []
        self._max_idle = max_idle
        self._closed = False

    def run_script(self, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        packed = self.script.evalsha(keys, args)
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = Connection(self.endpoint)
        try:
            try:
                reply = connection.call(packed)
            except (StoreConnectionError, ConnectionResetError, BrokenPipeError):
                if not connection.used:
                    raise
                # A pooled connection found dead (server restart, idle timeout): one fresh try.
                connection = Connection(self.endpoint)
                reply = connection.call(packed)
            if _is_noscript(reply):
                reply = connection.call(self.script.eval(keys, args))
        except BaseException:
            connection.close()
            raise
        if self._closed or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle.append(connection)
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
        self._owner._lost(exc)


class AsyncConnection:
    """One pipelined asyncio connection: calls are written as they come and their replies
    matched in order. Reconnects lazily after any failure."""

    def __init__(self, endpoint: Endpoint, script: Script) -> None:
        self.endpoint = endpoint
        self.script = script
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Future[None] | None = None
        self._used = False  # a call has succeeded on the current socket
        self._timeouts = 0  # consecutive timed-out calls on the current socket

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        self._reader = hiredis.Reader()
        if endpoint.path is not None:
            connect = loop.create_unix_connection(lambda: _Protocol(self), endpoint.path)
        else:
            context = ssl.create_default_context() if endpoint.tls else None
            connect = loop.create_connection(
                lambda: _Protocol(self), endpoint.host or "localhost", endpoint.port, ssl=context
            )
        try:
            transport, _ = await asyncio.wait_for(connect, endpoint.timeout)
        except TimeoutError as error:
            raise StoreTimeoutError(
                f"connecting to the store timed out after {endpoint.timeout}s"
            ) from error
        sock = transport.get_extra_info("socket")
        if sock is not None and endpoint.path is None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport
        for command in endpoint.handshake():
            _check(await self._call(_pack(command)))

    async def _ensure(self) -> None:
        transport = self._transport
        if transport is not None:
            if not transport.is_closing():
                return
            # The server closed it (EOF seen, connection_lost not yet delivered).
            self._fail(StoreConnectionError("the store closed the connection"))
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        await asyncio.shield(self._connecting)

    def _connected(self, future: asyncio.Future[None]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved here; the awaiting callers see it too

    def _call(self, packed: bytes) -> asyncio.Future[Any]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise StoreConnectionError("the connection to the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        transport.write(packed)
        return future

    async def run_script(self, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.endpoint.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._ensure()
                used = self._used
                try:
                    reply = await self._call(self.script.evalsha(keys, args))
                except StoreConnectionError:
                    if not used:
                        raise
                    # The connection had worked and died since (server restart, idle
                    # timeout): one fresh try, as the sync pool does.
                    await self._ensure()
                    reply = await self._call(self.script.evalsha(keys, args))
                self._used = True
                if _is_noscript(reply):
                    reply = await self._call(self.script.eval(keys, args))
        except TimeoutError as error:
            # The late reply, if it comes, is matched to this call's (cancelled) future and
            # dropped, so the other calls pipelined on the connection are unaffected. Only a
            # connection that keeps timing out is given up (a blackholed server).
            self._timeouts += 1
            if self._timeouts >= _TIMEOUTS_BEFORE_RECONNECT:
                self._fail(StoreTimeoutError("the store stopped answering"))
            raise StoreTimeoutError("the store did not answer in time") from error
        self._timeouts = 0
        return _check(reply)

    def _received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        reply = reader.gets()
        while reply is not False:
            if pending:
                future = pending.popleft()
                if not future.done():
                    future.set_result(reply)
            reply = reader.gets()

    def _lost(self, exc: Exception | None) -> None:
        self._fail(StoreConnectionError(f"the store connection was lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        transport, self._transport = self._transport, None
        self._used = False
        self._timeouts = 0
        pending, self._pending = self._pending, collections.deque()
        for future in pending:
            if not future.done():
                future.set_exception(error)
        if transport is not None:
            transport.abort()

    async def aclose(self) -> None:
        self._fail(StoreConnectionError("the store connection was closed"))
        # transport.abort() closes the socket in a callback on the next loop turn: yield
        # once so the connection is really gone when aclose() returns.
        await asyncio.sleep(0)
