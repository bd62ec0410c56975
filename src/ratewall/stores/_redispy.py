"""redis-py clients for the topologies ratewall's own connection does not serve (Cluster,
Sentinel), built from the one parsed description of a store URL (:mod:`ratewall._urls`).

Clients are built for a rate limiter, not for a cache: connect and read timeouts are the
store timeout and nothing is retried (redis-py's defaults wait seconds and retry with
backoff; a limiter must answer or fail fast and let the policy's failure mode decide).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from redis.asyncio.connection import DefaultParser as AsyncDefaultParser
from redis.backoff import NoBackoff
from redis.connection import Connection, DefaultParser
from redis.exceptions import ResponseError
from redis.retry import Retry

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
        if parsed.tls is not None:
            options["ssl"] = True  # redis-py then picks its own TLS connection class
        elif not asynchronous:
            # Given as a URL, the node clients get their pools from these options,
            # connection class included (redis-py's from_url path).
            options["connection_class"] = _FailFastConnection
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
                asyncio_sentinel.Sentinel,
                url,
                options,
                asyncio_sentinel.SentinelManagedSSLConnection,
            )
        from redis import sentinel

        return _sentinel_master(
            sentinel.Sentinel, url, options, sentinel.SentinelManagedSSLConnection
        )
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
        task = loop.create_task(self._run(call))
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
