"""The Redis/Valkey store: one atomic Lua call decides a list of requests (each a group of
calls decided all or nothing).

The script is ``lua/_prelude.lua``, the five ``lua/<algorithm>.lua`` files and
``lua/_main.lua`` concatenated, sent as EVALSHA and re-sent as EVAL when the server answers
NOSCRIPT (after ``SCRIPT FLUSH``, a restart or a failover). Standalone servers are reached
through ratewall's own connections (:mod:`._resp`); Cluster and Sentinel through redis-py
clients and their ``Script`` objects, with batches split per hash slot.

Clients are built for a rate limiter, not for a cache: connect and read timeouts default to
50 ms and nothing is retried (redis-py's defaults wait seconds and retry with backoff; a
limiter must answer or fail fast and let the policy's failure mode decide).
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.backoff import NoBackoff
from redis.crc import key_slot as redis_key_slot
from redis.retry import Retry

from .._urls import STORE_SCHEMES
from ..algorithms import ALGORITHM_CODES, Rule
from ..core import Call, Reply, Request
from ..errors import ConfigError
from ._resp import AsyncConnection, ConnectionPool, Endpoint, Script

__all__ = ["SCRIPT", "AsyncRedisStore", "RedisStore", "parse_store_url"]

_SCRIPT_PARTS: Final = ("_prelude", *ALGORITHM_CODES, "_main")


def _load_script() -> str:
    folder = importlib.resources.files("ratewall").joinpath("lua")
    return "\n".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in _SCRIPT_PARTS)


SCRIPT: Final = _load_script()


def parse_store_url(url: str) -> tuple[str, str]:
    """``(kind, url)``: kind is ``memory``, ``redis``, ``cluster`` or ``sentinel``; the URL is
    normalised for redis-py (``valkey://`` is ``redis://``, ``valkeys://`` is ``rediss://``)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"unsupported store URL {url!r}; expected one of "
            + ", ".join(f"{s}://" for s in STORE_SCHEMES),
            field="store",
        )
    if scheme == "memory":
        return "memory", url
    if scheme in ("valkey", "valkeys"):
        return "redis", ("redis" if scheme == "valkey" else "rediss") + "://" + rest
    if scheme == "redis+cluster":
        return "cluster", "redis://" + rest
    if scheme == "redis+sentinel":
        return "sentinel", url
    return "redis", url


def _client_options(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "client_name": "ratewall",
    }


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``."""
    parts = urlsplit(url.replace("redis+sentinel://", "sentinel://", 1))
    netloc = parts.netloc.rpartition("@")[2]
    nodes = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        nodes.append((host or item, int(port) if port else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError(f"sentinel URL {url!r} needs a service name: .../mymaster", field="store")
    extra: dict[str, Any] = {"db": int(path[1]) if len(path) > 1 else 0}
    if parts.password:
        extra["password"] = unquote(parts.password)
    query = parse_qs(parts.query)
    if "sentinel_password" in query:
        extra["sentinel_password"] = query["sentinel_password"][0]
    return nodes, path[0], extra


def _sentinel_master(sentinel_class: Any, url: str, options: dict[str, Any]) -> Any:
    """The master client of a Sentinel-monitored service (sync or asyncio Sentinel class).

    The Sentinel object is kept on the client as ``_ratewall_sentinel`` so that closing the
    store also closes the connections to the sentinels."""
    nodes, service, extra = _sentinel_parts(url)
    sentinel_password = extra.pop("sentinel_password", None)
    sentinel = sentinel_class(
        nodes, sentinel_kwargs={**options, "password": sentinel_password}, **options
    )
    client = sentinel.master_for(service, **extra)
    client._ratewall_sentinel = sentinel
    return client


def _close_client(client: Any) -> None:
    """Close a redis-py Cluster or Sentinel-master client and every pool behind it."""
    client.close()
    if hasattr(client, "disconnect_connection_pools"):
        client.disconnect_connection_pools()  # redis-py's cluster close() leaves node pools
    sentinel = getattr(client, "_ratewall_sentinel", None)
    if sentinel is not None:
        sentinel.close()


async def _aclose_client(client: Any) -> None:
    await client.aclose()
    sentinel = getattr(client, "_ratewall_sentinel", None)
    if sentinel is not None:
        await sentinel.aclose()


def make_client(url: str, timeout: float, *, asynchronous: bool = False) -> Any:
    """A redis-py client for a Cluster or Sentinel URL (standalone servers use ._resp)."""
    kind, normalised = parse_store_url(url)
    options = _client_options(timeout)
    if kind == "cluster":
        if asynchronous:
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            return AsyncCluster.from_url(normalised, **options)
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(normalised, **options)
    if kind == "sentinel":
        if asynchronous:
            from redis.asyncio.sentinel import Sentinel as AsyncSentinel

            return _sentinel_master(AsyncSentinel, normalised, options)
        from redis.sentinel import Sentinel

        return _sentinel_master(Sentinel, normalised, options)
    raise ValueError(f"{url!r} is a standalone store: ratewall's own connection serves it")


class _Arguments:
    """Builds the script's KEYS and ARGV for a list of requests (group = request index):
    each distinct rule once, then four values per call. Rules are encoded once."""

    __slots__ = ("_clock", "_rules")

    def __init__(self, clock: Callable[[], int] | None) -> None:
        self._clock = clock
        self._rules: dict[Rule, tuple[int, ...]] = {}

    def _encoded(self, rule: Rule) -> tuple[int, ...]:
        encoded = self._rules.get(rule)
        if encoded is None:
            encoded = (
                rule.algorithm,
                rule.limit,
                rule.window,
                rule.capacity,
                rule.rate,
                rule.interval,
                rule.lease,
            )
            self._rules[rule] = encoded
        return encoded

    def build(self, requests: Sequence[Request]) -> tuple[list[str], list[int | str]]:
        index: dict[Rule, int] = {}
        keys: list[str] = []
        calls: list[int | str] = []
        for group, request in enumerate(requests):
            for call in request:
                position = index.get(call.rule)
                if position is None:
                    position = index[call.rule] = len(index) + 1
                keys.append(call.key)
                calls += (call.op, group, call.cost, position)
        args: list[int | str] = [self._clock() if self._clock is not None else "", len(index)]
        for rule in index:
            args += self._encoded(rule)
        args += calls
        return keys, args


def _regroup(requests: Sequence[Request], replies: Sequence[Reply]) -> list[list[Reply]]:
    grouped = []
    index = 0
    for request in requests:
        grouped.append(list(replies[index : index + len(request)]))
        index += len(request)
    return grouped


def _raise_any(results: list[list[Reply] | BaseException]) -> list[list[Reply]]:
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast("list[list[Reply]]", results)


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    return int(redis_key_slot(key.encode("utf-8", "surrogatepass")))


def _slot_parts(slot_of: Callable[[str], int], requests: Sequence[Request]) -> dict[int, list[int]]:
    """Request indexes by hash slot, in order. A request's keys must share one slot (the keys
    of one identity always do: the identity is the hash tag)."""
    parts: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        slot = slot_of(request[0].key)
        if any(slot_of(call.key) != slot for call in request[1:]):
            raise ValueError(
                "on a Redis Cluster, the policies of one check_many request must be for one "
                "identity (one hash slot); check the others separately"
            )
        parts.setdefault(slot, []).append(index)
    return parts


def _merge(
    size: int, parts: dict[int, list[int]], results: Sequence[list[list[Reply]]]
) -> list[list[Reply]]:
    """Put per-slot replies back in the order of the requests."""
    merged: list[list[Reply]] = [[] for _ in range(size)]
    for indexes, replies in zip(parts.values(), results, strict=True):
        for index, reply in zip(indexes, replies, strict=True):
            merged[index] = reply
    return merged


def _per_slot(
    slot_of: Callable[[str], int],
    requests: Sequence[Request],
    run: Callable[[Sequence[Request]], list[list[Reply]]],
) -> list[list[Reply]]:
    parts = _slot_parts(slot_of, requests)
    results = [run([requests[i] for i in indexes]) for indexes in parts.values()]
    return _merge(len(requests), parts, results)


class RedisStore:
    """Synchronous store on Redis/Valkey: one script call per :meth:`run`.

    Standalone servers (``redis://``, ``rediss://``, ``unix://``, ``valkey://``) are reached
    through ratewall's lean connection (:mod:`._resp`); Cluster and Sentinel through
    redis-py. ``clock`` (µs) replaces the server's ``TIME``: only tests should pass one.
    """

    def __init__(
        self, url: str, *, timeout: float = 0.05, clock: Callable[[], int] | None = None
    ) -> None:
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = _Arguments(clock)
        self._close: Callable[[], None]
        self._execute: Callable[[list[str], list[int | str]], list[Reply]]
        if kind == "redis":
            pool = ConnectionPool(Endpoint.from_url(normalised, timeout), Script(SCRIPT))
            self._execute, self._close = pool.run_script, pool.close
        self._slot: Callable[[str], int] | None = None
        if kind != "redis":
            client = make_client(url, timeout)
            script = client.register_script(SCRIPT)
            self._execute = lambda keys, args: script(keys=keys, args=args)
            self._close = lambda: _close_client(client)
            if kind == "cluster":
                self._slot = key_slot

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request (all or nothing) in order, in one atomic script call (one
        per hash slot on a cluster)."""
        if self._slot is not None:
            return _per_slot(self._slot, requests, self._run)
        return self._run(requests)

    def _run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        keys, args = self._arguments.build(requests)
        return _regroup(requests, self._execute(keys, args))

    def run_one(self, call: Call) -> Reply:
        return self.run(((call,),))[0][0]

    def close(self) -> None:
        self._close()


class AsyncRedisStore:
    """The asyncio twin of :class:`RedisStore`, with automatic batching.

    Concurrent callers share round trips: a call made while nothing is in flight goes out at
    once (latency at low load is one round trip); under load, calls made in the same
    event-loop turn leave together at the end of it, at most ``max_in_flight`` script calls
    are in flight, and when one returns,
    every waiting request (up to ``max_batch`` calls) goes out in one script call. The
    script decides the requests in order, each all or nothing, atomically: batching changes
    nothing about exactness. A queued caller may wait for one in-flight call before its
    own, so its worst case is two timeouts.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.05,
        clock: Callable[[], int] | None = None,
        max_in_flight: int = 2,
        max_batch: int = 512,
    ) -> None:
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = _Arguments(clock)
        self._execute: Callable[[list[str], list[int | str]], Awaitable[list[Reply]]]
        self._aclose: Callable[[], Awaitable[None]]
        if kind == "redis":
            connection = AsyncConnection(Endpoint.from_url(normalised, timeout), Script(SCRIPT))
            self._execute, self._aclose = connection.run_script, connection.aclose
        self._slot: Callable[[str], int] | None = None
        self._initialize: Callable[[], Awaitable[Any]] | None = None
        self._ready = asyncio.Lock()
        if kind != "redis":
            client = make_client(url, timeout, asynchronous=True)
            script = client.register_script(SCRIPT)
            self._execute = lambda keys, args: script(keys=keys, args=args)
            self._aclose = lambda: _aclose_client(client)
            if kind == "cluster":
                self._slot = key_slot
                self._initialize = client.initialize
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._in_flight = 0
        self._waiting: list[tuple[Sequence[Request], asyncio.Future[list[list[Reply]]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    async def _send(self, requests: Sequence[Request]) -> list[list[Reply] | BaseException]:
        """Replies per request; on a cluster, a slot whose call failed gives its requests
        the exception while the other slots' requests get their replies."""
        if self._slot is None:
            return list(await self._send_one_slot(requests))
        if self._initialize is not None:
            # redis-py's asyncio cluster sets itself up lazily, and concurrent first commands
            # race through that set-up: do it once, before any of them.
            async with self._ready:
                if self._initialize is not None:
                    await self._initialize()
                    self._initialize = None
        parts = _slot_parts(self._slot, requests)
        results = await asyncio.gather(
            *(self._send_one_slot([requests[i] for i in indexes]) for indexes in parts.values()),
            return_exceptions=True,
        )
        merged: list[list[Reply] | BaseException] = [[] for _ in requests]
        for indexes, result in zip(parts.values(), results, strict=True):
            for position, index in enumerate(indexes):
                merged[index] = result if isinstance(result, BaseException) else result[position]
        return merged

    async def _send_one_slot(self, requests: Sequence[Request]) -> list[list[Reply]]:
        keys, args = self._arguments.build(requests)
        return _regroup(requests, await self._execute(keys, args))

    async def arun(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request (all or nothing) in order, sharing a round trip with the
        callers that arrive in the same event-loop turn or while a call is in flight."""
        if not self._in_flight and not self._waiting:
            # Alone: no one to share a round trip with, so no reason to wait a loop turn.
            self._in_flight += 1
            try:
                return _raise_any(await self._send(requests))
            finally:
                self._in_flight -= 1
                self._flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[Reply]]] = loop.create_future()
        self._waiting.append((requests, future))
        if not self._flush_scheduled:
            # Flush at the end of this loop turn: callers woken together leave together.
            self._flush_scheduled = True
            loop.call_soon(self._scheduled_flush)
        return await future

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            count = size = 0
            for requests, _ in self._waiting:
                if count and size + len(requests) > self._max_batch:
                    break
                size += len(requests)
                count += 1
            batch, self._waiting = self._waiting[:count], self._waiting[count:]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_batch(
        self, batch: list[tuple[Sequence[Request], asyncio.Future[list[list[Reply]]]]]
    ) -> None:
        try:
            requests = [request for entry in batch for request in entry[0]]
            replies = await self._send(requests)
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    if isinstance(error, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            index = 0
            for entry, future in batch:
                count = len(entry)
                if not future.done():
                    mine = replies[index : index + count]
                    failure = next((r for r in mine if isinstance(r, BaseException)), None)
                    if failure is not None:
                        future.set_exception(failure)
                    else:
                        future.set_result(cast("list[list[Reply]]", mine))
                index += count
        finally:
            self._in_flight -= 1
            self._flush()

    async def arun_one(self, call: Call) -> Reply:
        return (await self.arun(((call,),)))[0][0]

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._aclose()
