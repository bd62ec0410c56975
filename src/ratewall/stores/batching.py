"""The asyncio store on Redis/Valkey, with automatic batching: concurrent callers' decisions
share script calls (see :class:`AsyncRedisStore`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, cast

from .._calls import Call, Reply, Request, SlotCall
from .._fork import abandon, reset_in_child
from ..observer import Observer
from ._aconnection import AsyncConnection
from ._arguments import ALTERNATING, Arguments, flatten, regroup
from ._lua import SCRIPT, SLOT_SCRIPT
from ._redispy import AsyncCalls, make_client, parse_store_url
from ._resp import Endpoint, Script, StoreConnectionError, StoreProtocolError
from ._slots import key_slot, slot_parts
from .base import DEFAULT_TIMEOUT, report_store_call

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_IN_FLIGHT", "MAX_BATCH", "AsyncRedisStore"]

_log = logging.getLogger("ratewall")

#: Script calls one store keeps in flight at once, and the most calls one of them carries.
DEFAULT_MAX_IN_FLIGHT: Final = 2
DEFAULT_MAX_BATCH: Final = 512
#: The largest ``max_batch`` (the argument layout of one script call holds this many).
MAX_BATCH: Final = len(ALTERNATING)

Entry = Call | Sequence[Request]  # a single call (arun_one), or the requests of one arun
Waiter = asyncio.Future[Any]  # the reply of a single call, or the replies of an arun


class AsyncRedisStore:
    """The asyncio twin of :class:`RedisStore`, with automatic batching.

    Concurrent callers share round trips: a call made while nothing is in flight goes out at
    once (latency at low load is one round trip); under load, calls made in the same
    event-loop turn leave together at the end of it, at most ``max_in_flight`` script calls
    are in flight, and when one returns, the waiting requests (up to ``max_batch`` calls)
    go out in one script call. The script decides the requests in order, each all or
    nothing, atomically: batching changes nothing about exactness. Each caller's deadline
    starts when it calls, queued or not: a batch fails at its oldest caller's deadline, so no
    caller waits more than one timeout (plus scheduling), even behind stalled calls.

    Batches are sized to split the callers evenly between the script calls in flight: with
    two in flight, the server runs one while this process reads the other's replies and
    its callers make their next calls, so both CPUs stay busy. A lopsided pair (one call
    beside all the others) would leave each side waiting for the other.

    ``batch_window`` (seconds, default 0) is for servers that hand the loop one request per
    turn (grpc.aio does): there, concurrent callers rarely meet in one turn, so a call that
    finds another script call in flight waits up to the window for more calls to join it,
    instead of leaving at once as a second one. A call that finds nothing in flight (a
    caller alone, or one that awaits each reply) still leaves at once.

    On a standalone server the whole path runs in callbacks: a caller awaits one future, and
    a batch costs no task (see :class:`._aconnection.ScriptCall`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], int] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_window: float = 0.0,
    ) -> None:
        if max_in_flight < 1 or not 1 <= max_batch <= len(ALTERNATING):
            raise ValueError(
                f"max_in_flight must be >= 1 and max_batch in 1..{len(ALTERNATING)}, got "
                f"{max_in_flight} and {max_batch}"
            )
        if not 0.0 <= batch_window <= 1.0:
            raise ValueError(f"batch_window must be 0 to 1 seconds, got {batch_window!r}")
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = Arguments(clock)
        self._connection: AsyncConnection | None = None
        self._execute: Callable[[list[str], list[int | str], float], Awaitable[list[Reply]]]
        self._aclose: Callable[[], Awaitable[None]]
        self.slot_of: Callable[[str], int] | None = None
        self._timeout = timeout
        self._client: Any = None
        self._calls: AsyncCalls | None = None
        self._slot_script: Any = None
        if kind == "redis":
            self._connection = AsyncConnection(
                Endpoint.from_url(normalised, timeout), Script(SCRIPT)
            )
            self._slot_script = Script(SLOT_SCRIPT)
            self._aclose = self._connection.aclose
        else:
            if kind == "cluster":
                self.slot_of = key_slot
            self._use_new_client()
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._batch_window = batch_window
        self._in_flight = 0  # script calls
        self._in_flight_calls = 0
        # Waiting entries and their futures, in order; the calls they hold; how many of
        # them are arun() requests rather than single calls.
        self._entries: list[Entry] = []
        self._waiters: list[Waiter] = []
        self._since: list[float] = []  # loop time each waiting entry was queued
        # The loop the callers run on, and its clock (see _use_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_time: Callable[[], float] = time.monotonic
        self._waiting_calls = 0
        self._waiting_requests = 0
        self._flush_scheduled = False
        # Callers were just woken together by a reply: the first of them to call again is
        # not alone, the others follow within this loop turn.
        self._crowd = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._observer: Observer | None = None
        reset_in_child(self)

    def _use_new_client(self) -> None:
        """A redis-py client (Cluster, Sentinel) and the script calls made through it, each
        answered by its deadline (see :class:`._redispy.AsyncCalls`). Builds no connection:
        redis-py's asyncio clients connect (and a cluster's set itself up) on first use."""
        client = make_client(self.url, self._timeout, asynchronous=True)
        calls = AsyncCalls(client, cluster=self.slot_of is not None)
        script = client.register_script(SCRIPT)
        self._execute = lambda keys, args, deadline: calls.within(
            deadline, lambda: script(keys=keys, args=args)
        )
        self._slot_script = client.register_script(SLOT_SCRIPT)
        self._aclose = lambda: calls.aclose(self._timeout)
        self._client = client
        self._calls = calls

    def _after_fork_in_child(self) -> None:
        """Start afresh: the queued calls, their futures and tasks belong to the parent's
        event loop, and so does a redis-py asyncio client's every connection (ratewall's own
        connection resets itself)."""
        abandon(*self._tasks)
        self._tasks = set()
        self._entries, self._waiters, self._since = [], [], []
        self._loop = None
        self._waiting_calls = self._waiting_requests = 0
        self._in_flight = self._in_flight_calls = 0
        self._flush_scheduled = False
        self._crowd = False
        if self._connection is None and not self._closed:
            abandon(self._client)
            self._use_new_client()

    # -- callers -------------------------------------------------------------------------

    def arun_one(self, call: Call) -> Awaitable[Reply]:
        """The reply to one call (awaitable), sharing a round trip with concurrent callers."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._use_loop(loop)
        waiter: Waiter = loop.create_future()
        self._entries.append(call)
        self._waiters.append(waiter)
        self._since.append(self._loop_time())
        self._waiting_calls += 1
        if not self._flush_scheduled and self._in_flight < self._max_in_flight:
            self._wake()
        return waiter

    def arun(self, requests: Sequence[Request]) -> Awaitable[list[list[Reply]]]:
        """Decide each request (all or nothing) in order, sharing a round trip with the
        callers that arrive in the same event-loop turn or while a call is in flight."""
        # The requests of one call are never split: they leave together, in one script
        # call, even if they are more than max_batch calls.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._use_loop(loop)
        waiter: Waiter = loop.create_future()
        self._entries.append(requests)
        self._waiters.append(waiter)
        self._since.append(self._loop_time())
        self._waiting_calls += sum(len(request) for request in requests)
        self._waiting_requests += 1
        self._wake()
        return waiter

    def _use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Callers now run on ``loop``: read its time (what the deadlines are in) from its own
        clock. asyncio's loops tell ``time.monotonic()`` through a Python method: called
        directly, it saves a Python call on every queued call (each caller's deadline needs
        the time it was queued at). Any other loop (uvloop's) is asked as usual."""
        self._loop = loop
        if type(loop).time is asyncio.BaseEventLoop.time:
            self._loop_time = time.monotonic
        else:
            self._loop_time = loop.time

    def _wake(self) -> None:
        """A call was queued: send it now if it is alone, else at the end of this loop turn
        (callers woken together leave together), else when a script call returns. With a
        ``batch_window``, the first call queued while a script call is in flight waits up
        to the window for others (servers that hand the loop one request per turn)."""
        if self._flush_scheduled or self._in_flight >= self._max_in_flight:
            return
        window = self._batch_window
        if window and self._in_flight and len(self._entries) == 1:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(window, self._scheduled_flush)
        elif not self._in_flight and len(self._entries) == 1 and not self._crowd:
            # Alone: no one to share a round trip with, so no reason to wait a loop turn.
            self._flush()
        else:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    # -- batches -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._crowd = False
        while self._entries and self._in_flight < self._max_in_flight:
            if self._closed:
                self._fail(self._waiters, _closed_error())
                self._entries, self._waiters, self._since = [], [], []
                self._waiting_calls = self._waiting_requests = 0
                return
            # An even share of every call in flight or waiting, per script call.
            share = -(-(self._in_flight_calls + self._waiting_calls) // self._max_in_flight)
            size = min(share, self._max_batch)
            entries = self._entries
            if not self._waiting_requests:
                count = min(size, len(entries))
                calls = count
                requests = 0
            else:
                count = calls = requests = 0
                for entry in entries:
                    taken = sum(len(request) for request in _requests(entry))
                    if count and calls + taken > size:
                        break
                    count += 1
                    calls += taken
                    requests += type(entry) is not Call
            batch, self._entries = entries[:count], entries[count:]
            waiters, self._waiters = self._waiters[:count], self._waiters[count:]
            # The batch fails when its oldest caller's timeout runs out: a caller queued
            # behind calls in flight waits at most the timeout in all, not twice it.
            deadline = self._since[0] + self._timeout
            del self._since[:count]
            self._waiting_calls -= calls
            self._waiting_requests -= requests
            self._in_flight += 1
            self._in_flight_calls += calls
            if self._connection is not None:
                self._send(batch, waiters, calls, requests, deadline)
            else:
                task = asyncio.get_running_loop().create_task(
                    self._send_through_client(batch, waiters, calls, deadline)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _send(
        self,
        entries: list[Entry],
        waiters: list[Waiter],
        calls: int,
        requests: int,
        deadline: float,
    ) -> None:
        """One script call on ratewall's own connection; ``done`` hands out the replies."""
        try:
            if requests:
                flat = [request for entry in entries for request in _requests(entry)]
                argc, body = self._arguments.pack(*flatten(flat))
            elif calls == 1:
                argc, body = self._arguments.pack_one(cast("Call", entries[0]))
            else:
                argc, body = self._arguments.pack(cast("list[Call]", entries), ALTERNATING)
        except Exception as error:  # noqa: BLE001 - a flush runs in a loop callback: never leave callers waiting
            self._in_flight -= 1
            self._in_flight_calls -= calls
            self._fail(waiters, error)
            return

        observer = self._observer
        started = time.perf_counter() if observer is not None else 0.0

        def done(reply: Any, error: BaseException | None) -> None:
            self._in_flight -= 1
            self._in_flight_calls -= calls
            if error is None and (type(reply) is not list or len(reply) != calls):
                error = StoreProtocolError(f"the script answered {calls} calls with {reply!r}")
            if observer is not None:
                # report_store_call() written out: one Python call less per round trip,
                # which for a lone caller is one per decision (the metrics budget).
                try:
                    observer.on_store_call(time.perf_counter() - started, calls, error)
                except Exception:  # noqa: BLE001 - an observer's bug must not fail the callers
                    _log.exception("ratewall observer failed on a store call")
            if error is not None:
                self._fail(waiters, error)
            elif requests:
                self._deliver_requests(entries, waiters, reply)
            else:
                for waiter, one in zip(waiters, reply, strict=True):
                    if not waiter.done():
                        waiter.set_result(one)
            if calls > 1:
                self._crowd = True
            if self._entries and not self._flush_scheduled:
                # Two loop turns on: the callers just woken, and those woken by any other
                # reply read with this one, queue their next calls first, so that the next
                # batches are even.
                self._flush_scheduled = True
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.call_soon, self._scheduled_flush)

        cast("AsyncConnection", self._connection).run_script(argc, body, done, deadline)

    @staticmethod
    def _deliver_requests(entries: list[Entry], waiters: list[Waiter], replies: Any) -> None:
        index = 0
        for entry, waiter in zip(entries, waiters, strict=True):
            result: Any
            if type(entry) is Call:
                result = replies[index]
                index += 1
            else:
                result = []
                for request in _requests(entry):
                    result.append(replies[index : index + len(request)])
                    index += len(request)
            if not waiter.done():
                waiter.set_result(result)

    @staticmethod
    def _fail(waiters: list[Waiter], error: BaseException) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    async def _send_through_client(
        self, entries: list[Entry], waiters: list[Waiter], calls: int, deadline: float
    ) -> None:
        """One script call per hash slot through redis-py (Cluster, Sentinel), answered by
        ``deadline`` (the batch's oldest caller's, as on ratewall's own connection)."""
        observer = self._observer
        started = time.perf_counter()
        try:
            flat = [request for entry in entries for request in _requests(entry)]
            results = await self._send_per_slot(flat, deadline)
            if observer is not None:
                failure = next((r for r in results if isinstance(r, BaseException)), None)
                report_store_call(observer, time.perf_counter() - started, calls, failure)
        except BaseException as error:
            if observer is not None:
                report_store_call(observer, time.perf_counter() - started, calls, error)
            for waiter in waiters:
                if not waiter.done():
                    if isinstance(error, asyncio.CancelledError):
                        waiter.cancel()
                    else:
                        waiter.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            index = 0
            for entry, waiter in zip(entries, waiters, strict=True):
                single = type(entry) is Call
                count = len(_requests(entry))
                mine = results[index : index + count]
                index += count
                if waiter.done():
                    continue
                failure = next((r for r in mine if isinstance(r, BaseException)), None)
                if failure is not None:
                    waiter.set_exception(failure)
                else:
                    replies = cast("list[list[Reply]]", mine)
                    waiter.set_result(replies[0][0] if single else replies)
        finally:
            self._in_flight -= 1
            self._in_flight_calls -= calls
            self._flush()

    async def _send_per_slot(
        self, requests: Sequence[Request], deadline: float
    ) -> list[list[Reply] | BaseException]:
        """Replies per request; on a cluster, a slot whose call failed gives its requests
        the exception while the other slots' requests get their replies."""
        if self.slot_of is None:
            return list(await self._send_one_slot(requests, deadline))
        parts = slot_parts(self.slot_of, requests)
        results = await asyncio.gather(
            *(
                self._send_one_slot([requests[i] for i in indexes], deadline)
                for indexes in parts.values()
            ),
            return_exceptions=True,
        )
        merged: list[list[Reply] | BaseException] = [[] for _ in requests]
        for indexes, result in zip(parts.values(), results, strict=True):
            for position, index in enumerate(indexes):
                merged[index] = result if isinstance(result, BaseException) else result[position]
        return merged

    async def _send_one_slot(
        self, requests: Sequence[Request], deadline: float
    ) -> list[list[Reply]]:
        keys, args = self._arguments.build(requests)
        return regroup(requests, await self._execute(keys, args, deadline))

    async def arun_slot(self, call: SlotCall) -> Reply:
        """The reply of ``lua/concurrency.lua`` to one slot operation (not batched: slots
        are held for a while, their operations are few)."""
        observer = self._observer
        started = time.perf_counter()
        try:
            reply = await self._run_slot(call)
        except BaseException as error:
            if observer is not None:
                report_store_call(observer, time.perf_counter() - started, 1, error)
            raise
        if observer is not None:
            report_store_call(observer, time.perf_counter() - started, 1, None)
        return reply

    async def _run_slot(self, call: SlotCall) -> Reply:
        if self._closed:
            raise _closed_error()
        connection = self._connection
        if connection is None:
            args = self._arguments.slot_args(call)
            result: Reply = await cast("AsyncCalls", self._calls).within(
                asyncio.get_running_loop().time() + self._timeout,
                lambda: self._slot_script(keys=[call.key], args=args),
            )
            return result
        future: Waiter = asyncio.get_running_loop().create_future()

        def done(reply: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)

        argc, body = self._arguments.pack_slot(call)
        connection.run_script(argc, body, done, None, self._slot_script)
        reply: Reply = await future
        return reply

    async def aping(self) -> float:
        """The round trip of a ``PING`` in seconds, within the store timeout; raises the
        store's error if it does not answer."""
        started = time.perf_counter()
        if self._connection is not None:
            await self._connection.command("PING")
        else:
            client = self._client
            await cast("AsyncCalls", self._calls).within(
                asyncio.get_running_loop().time() + self._timeout, client.ping
            )
        return time.perf_counter() - started

    def observe(self, observer: Observer | None) -> None:
        self._observer = observer

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._fail(self._waiters, _closed_error())
        self._entries, self._waiters, self._since = [], [], []
        self._waiting_calls = self._waiting_requests = 0
        await self._aclose()


def _requests(entry: Entry) -> Sequence[Request]:
    return ((entry,),) if type(entry) is Call else cast("Sequence[Request]", entry)


def _closed_error() -> Exception:
    return StoreConnectionError("the store was closed")
