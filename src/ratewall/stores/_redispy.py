"""redis-py clients for the topologies ratewall's own connection does not serve (Cluster,
Sentinel), built from the one parsed description of a store URL (:mod:`ratewall._urls`).

Clients are built for a rate limiter, not for a cache: connect and read timeouts are the
store timeout and nothing is retried (redis-py's defaults wait seconds and retry with
backoff; a limiter must answer or fail fast and let the policy's failure mode decide).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import DefaultParser as AsyncDefaultParser
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.connection import Connection, DefaultParser, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .._urls import StoreURL, parse_url
from ._resp import StoreTimeoutError

T = TypeVar("T")

__all__ = [
    "AsyncCalls",
    "ClusterUnavailableError",
    "_client_options",
    "_sentinel_master",
    "_sentinel_parts",
    "aclose_client",
    "close_client",
    "decision_deadline",
    "make_client",
    "parse_store_url",
]


def parse_store_url(url: str) -> tuple[str, str]:
    """``(kind, url)``: kind is ``memory``, ``redis``, ``cluster`` or ``sentinel``; the URL is
    normalised for redis-py (``valkey://`` is ``redis://``, ``valkeys://`` is ``rediss://``).
    A malformed URL is a ConfigError (field ``store``)."""
    parsed = parse_url(url)
    if parsed.kind == "memory":
        return "memory", url
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("valkey", "valkeys"):
        return "redis", ("redis" if scheme == "valkey" else "rediss") + "://" + rest
    if parsed.kind == "cluster":
        return "cluster", ("rediss" if parsed.tls else "redis") + "://" + rest
    return parsed.kind, url


class ClusterUnavailableError(ResponseError):
    """A cluster node answered ``CLUSTERDOWN`` or ``TRYAGAIN`` (a failover or a slot
    migration under way). redis-py's cluster client sleeps 0.25 s (0.05 s) and retries
    inside the call on these, past any timeout; read as this error instead, they fail the
    call at once, and the policy's failure mode answers."""


class _FailFastParser(DefaultParser):  # type: ignore[misc,valid-type]  # hiredis or RESP2
    EXCEPTION_CLASSES: ClassVar[dict[str, Any]] = {
        **DefaultParser.EXCEPTION_CLASSES,
        "CLUSTERDOWN": ClusterUnavailableError,
        "TRYAGAIN": ClusterUnavailableError,
    }


class _AsyncFailFastParser(AsyncDefaultParser):  # type: ignore[misc,valid-type]
    """The same reading of ``CLUSTERDOWN``/``TRYAGAIN`` for redis-py's asyncio cluster,
    which on ``ClusterDownError`` also closes every connection of the client."""

    EXCEPTION_CLASSES: ClassVar[dict[str, Any]] = {
        **AsyncDefaultParser.EXCEPTION_CLASSES,
        "CLUSTERDOWN": ClusterUnavailableError,
        "TRYAGAIN": ClusterUnavailableError,
    }


class _FailFastConnection(Connection):
    """A cluster node's connection whose replies are read by :class:`_FailFastParser`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["parser_class"] = _FailFastParser
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]


class _FailFastSSLConnection(SSLConnection):
    """The same for ``rediss+cluster://``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["parser_class"] = _FailFastParser
        super().__init__(**kwargs)


def _client_options(timeout: float, parsed: StoreURL | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "client_name": "ratewall",
    }
    if parsed is not None and parsed.tls is not None:
        options.update(parsed.tls.redis_py())
    return options


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the sentinels,
    the service, and the master's (and the sentinels') connection options."""
    parsed = parse_url(url)
    if parsed.kind != "sentinel" or parsed.service is None:
        raise ValueError(f"not a sentinel URL: {parsed!r}")
    extra: dict[str, Any] = {"db": parsed.db}
    if parsed.username is not None:
        extra["username"] = parsed.username
    if parsed.password is not None:
        extra["password"] = parsed.password
    if parsed.sentinel_password is not None:
        extra["sentinel_password"] = parsed.sentinel_password
    return list(parsed.nodes), parsed.service, extra


# The deadline of the decision being made, which a Sentinel discovery inside it must keep:
# time.monotonic() for the sync store (set by decision_deadline), the event loop's time for
# the asyncio store (set by AsyncCalls.within for the task it starts).
_SYNC_DEADLINE: ContextVar[float | None] = ContextVar("ratewall_sync_deadline", default=None)
_ASYNC_DEADLINE: ContextVar[float | None] = ContextVar("ratewall_async_deadline", default=None)
_ASKED_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


@contextlib.contextmanager
def decision_deadline(timeout: float) -> Iterator[None]:
    """The redis-py calls made inside (sync) belong to one decision, due in ``timeout``."""
    token = _SYNC_DEADLINE.set(time.monotonic() + timeout)
    try:
        yield
    finally:
        _SYNC_DEADLINE.reset(token)


class _BoundedDiscovery:
    """Sentinel discovery within the decision's deadline (the mixin of both Sentinels).

    redis-py asks the sentinels one after another, each with the full socket timeout, so a
    discovery through two unresponsive sentinels took twice the store timeout before the
    decision even reached the primary. Here the discovery keeps the deadline of the
    decision that needs it (a new connection to the primary: at the first decision and
    after the connection to the primary failed), or the store timeout from its start when
    it runs outside a decision. Each sentinel is asked on a connection of its own, opened
    for the question and closed after it, with the time it is given as its timeouts."""

    _nodes: list[tuple[str, int]]
    _timeout: float
    sentinel_kwargs: dict[str, Any]
    _force_master_ip: str | None

    if TYPE_CHECKING:  # redis-py's, after this mixin in the method order

        def check_master_state(self, state: Any, service_name: str) -> bool: ...

    def _asking(self, seconds: float) -> dict[str, Any]:
        return {
            **self.sentinel_kwargs,
            "socket_timeout": seconds,
            "socket_connect_timeout": seconds,
        }

    def _master_in(self, masters: Any, service_name: str) -> tuple[str, int] | None:
        state = masters.get(service_name)
        if not state or not self.check_master_state(state, service_name):
            return None
        ip = self._force_master_ip if self._force_master_ip is not None else state["ip"]
        return ip, state["port"]


class _Sentinel(_BoundedDiscovery, Sentinel):
    """Sync: the sentinels are asked in turn (the one that answered last first), each given
    an equal share of the time left: with three sentinels and 100 ms, a first one that
    never answers costs 33 ms, and the two others still have 67 ms."""

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call]
        self._nodes = list(sentinels)
        self._timeout = float(self.sentinel_kwargs["socket_timeout"])

    def discover_master(self, service_name: str) -> tuple[str, int]:
        deadline = _SYNC_DEADLINE.get()
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        errors: list[str] = []
        nodes = self._nodes
        for index, (host, port) in enumerate(list(nodes)):
            left = deadline - time.monotonic()
            if left <= 0:
                errors.append("no time left before the decision's deadline")
                break
            client = Redis(host, port, **self._asking(left / (len(nodes) - index)))
            try:
                masters = client.sentinel_masters()
            except _ASKED_ERRORS as error:
                errors.append(f"{host}:{port} - {error!r}")
                continue
            finally:
                client.close()
            address = self._master_in(masters, service_name)
            if address is not None:
                nodes.insert(0, nodes.pop(index))
                return address
        raise MasterNotFoundError(f"No master found for {service_name!r}: {', '.join(errors)}")


class _AsyncSentinel(_BoundedDiscovery, AsyncSentinel):
    """asyncio: every sentinel is asked at once, and the first to name a master in good
    standing answers. The questions still running then end on their own (each bounded by
    the time it was given) and close their connections; closing the store stops them."""

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call]
        self._nodes = list(sentinels)
        self._timeout = float(self.sentinel_kwargs["socket_timeout"])
        self._questions: set[asyncio.Task[Any]] = set()

    async def _ask(self, host: str, port: int, seconds: float) -> Any:
        client = AsyncRedis(host=host, port=port, **self._asking(seconds))
        try:
            return await client.sentinel_masters()
        finally:
            await client.aclose()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._questions.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late or failed answer is nobody's to report

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        deadline = _ASYNC_DEADLINE.get()
        if deadline is None:
            deadline = loop.time() + self._timeout
        left = deadline - loop.time()
        if left <= 0:
            raise MasterNotFoundError(f"No master found for {service_name!r}: no time left")
        asked = {
            loop.create_task(self._ask(host, port, left)): f"{host}:{port}"
            for host, port in self._nodes
        }
        for task in asked:
            self._questions.add(task)
            task.add_done_callback(self._finished)
        errors: list[str] = []
        pending = set(asked)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - loop.time()), return_when="FIRST_COMPLETED"
            )
            if not done:
                errors.append("no answer before the decision's deadline")
                break
            for task in done:
                error = task.exception()
                if error is not None:
                    errors.append(f"{asked[task]} - {error!r}")
                    continue
                address = self._master_in(task.result(), service_name)
                if address is not None:
                    return address
        raise MasterNotFoundError(f"No master found for {service_name!r}: {', '.join(errors)}")

    async def aclose(self) -> None:
        for task in list(self._questions):
            task.cancel()  # each on a connection of its own, closed as it ends
        if self._questions:
            await asyncio.wait(list(self._questions))
        await super().aclose()


def _sentinel_master(
    sentinel_class: Any, url: str, options: dict[str, Any], tls_connection_class: Any = None
) -> Any:
    """The master client of a Sentinel-monitored service (sync or asyncio Sentinel class).

    With ``rediss+sentinel://`` both the sentinels and the master are reached over TLS, with
    the same options. The Sentinel object is kept on the client as ``_ratewall_sentinel`` so
    that closing the store also closes the connections to the sentinels."""
    nodes, service, extra = _sentinel_parts(url)
    sentinel_password = extra.pop("sentinel_password", None)
    sentinel_kwargs = {**options, "password": sentinel_password}
    master_options = dict(options)
    if parse_url(url).tls is not None:
        sentinel_kwargs["ssl"] = True
        master_options["connection_class"] = tls_connection_class
    sentinel = sentinel_class(nodes, sentinel_kwargs=sentinel_kwargs, **options)
    client = sentinel.master_for(service, **master_options, **extra)
    client._ratewall_sentinel = sentinel
    return client


def close_client(client: Any) -> None:
    """Close a redis-py Cluster or Sentinel-master client and every pool behind it."""
    client.close()
    if hasattr(client, "disconnect_connection_pools"):
        client.disconnect_connection_pools()  # redis-py's cluster close() leaves node pools
    sentinel = getattr(client, "_ratewall_sentinel", None)
    if sentinel is not None:
        sentinel.close()


async def aclose_client(client: Any) -> None:
    await client.aclose()
    manager = getattr(client, "nodes_manager", None)
    if manager is not None:
        # redis-py's asyncio cluster closes nothing while it is marked for a new set-up
        # (after any connection error): close its nodes' connections regardless.
        await manager.aclose()
        await manager.aclose("startup_nodes")
    sentinel = getattr(client, "_ratewall_sentinel", None)
    if sentinel is not None:
        await sentinel.aclose()


def make_client(url: str, timeout: float, *, asynchronous: bool = False) -> Any:
    """A redis-py client for a Cluster or Sentinel URL (standalone servers use ratewall's
    own connections: ._connection and ._aconnection)."""
    parsed = parse_url(url)
    if parsed.kind == "cluster":
        # Every seed node is a startup node: the slot map is asked of them in turn (and of
        # every node found since), so one seed that is down does not stop the set-up.
        options = _client_options(timeout, parsed)
        options.update(username=parsed.username, password=parsed.password)
        if asynchronous:
            if parsed.tls is not None:
                options["ssl"] = True  # redis-py then picks its own TLS connection class
        else:
            # Given as a URL, the node clients get their pools from these options,
            # connection class (TLS or not) and TLS options included (redis-py's from_url
            # path; a rediss:// URL would replace the class with redis-py's own).
            tls = parsed.tls is not None
            options["connection_class"] = _FailFastSSLConnection if tls else _FailFastConnection
            host, port = parsed.nodes[0]
            options["url"] = f"redis://{f'[{host}]' if ':' in host else host}:{port}"
        if asynchronous:
            from redis.asyncio.cluster import ClusterNode as AsyncNode
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            client = AsyncCluster(
                startup_nodes=[AsyncNode(host, port) for host, port in parsed.nodes], **options
            )
            # The asyncio cluster takes no parser class: its nodes' connections are built
            # from these keyword arguments (the client's, shared with the nodes manager,
            # and each seed node's own copy), TLS or not.
            client.connection_kwargs["parser_class"] = _AsyncFailFastParser
            for node in client.nodes_manager.startup_nodes.values():
                node.connection_kwargs["parser_class"] = _AsyncFailFastParser
            return client
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],  # type: ignore[no-untyped-call]
            **options,
        )
    if parsed.kind == "sentinel":
        options = _client_options(timeout, parsed)
        if asynchronous:
            from redis.asyncio import sentinel as asyncio_sentinel

            return _sentinel_master(
                _AsyncSentinel,
                url,
                options,
                asyncio_sentinel.SentinelManagedSSLConnection,
            )
        from redis import sentinel

        return _sentinel_master(_Sentinel, url, options, sentinel.SentinelManagedSSLConnection)
    raise ValueError(f"{parsed!r} is a standalone store: ratewall's own connection serves it")


class AsyncCalls:
    """Calls through a redis-py asyncio client (Cluster, Sentinel), each answered by its
    deadline, none cancelled.

    Cancelling a redis-py asyncio call (``asyncio.wait_for``, ``asyncio.timeout``) can put
    back into its pool a connection whose reply is still on the way, and the next call on it
    reads that reply as its own. So each call runs in a task of its own, and the caller waits
    for it until the deadline: past it, the caller gets :class:`StoreTimeoutError` (and the
    policy's failure mode answers) while the task ends by itself, bounded by the client's
    socket timeouts, and gives its connection back in a clean state. A cluster client's
    first set-up (asking a node for the slot map) is one task shared by the calls that
    need it, bounded the same way.
    """

    def __init__(self, client: Any, *, cluster: bool) -> None:
        self.client = client
        self._tasks: set[asyncio.Task[Any]] = set()
        self._needs_setup = cluster
        self._setup: asyncio.Task[Any] | None = None

    async def within(self, deadline: float, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``'s result if it comes by ``deadline`` (the event loop's time),
        else StoreTimeoutError."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StoreTimeoutError("the store timeout passed before the call could be sent")
        token = _ASYNC_DEADLINE.set(deadline)  # for a Sentinel discovery inside the call
        try:
            task = loop.create_task(self._run(call))
        finally:
            _ASYNC_DEADLINE.reset(token)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        await asyncio.wait((task,), timeout=remaining)
        if not task.done():
            raise StoreTimeoutError("no reply within the store timeout")
        return task.result()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._needs_setup:
            setup = self._setup
            if setup is None:
                setup = self._setup = asyncio.get_running_loop().create_task(
                    self.client.initialize()
                )
            try:
                await asyncio.shield(setup)
            except BaseException:
                if self._setup is setup and setup.done():
                    self._setup = None  # the next call asks again
                raise
            self._needs_setup = False
        return await call()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a call past its deadline is nobody's to report

    async def aclose(self, timeout: float) -> None:
        """Let calls still running end (at most ``timeout`` seconds), then close the client
        and every connection behind it."""
        pending = [*self._tasks, *([self._setup] if self._setup is not None else [])]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await aclose_client(self.client)
