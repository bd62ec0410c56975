"""The Redis/Valkey store: one atomic Lua call decides a list of requests (each a group of
calls decided all or nothing).

The script is ``lua/_prelude.lua``, the five ``lua/<algorithm>.lua`` files and
``lua/_main.lua`` concatenated. Standalone servers are reached through ratewall's own
connections (:mod:`._resp`), which load it as a function library (FUNCTION LOAD once per
server, then FCALL: its definitions are not re-run at every call), falling back to EVALSHA
(re-sent as EVAL on NOSCRIPT) on servers without functions or for users denied them; a
library or script lost to a flush, a restart or a failover is loaded again by the call that
finds it missing. Cluster and Sentinel are reached through redis-py clients and their
``Script`` objects (EVALSHA), with batches split per hash slot.

Clients are built for a rate limiter, not for a cache: connect and read timeouts default to
50 ms and nothing is retried (redis-py's defaults wait seconds and retry with backoff; a
limiter must answer or fail fast and let the policy's failure mode decide).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.backoff import NoBackoff
from redis.crc import key_slot as redis_key_slot
from redis.retry import Retry

from .._fork import abandon, reset_in_child
from .._urls import STORE_SCHEMES, store_url_problem
from ..algorithms import ALGORITHM_CODES, Rule
from ..core import Call, Reply, Request
from ..errors import ConfigError
from ..observer import Observer
from ._resp import (
    AsyncConnection,
    ConnectionPool,
    Endpoint,
    Script,
    StoreConnectionError,
    StoreProtocolError,
    bulk,
)
from .base import DEFAULT_TIMEOUT

__all__ = ["SCRIPT", "AsyncRedisStore", "RedisStore", "parse_store_url"]

_log = logging.getLogger("ratewall")

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
    problem = store_url_problem(url)
    if problem is not None:
        raise ConfigError(problem, field="store")
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


_CACHE_LIMIT: Final = 4096  # encoded keys and call arguments kept; past it, start afresh
_NO_CLOCK: Final = bulk("")  # ARGV[1] "": the script reads the server's TIME
_ZERO: Final = bulk(0)
_ONE: Final = bulk(1)
_ONE_GROUP: Final = (0,)  # pack's groups for one call
_LONE_ARGC: Final = 3 + 5 + 1  # numkeys, clock, rule count; a key and its 4 values; a rule


def _rule_text(rule: Rule) -> str:
    """A rule as the script reads it: its integers joined by ":" (lua/_main.lua's header)."""
    return ":".join(map(str, rule))


class _Arguments:
    """Builds the script's KEYS and ARGV for a list of requests: each distinct rule once,
    then four values per call (op, group, cost, rule index).

    The script only compares a call's group with its neighbour's, so a request's group is
    the parity of its index (0, 1, 0, ...): every per-call value then comes from a small set,
    and a call's arguments are encoded to RESP once and reused (a batch of 512 decisions is
    mostly dictionary look-ups and one join).
    """

    __slots__ = ("_arguments", "_clock", "_keys", "_lone", "_rules")

    def __init__(self, clock: Callable[[], int] | None) -> None:
        self._clock = clock
        self._rules: dict[Rule, bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._arguments: dict[tuple[int, int, int, int], bytes] = {}
        self._lone: dict[tuple[int, int, Rule], bytes] = {}

    def pack(self, calls: Sequence[Call], groups: Sequence[int]) -> tuple[int, bytes]:
        """``(argc, body)`` for :class:`._resp.Script`: numkeys, KEYS and ARGV as RESP.
        ``groups`` holds each call's group parity (alternating between requests)."""
        keys = self._keys
        arguments = self._arguments
        positions: dict[Rule, int] = {}
        last_rule: Rule | None = None
        position = 0
        key_parts: list[bytes] = []
        call_parts: list[bytes] = []
        for (key, op, cost, rule), group in zip(calls, groups, strict=False):
            encoded = keys.get(key)
            if encoded is None:
                if len(keys) >= _CACHE_LIMIT:
                    keys.clear()
                encoded = keys[key] = bulk(key)
            key_parts.append(encoded)
            if rule is not last_rule:
                last_rule = rule
                position = positions.setdefault(rule, len(positions) + 1)
            encoded = arguments.get((op, group, cost, position))
            if encoded is None:
                if len(arguments) >= _CACHE_LIMIT:
                    arguments.clear()
                encoded = arguments[op, group, cost, position] = (
                    bulk(op) + bulk(group) + bulk(cost) + bulk(position)
                )
            call_parts.append(encoded)
        count = len(key_parts)
        key_parts.append(_NO_CLOCK if self._clock is None else bulk(self._clock()))
        key_parts.append(bulk(len(positions)))
        key_parts += [self._encoded(rule) for rule in positions]
        key_parts += call_parts
        return 3 + 5 * count + len(positions), bulk(count) + b"".join(key_parts)

    def pack_one(self, call: Call) -> tuple[int, bytes]:
        """``pack((call,), (0,))`` for the usual sync decision, cheaper: everything after the
        key (the clock, the rule, the call's values) is the same for every call of a policy,
        op and cost, and is encoded once."""
        if self._clock is not None:
            return self.pack((call,), _ONE_GROUP)
        key, op, cost, rule = call
        encoded = self._keys.get(key)
        if encoded is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            encoded = self._keys[key] = bulk(key)
        tail = self._lone.get((op, cost, rule))
        if tail is None:
            if len(self._lone) >= _CACHE_LIMIT:
                self._lone.clear()
            tail = self._lone[op, cost, rule] = (
                _NO_CLOCK + _ONE + self._encoded(rule) + bulk(op) + _ZERO + bulk(cost) + _ONE
            )
        return _LONE_ARGC, _ONE + encoded + tail

    def _encoded(self, rule: Rule) -> bytes:
        encoded = self._rules.get(rule)
        if encoded is None:
            encoded = self._rules[rule] = bulk(_rule_text(rule))
        return encoded

    def build(self, requests: Sequence[Request]) -> tuple[list[str], list[int | str]]:
        """KEYS and ARGV as lists, for redis-py's ``Script`` (Cluster and Sentinel)."""
        index: dict[Rule, int] = {}
        keys: list[str] = []
        calls: list[int | str] = []
        for group, request in enumerate(requests):
            for call in request:
                position = index.get(call.rule)
                if position is None:
                    position = index[call.rule] = len(index) + 1
                keys.append(call.key)
                calls += (call.op, group & 1, call.cost, position)
        args: list[int | str] = [self._clock() if self._clock is not None else "", len(index)]
        args += [_rule_text(rule) for rule in index]
        args += calls
        return keys, args


def _flatten(requests: Sequence[Request]) -> tuple[list[Call], list[int]]:
    """Every call of ``requests`` in order, and each one's group parity."""
    calls: list[Call] = []
    groups: list[int] = []
    for group, request in enumerate(requests):
        calls += request
        groups += [group & 1] * len(request)
    return calls, groups


def _regroup(requests: Sequence[Request], replies: Sequence[Reply]) -> list[list[Reply]]:
    grouped = []
    index = 0
    for request in requests:
        grouped.append(list(replies[index : index + len(request)]))
        index += len(request)
    return grouped


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
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], int] | None = None
    ) -> None:
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = _Arguments(clock)
        self._close: Callable[[], None]
        self._pool: ConnectionPool | None = None
        self._script: Any = None
        self._client: Any = None
        self._observer: Observer | None = None
        self.slot_of: Callable[[str], int] | None = None
        if kind == "redis":
            self._pool = ConnectionPool(Endpoint.from_url(normalised, timeout), Script(SCRIPT))
            self._close = self._pool.close
        else:
            client = self._client = make_client(url, timeout)
            self._script = client.register_script(SCRIPT)
            self._close = lambda: _close_client(client)
            if kind == "cluster":
                self.slot_of = key_slot

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request (all or nothing) in order, in one atomic script call (one
        per hash slot on a cluster)."""
        if self._observer is not None:
            return _timed(self._observer, sum(map(len, requests)), self._run_slots, requests)
        return self._run_slots(requests)

    def _run_slots(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self.slot_of is not None:
            return _per_slot(self.slot_of, requests, self._run)
        return self._run(requests)

    def _run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self._pool is not None:
            argc, body = self._arguments.pack(*_flatten(requests))
            return _regroup(requests, self._pool.run_script(argc, body))
        keys, args = self._arguments.build(requests)
        return _regroup(requests, self._script(keys=keys, args=args))

    def run_one(self, call: Call) -> Reply:
        if self._observer is not None:
            return _timed(self._observer, 1, self._run_one, call)
        return self._run_one(call)

    def _run_one(self, call: Call) -> Reply:
        if self._pool is not None:
            argc, body = self._arguments.pack_one(call)
            reply: Reply = self._pool.run_script(argc, body)[0]
            return reply
        return self._run_slots(((call,),))[0][0]

    def ping(self) -> float:
        """The round trip of a ``PING`` in seconds, within the store timeout; raises the
        store's error if it does not answer."""
        started = time.perf_counter()
        if self._pool is not None:
            self._pool.command("PING")
        else:
            self._client.ping()
        return time.perf_counter() - started

    def observe(self, observer: Observer | None) -> None:
        self._observer = observer

    def close(self) -> None:
        self._close()


_T = TypeVar("_T")
_A = TypeVar("_A")


def _timed(observer: Observer, calls: int, run: Callable[[_A], _T], argument: _A) -> _T:
    """``run(argument)``, reported to ``observer`` as one round trip carrying ``calls``."""
    started = time.perf_counter()
    try:
        result = run(argument)
    except BaseException as error:
        _report(observer, time.perf_counter() - started, calls, error)
        raise
    _report(observer, time.perf_counter() - started, calls, None)
    return result


def _report(observer: Observer, seconds: float, calls: int, error: BaseException | None) -> None:
    try:
        observer.on_store_call(seconds, calls, error)
    except Exception:  # noqa: BLE001 - an observer's bug must not fail the decision
        _log.exception("ratewall observer failed on a store call")


# The group parities of a batch of single calls, each call its own request.
_ALTERNATING: Final = (0, 1) * 4096

Entry = Call | Sequence[Request]  # a single call (arun_one), or the requests of one arun
Waiter = asyncio.Future[Any]  # the reply of a single call, or the replies of an arun


class AsyncRedisStore:
    """The asyncio twin of :class:`RedisStore`, with automatic batching.

    Concurrent callers share round trips: a call made while nothing is in flight goes out at
    once (latency at low load is one round trip); under load, calls made in the same
    event-loop turn leave together at the end of it, at most ``max_in_flight`` script calls
    are in flight, and when one returns, the waiting requests (up to ``max_batch`` calls)
    go out in one script call. The script decides the requests in order, each all or
    nothing, atomically: batching changes nothing about exactness. A queued caller may wait
    for one in-flight call before its own, so its worst case is two timeouts.

    Batches are sized to split the callers evenly between the script calls in flight: with
    two in flight, the server runs one while this process reads the other's replies and
    its callers make their next calls, so both CPUs stay busy. A lopsided pair (one call
    beside all the others) would leave each side waiting for the other.

    On a standalone server the whole path runs in callbacks: a caller awaits one future, and
    a batch costs no task (see :class:`._resp.ScriptCall`).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], int] | None = None,
        max_in_flight: int = 2,
        max_batch: int = 512,
    ) -> None:
        if max_in_flight < 1 or not 1 <= max_batch <= len(_ALTERNATING):
            raise ValueError(
                f"max_in_flight must be >= 1 and max_batch in 1..{len(_ALTERNATING)}, got "
                f"{max_in_flight} and {max_batch}"
            )
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = _Arguments(clock)
        self._connection: AsyncConnection | None = None
        self._execute: Callable[[list[str], list[int | str]], Awaitable[list[Reply]]]
        self._aclose: Callable[[], Awaitable[None]]
        self.slot_of: Callable[[str], int] | None = None
        self._initialize: Callable[[], Awaitable[Any]] | None = None
        self._ready = asyncio.Lock()
        self._timeout = timeout
        self._client: Any = None
        if kind == "redis":
            self._connection = AsyncConnection(
                Endpoint.from_url(normalised, timeout), Script(SCRIPT)
            )
            self._aclose = self._connection.aclose
        else:
            if kind == "cluster":
                self.slot_of = key_slot
            self._use_new_client()
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._in_flight = 0  # script calls
        self._in_flight_calls = 0
        # Waiting entries and their futures, in order; the calls they hold; how many of
        # them are arun() requests rather than single calls.
        self._entries: list[Entry] = []
        self._waiters: list[Waiter] = []
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
        """A redis-py client (Cluster, Sentinel) and the script calls made through it. Builds
        no connection: redis-py's asyncio clients connect on first use."""
        client = make_client(self.url, self._timeout, asynchronous=True)
        script = client.register_script(SCRIPT)
        self._execute = lambda keys, args: script(keys=keys, args=args)
        self._aclose = lambda: _aclose_client(client)
        self._client = client
        if self.slot_of is not None:
            # redis-py's asyncio cluster sets itself up lazily: see _send_per_slot.
            self._initialize = client.initialize

    def _after_fork_in_child(self) -> None:
        """Start afresh: the queued calls, their futures and tasks belong to the parent's
        event loop, and so does a redis-py asyncio client's every connection (ratewall's own
        connection resets itself)."""
        abandon(*self._tasks)
        self._tasks = set()
        self._entries, self._waiters = [], []
        self._waiting_calls = self._waiting_requests = 0
        self._in_flight = self._in_flight_calls = 0
        self._flush_scheduled = False
        self._crowd = False
        self._ready = asyncio.Lock()
        if self._connection is None and not self._closed:
            abandon(self._client)
            self._use_new_client()

    # -- callers -------------------------------------------------------------------------

    def arun_one(self, call: Call) -> Awaitable[Reply]:
        """The reply to one call (awaitable), sharing a round trip with concurrent callers."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self._entries.append(call)
        self._waiters.append(waiter)
        self._waiting_calls += 1
        if not self._flush_scheduled and self._in_flight < self._max_in_flight:
            self._wake()
        return waiter

    def arun(self, requests: Sequence[Request]) -> Awaitable[list[list[Reply]]]:
        """Decide each request (all or nothing) in order, sharing a round trip with the
        callers that arrive in the same event-loop turn or while a call is in flight."""
        # The requests of one call are never split: they leave together, in one script
        # call, even if they are more than max_batch calls.
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self._entries.append(requests)
        self._waiters.append(waiter)
        self._waiting_calls += sum(len(request) for request in requests)
        self._waiting_requests += 1
        self._wake()
        return waiter

    def _wake(self) -> None:
        """A call was queued: send it now if it is alone, else at the end of this loop turn
        (callers woken together leave together), else when a script call returns."""
        if self._flush_scheduled or self._in_flight >= self._max_in_flight:
            return
        if not self._in_flight and len(self._entries) == 1 and not self._crowd:
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
                self._entries, self._waiters = [], []
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
            self._waiting_calls -= calls
            self._waiting_requests -= requests
            self._in_flight += 1
            self._in_flight_calls += calls
            if self._connection is not None:
                self._send(batch, waiters, calls, requests)
            else:
                task = asyncio.get_running_loop().create_task(
                    self._send_through_client(batch, waiters, calls)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _send(self, entries: list[Entry], waiters: list[Waiter], calls: int, requests: int) -> None:
        """One script call on ratewall's own connection; ``done`` hands out the replies."""
        try:
            if requests:
                flat = [request for entry in entries for request in _requests(entry)]
                argc, body = self._arguments.pack(*_flatten(flat))
            elif calls == 1:
                argc, body = self._arguments.pack_one(cast("Call", entries[0]))
            else:
                argc, body = self._arguments.pack(cast("list[Call]", entries), _ALTERNATING)
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
                _report(observer, time.perf_counter() - started, calls, error)
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

        cast("AsyncConnection", self._connection).run_script(argc, body, done)

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
        self, entries: list[Entry], waiters: list[Waiter], calls: int
    ) -> None:
        """One script call per hash slot through redis-py (Cluster, Sentinel)."""
        observer = self._observer
        started = time.perf_counter()
        try:
            flat = [request for entry in entries for request in _requests(entry)]
            results = await self._send_per_slot(flat)
            if observer is not None:
                failure = next((r for r in results if isinstance(r, BaseException)), None)
                _report(observer, time.perf_counter() - started, calls, failure)
        except BaseException as error:
            if observer is not None:
                _report(observer, time.perf_counter() - started, calls, error)
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
        self, requests: Sequence[Request]
    ) -> list[list[Reply] | BaseException]:
        """Replies per request; on a cluster, a slot whose call failed gives its requests
        the exception while the other slots' requests get their replies."""
        if self.slot_of is None:
            return list(await self._send_one_slot(requests))
        if self._initialize is not None:
            # redis-py's asyncio cluster sets itself up lazily, and concurrent first commands
            # race through that set-up: do it once, before any of them.
            async with self._ready:
                if self._initialize is not None:
                    await self._initialize()
                    self._initialize = None
        parts = _slot_parts(self.slot_of, requests)
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

    async def aping(self) -> float:
        """The round trip of a ``PING`` in seconds, within the store timeout; raises the
        store's error if it does not answer."""
        started = time.perf_counter()
        if self._connection is not None:
            await self._connection.command("PING")
        else:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
        return time.perf_counter() - started

    def observe(self, observer: Observer | None) -> None:
        self._observer = observer

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._fail(self._waiters, _closed_error())
        self._entries, self._waiters = [], []
        self._waiting_calls = self._waiting_requests = 0
        await self._aclose()


def _requests(entry: Entry) -> Sequence[Request]:
    return ((entry,),) if type(entry) is Call else cast("Sequence[Request]", entry)


def _closed_error() -> Exception:
    return StoreConnectionError("the store was closed")
