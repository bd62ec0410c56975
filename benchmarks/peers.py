"""Adapters: ratewall, its peers and the floors behind one tiny interface.

Every adapter answers one question per call, ``hit(key) -> allowed``, the way a user of that
library would ask it, configured as its documentation recommends for speed (redis-py clients
with the hiredis parser when it is installed, pools big enough for 512 concurrent callers).
The harness in ``run.py`` only ever sees :class:`SyncLimiter` and :class:`AsyncLimiter`.

Which class of each peer stands for which ratewall algorithm is in ``Library.algorithms``
(the same mapping as the team's perf baseline, research/perf-baseline.md). For the ASGI mode
a library names its middleware-wrapped app (``Library.asgi_app``, a uvicorn factory); only
ratewall has one, so that mode compares ratewall with the bare app, not with peers.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from inspect import isawaitable
from typing import Any, NoReturn, Protocol

import redis
import redis.asyncio

from ratewall import ALGORITHMS, AsyncRateLimiter, Policy, RateLimiter

__all__ = [
    "FLOOR_ASGI",
    "FLOOR_MEMORY",
    "FLOOR_REDIS",
    "LIBRARIES",
    "AsyncFloor",
    "AsyncLimiter",
    "DictWindow",
    "Library",
    "LimitSpec",
    "Reference",
    "SyncFloor",
    "SyncLimiter",
    "package_version",
]

# Enough connections for every concurrent caller of the biggest mode (redis.asyncio's pool
# raises instead of waiting once it is exhausted, and its default is 100).
POOL_SIZE = 1024

FLOOR_REDIS = "redis-py EVALSHA"
FLOOR_MEMORY = "dict fixed window"
FLOOR_ASGI = "bare ASGI app"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What one limiter enforces: ``limit`` per ``window`` seconds, under keys of ``prefix``."""

    algorithm: str
    limit: int
    window: int
    prefix: str


class SyncLimiter(Protocol):
    def hit(self, key: str) -> bool: ...

    def close(self) -> None: ...


class AsyncLimiter(Protocol):
    async def hit(self, key: str) -> bool: ...

    async def aclose(self) -> None: ...


def package_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


class Library(ABC):
    """One rate-limiting library: how to build its sync, async and memory limiters."""

    name: str
    distribution: str
    # ratewall algorithm -> the class or configuration of this library that implements it
    algorithms: Mapping[str, str]
    # The uvicorn factory (``module:function`` in benchmarks/) of the trivial app behind this
    # library's ASGI middleware, configured by asgi_apps' environment variables; None: none.
    asgi_app: str | None = None
    # A reference app of the ASGI mode (see Reference), not a rate limiter.
    reference: bool = False
    # Whether asgi_app adds RateLimit fields to allowed responses (the ASGI mode checks it).
    asgi_fields: bool = True

    @property
    def version(self) -> str:
        return package_version(self.distribution)

    @abstractmethod
    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter: ...

    @abstractmethod
    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter: ...

    @abstractmethod
    def open_memory(self, spec: LimitSpec) -> SyncLimiter: ...


# -- ratewall --------------------------------------------------------------------------------

_POLICY = "bench"


class _RatewallSync:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._check = limiter.check

    def hit(self, key: str) -> bool:
        return self._check(key, _POLICY).allowed

    def close(self) -> None:
        self._limiter.close()


class _RatewallAsync:
    def __init__(self, limiter: AsyncRateLimiter) -> None:
        self._limiter = limiter
        self._check = limiter.check

    async def hit(self, key: str) -> bool:
        return (await self._check(key, _POLICY)).allowed

    async def aclose(self) -> None:
        await self._limiter.aclose()


class Ratewall(Library):
    name = "ratewall"
    distribution = "ratewall"
    algorithms: Mapping[str, str] = {a: f"Policy(algorithm={a!r})" for a in ALGORITHMS}
    asgi_app = "asgi_apps:limited"

    @staticmethod
    def _policies(spec: LimitSpec) -> dict[str, Policy]:
        return {_POLICY: Policy(spec.limit, spec.window, spec.algorithm)}

    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter:
        return _RatewallSync(RateLimiter(self._policies(spec), url, key_prefix=spec.prefix))

    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter:
        limiter = AsyncRateLimiter(self._policies(spec), url, key_prefix=spec.prefix)
        return _RatewallAsync(limiter)

    def open_memory(self, spec: LimitSpec) -> SyncLimiter:
        return _RatewallSync(RateLimiter(self._policies(spec), "memory://"))


# -- limits ----------------------------------------------------------------------------------

_LIMITS_STRATEGIES = {
    "fixed_window": "FixedWindowRateLimiter",
    "sliding_window": "SlidingWindowCounterRateLimiter",
    "sliding_log": "MovingWindowRateLimiter",
}


class _LimitsSync:
    def __init__(self, strategy: Any, item: Any, close: Callable[[], object]) -> None:
        self._hit = strategy.hit
        self._item = item
        self._close = close

    def hit(self, key: str) -> bool:
        allowed: bool = self._hit(self._item, key)
        return allowed

    def close(self) -> None:
        self._close()


class _LimitsAsync:
    def __init__(self, strategy: Any, item: Any, client: Any) -> None:
        self._hit = strategy.hit
        self._item = item
        self._client = client

    async def hit(self, key: str) -> bool:
        allowed: bool = await self._hit(self._item, key)
        return allowed

    async def aclose(self) -> None:
        await self._client.aclose()


class Limits(Library):
    """limits: one strategy object per algorithm over a storage; ``hit`` returns a bool.

    Async uses its redis-py bridge (``implementation="redispy"``): its default coredis client
    was 1.6-2.2x slower in the baseline, and redis.asyncio is what every other adapter uses.
    """

    name = "limits"
    distribution = "limits"
    algorithms = _LIMITS_STRATEGIES

    @staticmethod
    def _item(spec: LimitSpec) -> Any:
        import limits

        return limits.RateLimitItemPerSecond(spec.limit, spec.window)

    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter:
        import limits.storage
        import limits.strategies

        storage = limits.storage.RedisStorage(url, key_prefix=spec.prefix)
        strategy = getattr(limits.strategies, _LIMITS_STRATEGIES[spec.algorithm])(storage)
        return _LimitsSync(strategy, self._item(spec), storage.storage.close)

    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter:
        import limits.aio.storage
        import limits.aio.strategies

        storage = limits.aio.storage.RedisStorage(
            f"async+{url}",
            implementation="redispy",
            key_prefix=spec.prefix,
            max_connections=POOL_SIZE,
        )
        strategy = getattr(limits.aio.strategies, _LIMITS_STRATEGIES[spec.algorithm])(storage)
        bridge: Any = storage.bridge  # its redis.asyncio client, to close with the limiter
        return _LimitsAsync(strategy, self._item(spec), bridge.storage)

    def open_memory(self, spec: LimitSpec) -> SyncLimiter:
        import limits.storage
        import limits.strategies

        storage = limits.storage.MemoryStorage()
        strategy = getattr(limits.strategies, _LIMITS_STRATEGIES[spec.algorithm])(storage)
        return _LimitsSync(strategy, self._item(spec), storage.reset)


# -- throttled-py ----------------------------------------------------------------------------


class _ThrottledSync:
    def __init__(self, throttle: Any, close: Callable[[], object]) -> None:
        self._limit = throttle.limit
        self._close = close

    def hit(self, key: str) -> bool:
        return not self._limit(key).limited

    def close(self) -> None:
        self._close()


class _ThrottledAsync:
    def __init__(self, throttle: Any, store: Any) -> None:
        self._limit = throttle.limit
        self._store = store

    async def hit(self, key: str) -> bool:
        return not (await self._limit(key)).limited

    async def aclose(self) -> None:
        # The store creates its client lazily and has no close(); release the pool we gave it.
        backend = getattr(self._store, "_backend", None)
        client = getattr(backend, "_client", None)
        if client is not None:
            await client.aclose()


class Throttled(Library):
    """throttled-py: a ``Throttled(using=..., quota=..., store=...)`` per limiter; ``limit(key)``
    returns a result whose ``limited`` flag is the answer (non-blocking: ``timeout=-1``)."""

    name = "throttled"
    distribution = "throttled-py"
    algorithms: Mapping[str, str] = {
        "fixed_window": 'Throttled(using="fixed_window")',
        "sliding_window": 'Throttled(using="sliding_window")',
        "token_bucket": 'Throttled(using="token_bucket")',
        "gcra": 'Throttled(using="gcra")',
    }

    @staticmethod
    def _quota(spec: LimitSpec) -> Any:
        from throttled import per_duration

        return per_duration(timedelta(seconds=spec.window), spec.limit)

    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter:
        from throttled import RedisStore
        from throttled import Throttled as SyncThrottled

        # A pool of its own (pools are cached per URL by default), so closing it here
        # cannot disturb another adapter.
        store = RedisStore(server=url, options={"REUSE_CONNECTION": False})
        throttle = SyncThrottled(
            using=spec.algorithm, quota=self._quota(spec), store=store, key_prefix=spec.prefix
        )

        def close() -> None:
            client = getattr(getattr(store, "_backend", None), "_client", None)
            if client is not None:
                client.close()

        return _ThrottledSync(throttle, close)

    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter:
        from throttled.asyncio import RedisStore as AsyncRedisStore
        from throttled.asyncio import Throttled as AsyncThrottled

        store = AsyncRedisStore(
            server=url, options={"CONNECTION_POOL_KWARGS": {"max_connections": POOL_SIZE}}
        )
        throttle = AsyncThrottled(
            using=spec.algorithm, quota=self._quota(spec), store=store, key_prefix=spec.prefix
        )
        return _ThrottledAsync(throttle, store)

    def open_memory(self, spec: LimitSpec) -> SyncLimiter:
        from throttled import MemoryStore
        from throttled import Throttled as SyncThrottled

        throttle = SyncThrottled(
            using=spec.algorithm,
            quota=self._quota(spec),
            store=MemoryStore(),
            key_prefix=spec.prefix,
        )
        return _ThrottledSync(throttle, lambda: None)


# -- pyrate-limiter --------------------------------------------------------------------------

# A builder makes the bucket of one key; with an async Redis client it may return a coroutine.
_BucketBuilder = Callable[[str], Any]


def _per_key_factory(build: _BucketBuilder) -> Any:
    """pyrate's documented per-name routing (README "Custom routing with BucketFactory"):
    one bucket per key, created on first use and registered with the leaker like
    ``BucketFactory.create`` does."""
    from pyrate_limiter import BucketFactory, RateItem

    class PerKeyFactory(BucketFactory):
        def __init__(self) -> None:
            self._buckets: dict[str, Any] = {}

        def _register(self, name: str, bucket: Any) -> Any:
            self.schedule_leak(bucket)
            self._buckets[name] = bucket
            return bucket

        def wrap_item(self, name: str, weight: int = 1) -> Any:
            bucket = self._buckets.get(name)
            if bucket is None:
                made = build(name)
                if isawaitable(made):
                    return self._wrap_when_built(name, weight, made)
                bucket = self._register(name, made)
            return RateItem(name, bucket.now(), weight=weight)

        async def _wrap_when_built(self, name: str, weight: int, made: Awaitable[Any]) -> Any:
            bucket = self._buckets.get(name) or self._register(name, await made)
            return RateItem(name, bucket.now(), weight=weight)

        def get(self, item: Any) -> Any:
            return self._buckets[item.name]

    return PerKeyFactory()


def _stop_leaking(limiter: Any) -> None:
    """Deregister every bucket from pyrate's background leaker (which also cancels its asyncio
    task), then close the limiter: otherwise a leak pass may still be using the client."""
    for bucket in limiter.buckets():
        limiter.dispose(bucket)
    limiter.close()


class _PyrateSync:
    def __init__(self, limiter: Any) -> None:
        self._limiter = limiter
        self._acquire = limiter.try_acquire

    def hit(self, key: str) -> bool:
        allowed: bool = self._acquire(key, blocking=False)
        return allowed

    def close(self) -> None:
        # The client is left to the garbage collector: the leaker's thread may be in the
        # middle of a pass (one ZREMRANGEBYSCORE per bucket) and exits by itself afterwards.
        _stop_leaking(self._limiter)


class _PyrateAsync:
    def __init__(self, limiter: Any, client: Any) -> None:
        self._limiter = limiter
        self._acquire = limiter.try_acquire_async
        self._client = client

    async def hit(self, key: str) -> bool:
        allowed: bool = await self._acquire(key, blocking=False)
        return allowed

    async def aclose(self) -> None:
        leaker = self._limiter.bucket_factory._leaker
        task = leaker.aio_leak_task if leaker is not None else None
        _stop_leaking(self._limiter)
        # End the leak task before its client closes. A cancellation that lands inside a
        # redis-py call can be absorbed, leaving the task asleep for its 10 s interval: retry.
        for _ in range(100):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.02)
        await self._client.aclose()


class Pyrate(Library):
    """pyrate-limiter: a ``Limiter`` over a per-key ``BucketFactory``; ``try_acquire(key,
    blocking=False)``. Window algorithms are its ``RedisBucket`` (a sorted set) with the
    algorithm object; GCRA is a ``StateBucket`` over a ``RedisStateStore`` (its
    ``TokenBucket`` is the same class, so it is not run twice)."""

    name = "pyrate"
    distribution = "pyrate-limiter"
    algorithms: Mapping[str, str] = {
        "fixed_window": "RedisBucket(algorithm=FixedWindow())",
        "sliding_log": "RedisBucket(algorithm=SlidingWindowLog())",
        "gcra": "StateBucket(algorithm=GCRA(), store=RedisStateStore)",
    }

    @staticmethod
    def _builder(spec: LimitSpec, client: Any | None) -> _BucketBuilder:
        import pyrate_limiter as pl

        rates = [pl.Rate(spec.limit, spec.window * 1000)]
        if spec.algorithm == "gcra":
            if client is None:
                return lambda _name: pl.StateBucket(rates, algorithm=pl.GCRA())
            return lambda name: pl.StateBucket(
                rates,
                algorithm=pl.GCRA(),
                store=pl.RedisStateStore(client, f"{spec.prefix}:{name}"),
            )
        algorithm = pl.FixedWindow() if spec.algorithm == "fixed_window" else pl.SlidingWindowLog()
        if client is None:
            return lambda _name: pl.InMemoryBucket(rates, algorithm=algorithm)
        return lambda name: pl.RedisBucket.init(rates, client, f"{spec.prefix}:{name}", algorithm)

    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter:
        from pyrate_limiter import Limiter

        client = redis.Redis.from_url(url)
        return _PyrateSync(Limiter(_per_key_factory(self._builder(spec, client))))

    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter:
        from pyrate_limiter import Limiter

        client = redis.asyncio.Redis.from_url(url, max_connections=POOL_SIZE)
        return _PyrateAsync(Limiter(_per_key_factory(self._builder(spec, client))), client)

    def open_memory(self, spec: LimitSpec) -> SyncLimiter:
        from pyrate_limiter import Limiter

        return _PyrateSync(Limiter(_per_key_factory(self._builder(spec, None))))


# -- reference apps --------------------------------------------------------------------------


class Reference(Library):
    """Not a rate limiter: an app of the ASGI mode that does part of what ratewall's
    middleware does (see ``asgi_apps``), measured against the bare app like the middleware,
    to show what that part costs the server. Only in ASGI phases, and only when named in
    ``--libraries``; never anyone's peer."""

    distribution = "ratewall"
    algorithms: Mapping[str, str] = dict.fromkeys(ALGORITHMS, "reference app")
    reference = True

    def __init__(self, name: str, asgi_app: str, *, fields: bool = True) -> None:
        self.name = name
        self.asgi_app = asgi_app
        self.asgi_fields = fields

    def _only_asgi(self) -> NoReturn:
        raise TypeError(f"{self.name} is a reference app of the ASGI mode, not a limiter")

    def open_sync(self, spec: LimitSpec, url: str) -> SyncLimiter:
        self._only_asgi()

    async def open_async(self, spec: LimitSpec, url: str) -> AsyncLimiter:
        self._only_asgi()

    def open_memory(self, spec: LimitSpec) -> SyncLimiter:
        self._only_asgi()


# Every library and reference app by name; a run measures the libraries unless told otherwise.
LIBRARIES: Mapping[str, Library] = {
    library.name: library
    for library in (
        Ratewall(),
        Limits(),
        Throttled(),
        Pyrate(),
        Reference("ref-fields", "asgi_apps:fields"),
        Reference("ref-headers", "asgi_apps:headers"),
        Reference("ref-minimal", "asgi_apps:minimal"),
        Reference("ratewall-quiet", "asgi_apps:limited_quietly", fields=False),
    )
}


# -- floors ----------------------------------------------------------------------------------

# The cheapest script call there is: one key, no work. What redis-py costs per round trip.
TRIVIAL_SCRIPT = "return 1"


class SyncFloor:
    """A bare redis-py ``EVALSHA`` of a trivial script (sync ``redis.Redis``)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._sha = self._client.script_load(TRIVIAL_SCRIPT)
        self._evalsha = self._client.evalsha
        self._prefix = prefix

    def hit(self, key: str) -> bool:
        reply: int = self._evalsha(self._sha, 1, self._prefix + key)
        return reply == 1

    def close(self) -> None:
        self._client.close()


class AsyncFloor:
    """The same ``EVALSHA`` through ``redis.asyncio.Redis`` with a pool as big as the peers'."""

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis.asyncio.Redis.from_url(url, max_connections=POOL_SIZE)
        self._sha = ""
        self._evalsha = self._client.evalsha
        self._prefix = prefix

    async def start(self) -> AsyncFloor:
        self._sha = await self._client.script_load(TRIVIAL_SCRIPT)
        return self

    async def hit(self, key: str) -> bool:
        reply: int = await self._evalsha(self._sha, 1, self._prefix + key)
        return reply == 1

    async def aclose(self) -> None:
        await self._client.aclose()


class DictWindow:
    """The memory floor: the smallest honest fixed window, a dict of [count, window end]."""

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._windows: dict[str, list[float]] = {}

    def hit(self, key: str) -> bool:
        now = time.monotonic()
        entry = self._windows.get(key)
        if entry is None or now >= entry[1]:
            entry = self._windows[key] = [0, now + self._window]
        if entry[0] >= self._limit:
            return False
        entry[0] += 1
        return True

    def close(self) -> None:
        self._windows.clear()
