"""The asyncio lean connection: one :class:`AsyncConnection` pipelines every in-flight call
over one socket (replies come back in order), each call a :class:`ScriptCall` driven by
callbacks rather than a task; the store's batching keeps the number of calls small. See
:mod:`._resp` for the protocol and the failure rules."""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

import hiredis

from .._fork import abandon, disown_transport, reset_in_child
from ._resp import (
    LOAD,
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

__all__ = ["AsyncConnection", "ScriptCall"]

_TIMEOUTS_BEFORE_RECONNECT = 3


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
                    self.send(pack(command), future)
                    check_handshake(command, await future)
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
            self.send(pack(command), future)
            reply = await future
            if wrong_server(reply):
                self.fail(reply)
            return checked(reply)

    async def aclose(self) -> None:
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.fail(StoreConnectionError("the store connection was closed"))
        # transport.abort() closes the socket in a callback on the next loop turn: yield
        # once so the connection is really gone when aclose() returns.
        await asyncio.sleep(0)
