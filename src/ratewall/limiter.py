"""The two facades. They only do I/O; every decision is made by :mod:`ratewall.core`, or,
on a store in this process (no I/O at all: the memory store), by the store itself in one
call. Both paths make their decisions through the policy's one exit (:mod:`ratewall._exit`),
where observers attach."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._clock import Clock, micros_from
from ._urls import redacted
from ._watch import ConfigWatcher
from .core import CHECK, PEEK, RESET, Core, Plan
from .decision import Decision
from .errors import ConfigError, StoreError
from .keys import DEFAULT_PREFIX
from .metrics import Metrics, observer_for
from .observer import Observer
from .policy import Policy
from .stores.base import DEFAULT_TIMEOUT, AsyncStore, LocalStore, Store
from .stores.batching import AsyncRedisStore
from .stores.memory import MemoryStore
from .stores.redis import RedisStore, parse_store_url

if TYPE_CHECKING:
    from .config import Config

__all__ = ["AsyncRateLimiter", "RateLimiter"]

_log = logging.getLogger("ratewall")


class _Limiter:
    """What both facades share: construction, configuration, introspection. No I/O."""

    # A store that executes calls (Redis/Valkey), or one in this process; exactly one is set.
    _local: LocalStore | None
    #: The counters ``metrics=`` attached (a reload reports to their ``record_reload``).
    metrics: Metrics | None
    # from_config(path, watch=True): what reloads the limiter when the file changes.
    _watcher: ConfigWatcher | None = None

    def __init__(
        self,
        policies: Mapping[str, Policy],
        store: str | Store | AsyncStore | LocalStore = "memory://",
        *,
        key_prefix: str = DEFAULT_PREFIX,
        local_cache_size: int = 10_000,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        observer: Observer | None = None,
        metrics: str | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 1.0,
    ) -> None:
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ValueError(f"timeout must be seconds in (0, 3600], got {timeout!r}")
        if type(breaker_threshold) is not int or breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be an int >= 1, got {breaker_threshold!r}")
        if not isinstance(breaker_cooldown, int | float) or not 0 < breaker_cooldown <= 3600:
            raise ValueError(
                f"breaker_cooldown must be seconds in (0, 3600], got {breaker_cooldown!r}"
            )
        local_now = micros_from(clock)
        # metrics="prometheus"/"otel": the process's shared counters hear every event too.
        observer, self.metrics = observer_for(metrics, observer)
        if isinstance(store, str):
            kind, _ = parse_store_url(store)
            self.store_url = store
            # The store's own clock only when one is injected: else Redis uses its TIME.
            built = self._make_store(
                kind, store, timeout, local_now if (clock or kind == "memory") else None
            )
        else:
            self.store_url = getattr(store, "url", None) or f"<{type(store).__name__}>"
            if not isinstance(store, LocalStore):
                self._check_store(store)
            built = store
        self._local = built if isinstance(built, LocalStore) else None
        if self._local is not None:
            # Everything is local already: a deny cache would only duplicate the store.
            local_cache_size = 0
        self._core = Core(
            policies,
            key_prefix=key_prefix,
            local_cache_size=local_cache_size,
            local_clock=local_now,
            breaker_threshold=breaker_threshold,
            breaker_cooldown=breaker_cooldown,
            slot_of=getattr(built, "slot_of", None),
            observer=observer,
        )
        if self.metrics is not None:
            self.metrics.watch(self._core.policies)
        if self._local is not None:
            self._local.attach(self._core)
        elif observer is not None:
            built.observe(observer)  # type: ignore[union-attr]  # a Store or an AsyncStore
        self._store: Any = built
        self._observer = observer

    def _make_store(
        self, kind: str, url: str, timeout: float, clock: Any
    ) -> Store | AsyncStore | LocalStore:
        raise NotImplementedError

    def _check_store(self, store: object) -> None:
        """Raise TypeError unless ``store`` is a store this facade can use."""
        raise NotImplementedError

    @property
    def local_store(self) -> LocalStore | None:
        """The store, when it is in this process (the memory store): its decisions need no
        I/O, so synchronous code (the ASGI middleware's shortcut) may call its ``check``
        directly, even for an :class:`AsyncRateLimiter`. ``None`` for Redis/Valkey."""
        return self._local

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | Config,
        store: str | Store | AsyncStore | LocalStore | None = None,
        *,
        clock: Clock | None = None,
        timeout: float | None = None,
        observer: Observer | None = None,
        metrics: str | None = None,
        watch: bool = False,
    ) -> Self:
        """A limiter for the policies and settings of a JSON, YAML or TOML file (or of a
        :class:`~ratewall.config.Config` already loaded).

        ``store`` (a URL or a store object) overrides the file's store URL (with neither,
        the memory store is used); ``timeout`` overrides the file's store timeout, and
        ``metrics`` its ``metrics`` setting.

        ``watch=True`` (a path only; needs ``ratewall[watch]``) reloads the policies each
        time the file changes, as :meth:`reload` does: a bad edit is logged and the old
        config stays. ``close()`` stops watching.
        """
        from .config import Config, load_config

        if watch and isinstance(path, Config):
            raise TypeError("watch=True needs the config file's path, not a loaded Config")
        config = path if isinstance(path, Config) else load_config(path)
        limiter = cls(
            config.policies,
            store or config.store or "memory://",
            key_prefix=config.key_prefix,
            local_cache_size=config.local_cache_size,
            timeout=config.timeout if timeout is None else timeout,
            clock=clock,
            observer=observer,
            metrics=config.metrics if metrics is None else metrics,
        )
        if watch and not isinstance(path, Config):
            limiter._watcher = ConfigWatcher(path, limiter._reload)
        return limiter

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._core.policies

    def _reload(self, source: str | os.PathLike[str] | Mapping[str, object]) -> None:
        """Swap in the policies of ``source`` (a config file's path, or a mapping in config
        form): decisions already under way finish under the old ones, the next use the new.
        No lock is taken on the hot path: the swap is one reference assignment.

        Only policies change: the store, key prefix, cache size and timeout stay as built
        (they need a new limiter). State carries over per policy: an unchanged policy keeps
        its counts; a changed limit, window or burst applies to the identity's state from
        the next decision; a changed algorithm starts from empty state (the stores never
        read one algorithm's state as another's). A bad source raises
        :class:`~ratewall.ConfigError` and changes nothing."""
        from .config import load_config, parse_config

        try:
            if isinstance(source, Mapping):
                config = parse_config(source, source="<reload>")
            else:
                config = load_config(source)
            core = self._core.reloaded(config.policies)
        except ConfigError as error:
            _log.warning("ratewall: config reload rejected, the old one stays: %s", error)
            _tell_reload(self._observer, error)
            raise
        if self._local is not None:
            self._local.attach(core)
        self._core = core
        _log.info("ratewall: config reloaded from %s", config.source)
        _tell_reload(self._observer, None)

    def __repr__(self) -> str:
        store = redacted(self.store_url)  # never the password
        return f"{type(self).__name__}(policies={sorted(self.policies)!r}, store={store!r})"


Item = tuple[str, str] | tuple[str, str, int]

_CHECK_MANY_DOC = """Check one request against several ``(identity, policy[, cost])`` items at once.

        All or nothing: the request may proceed only if every returned decision is allowed;
        if any is refused, nothing is consumed, and the allowed decisions describe what
        *would* have been consumed. One store round trip (on a Redis Cluster, the items must
        share a hash slot, i.e. one identity; otherwise use separate calls)."""


def _tell_reload(observer: Observer | None, error: BaseException | None) -> None:
    if observer is None:
        return
    try:
        observer.on_reload(error)
    except Exception:  # noqa: BLE001 - an observer's bug must not fail the reload
        _log.exception("ratewall observer failed on a reload")


def _unreachable(limiter: _Limiter, error: Exception) -> StoreError:
    return StoreError(
        f"the rate-limit store {redacted(limiter.store_url)!r} did not answer: "
        f"{type(error).__name__}: {error}"
    )


def _reset_failed(plan: Plan, error: Exception) -> StoreError:
    return StoreError(f"reset of {plan.call.key!r} failed: {type(error).__name__}: {error}")


class RateLimiter(_Limiter):
    """Checks requests against named policies, synchronously. Thread-safe.

    >>> limiter = RateLimiter({"login": Policy(limit=5, window=60)})
    >>> limiter.check("user_123", "login").allowed
    True
    """

    def _make_store(self, kind: str, url: str, timeout: float, clock: Any) -> Any:
        if kind == "memory":
            return MemoryStore(clock)
        return RedisStore(url, timeout=timeout, clock=clock)

    def _check_store(self, store: object) -> None:
        if not isinstance(store, Store):
            raise TypeError(
                f"RateLimiter needs a store URL, a ratewall.stores.Store (such as RedisStore) "
                f"or a MemoryStore; got {type(store).__name__}"
                + (
                    " (an asyncio store: use AsyncRateLimiter)"
                    if isinstance(store, AsyncStore)
                    else ""
                )
            )

    def reload(self, source: str | os.PathLike[str] | Mapping[str, object]) -> None:
        self._reload(source)

    reload.__doc__ = _Limiter._reload.__doc__

    def ping(self) -> float:
        """Ask the store whether it answers, as at startup: the round trip in seconds (0.0
        for a store in this process). Raises :class:`StoreError`, within the store timeout,
        if it does not answer, whatever the policies' failure modes."""
        if self._local is not None:
            return 0.0
        try:
            seconds: float = self._store.ping()
        except Exception as error:
            raise _unreachable(self, error) from error
        return seconds

    def check(
        self, identity: str, policy: str, cost: int = 1, *, tier: str | None = None
    ) -> Decision:
        """Decide a request of ``cost`` units; consumes them only if allowed. ``tier``
        picks one of the policy's tiers (an identity's override still wins)."""
        if self._local is not None:
            return self._local.check(identity, policy, cost, tier)
        return self._decide(self._core.plan(identity, policy, CHECK, cost, tier))

    def peek(
        self, identity: str, policy: str, cost: int = 1, *, tier: str | None = None
    ) -> Decision:
        """The decision :meth:`check` would give now, consuming nothing."""
        if self._local is not None:
            return self._local.peek(identity, policy, cost, tier)
        return self._decide(self._core.plan(identity, policy, PEEK, cost, tier))

    def reset(self, identity: str, policy: str) -> None:
        """Forget ``identity``'s state for ``policy`` (everywhere, and in this node's cache).

        Raises :class:`StoreError` if the store fails, whatever the failure mode.
        """
        if self._local is not None:
            self._local.reset(identity, policy)
            return
        plan = self._core.plan(identity, policy, RESET)
        try:
            self._store.run_one(plan.call)
        except Exception as error:
            raise _reset_failed(plan, error) from error
        # A refusal in flight during the reset may have re-filled the deny cache.
        self._core.deny_cache.forget(plan.call.key)

    def check_many(self, items: Sequence[Item]) -> list[Decision]:
        if self._local is not None:
            return self._local.check_many(items)
        plan = self._core.plan_many(items, CHECK)
        if plan.decisions is not None:
            return plan.decisions
        try:
            replies = self._store.run(plan.requests)
        except Exception as error:  # noqa: BLE001 - the policies' failure modes handle any failure
            return self._core.failure_many(plan, error)
        return self._core.decide_many(plan, replies)

    check_many.__doc__ = _CHECK_MANY_DOC

    def _decide(self, plan: Plan) -> Decision:
        if plan.decision is not None:
            return plan.decision
        try:
            reply = self._store.run_one(plan.call)
        except Exception as error:  # noqa: BLE001 - the policy's failure mode handles any failure
            return self._core.failure(plan, error)
        return self._core.decide(plan, reply)

    def close(self) -> None:
        """Release the store's connections (and stop watching the config file). The limiter
        must not be used afterwards."""
        self._stop_watching()
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRateLimiter(_Limiter):
    """The asyncio twin of :class:`RateLimiter`: the same names, awaitable."""

    def _make_store(self, kind: str, url: str, timeout: float, clock: Any) -> Any:
        if kind == "memory":
            return MemoryStore(clock)
        return AsyncRedisStore(url, timeout=timeout, clock=clock)

    def _check_store(self, store: object) -> None:
        if not isinstance(store, AsyncStore):
            raise TypeError(
                f"AsyncRateLimiter needs a store URL, a ratewall.stores.AsyncStore (such as "
                f"AsyncRedisStore) or a MemoryStore; got {type(store).__name__}"
                + (" (a synchronous store: use RateLimiter)" if isinstance(store, Store) else "")
            )

    async def reload(self, source: str | os.PathLike[str] | Mapping[str, object]) -> None:
        self._reload(source)

    reload.__doc__ = _Limiter._reload.__doc__

    async def ping(self) -> float:
        """Ask the store whether it answers, as at startup: the round trip in seconds (0.0
        for a store in this process). Raises :class:`StoreError`, within the store timeout,
        if it does not answer, whatever the policies' failure modes."""
        if self._local is not None:
            return 0.0
        try:
            seconds: float = await self._store.aping()
        except Exception as error:
            raise _unreachable(self, error) from error
        return seconds

    async def check(
        self, identity: str, policy: str, cost: int = 1, *, tier: str | None = None
    ) -> Decision:
        """Decide a request of ``cost`` units; consumes them only if allowed. ``tier``
        picks one of the policy's tiers (an identity's override still wins)."""
        if self._local is not None:
            return self._local.check(identity, policy, cost, tier)
        # _decide's body, inlined (keep the two in step): one coroutine less per decision,
        # about 4% of the process's work per batched decision.
        plan = self._core.plan(identity, policy, CHECK, cost, tier)
        if plan.decision is not None:
            return plan.decision
        try:
            reply = await self._store.arun_one(plan.call)
        except Exception as error:  # noqa: BLE001 - the policy's failure mode handles any failure
            return self._core.failure(plan, error)
        return self._core.decide(plan, reply)

    async def peek(
        self, identity: str, policy: str, cost: int = 1, *, tier: str | None = None
    ) -> Decision:
        """The decision :meth:`check` would give now, consuming nothing."""
        if self._local is not None:
            return self._local.peek(identity, policy, cost, tier)
        return await self._decide(self._core.plan(identity, policy, PEEK, cost, tier))

    async def reset(self, identity: str, policy: str) -> None:
        """Forget ``identity``'s state for ``policy`` (everywhere, and in this node's cache).

        Raises :class:`StoreError` if the store fails, whatever the failure mode.
        """
        if self._local is not None:
            self._local.reset(identity, policy)
            return
        plan = self._core.plan(identity, policy, RESET)
        try:
            await self._store.arun_one(plan.call)
        except Exception as error:
            raise _reset_failed(plan, error) from error
        # A refusal in flight during the reset may have re-filled the deny cache.
        self._core.deny_cache.forget(plan.call.key)

    async def check_many(self, items: Sequence[Item]) -> list[Decision]:
        if self._local is not None:
            return self._local.check_many(items)
        plan = self._core.plan_many(items, CHECK)
        if plan.decisions is not None:
            return plan.decisions
        try:
            replies = await self._store.arun(plan.requests)
        except Exception as error:  # noqa: BLE001 - the policies' failure modes handle any failure
            return self._core.failure_many(plan, error)
        return self._core.decide_many(plan, replies)

    check_many.__doc__ = _CHECK_MANY_DOC

    async def _decide(self, plan: Plan) -> Decision:
        if plan.decision is not None:
            return plan.decision
        try:
            reply = await self._store.arun_one(plan.call)
        except Exception as error:  # noqa: BLE001 - the policy's failure mode handles any failure
            return self._core.failure(plan, error)
        return self._core.decide(plan, reply)

    async def aclose(self) -> None:
        """Release the store's connections (and stop watching the config file). The limiter
        must not be used afterwards."""
        self._stop_watching()
        await self._store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
