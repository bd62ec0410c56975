"""The two facades. They only do I/O; every decision is made by :mod:`ratewall.core`, or,
on a store in this process (no I/O at all: the memory store), by the store itself in one
call. Both paths make their decisions through the policy's one exit (:mod:`ratewall._exit`),
where observers attach."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeGuard, TypeVar

from ._calls import CHECK, PEEK, RESET, Reply, SlotCall
from ._clock import Clock, micros_from
from ._urls import redacted
from ._waiting import check_timeout, rate_wait, slot_wait
from ._watch import ConfigWatcher
from .algorithms import SLOT_ACQUIRE, SLOT_PEEK, SLOT_RELEASE, SLOT_RESET
from .core import (
    DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_THRESHOLD,
    Core,
    Plan,
    SlotPlan,
)
from .decision import Decision
from .errors import ConfigError, RateLimitExceeded, StoreError
from .keys import DEFAULT_PREFIX
from .metrics import Metrics, observer_for
from .observer import Observer
from .policy import Policy
from .slots import AsyncSlot, Slot, SlotKeeper, new_token
from .stores.base import DEFAULT_TIMEOUT, AsyncStore, LocalStore, Store
from .stores.batching import AsyncRedisStore
from .stores.memory import MemoryStore
from .stores.redis import RedisStore, parse_store_url

if TYPE_CHECKING:
    from .config import Config

__all__ = ["AsyncRateLimiter", "RateLimiter"]

_log = logging.getLogger("ratewall")

P = ParamSpec("P")
R = TypeVar("R")
Identity = str | Callable[..., str]


#: The kind of store a facade executes calls on: Store for RateLimiter, AsyncStore for
#: AsyncRateLimiter.
_StoreT = TypeVar("_StoreT", Store, AsyncStore)


class _Limiter(Generic[_StoreT]):
    """What both facades share: construction, configuration, introspection. No I/O."""

    # A store that executes calls (Redis/Valkey), or one in this process (the memory
    # store); exactly one is set: ``_store`` only when ``_local`` is None.
    _local: LocalStore | None
    _store: _StoreT
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
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN,
        sleep: Callable[[float], Any] | None = None,
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
        # Waiting mode's time: the limiter's clock, and its sleep (injectable together, so
        # that tests wait on a FakeClock: ``sleep=clock.sleep``, or ``clock.asleep``).
        self._now_us = local_now
        self._sleep: Any = sleep
        # metrics="prometheus"/"otel": the process's shared counters hear every event too.
        observer, self.metrics = observer_for(metrics, observer)
        if isinstance(store, str):
            kind, _ = parse_store_url(store)
            self.store_url = store
            # The store's own clock only when one is injected: else Redis uses its TIME.
            built: _StoreT | LocalStore = self._make_store(
                kind, store, timeout, local_now if (clock or kind == "memory") else None
            )
        else:
            self.store_url = getattr(store, "url", None) or f"<{type(store).__name__}>"
            if isinstance(store, LocalStore) or self._accepts(store):
                built = store
            else:
                raise self._wrong_store(store)
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
        if isinstance(built, LocalStore):
            built.attach(self._core)
        else:
            self._store = built
            if observer is not None:
                built.observe(observer)
        self._observer = observer
        self._bind_local()

    def _bind_local(self) -> None:
        """A facade whose store decides in this process may hand its callers the store's own
        methods (see :meth:`RateLimiter._bind_local`)."""

    # What makes the two facades differ at construction, set by each: the store kind it
    # executes calls on (a protocol, runtime-checkable), the Redis/Valkey store it builds
    # from a URL, and the other facade with its store kind, named when a store is the
    # other facade's.
    _kind: type
    _redis: Callable[..., _StoreT]
    _other: tuple[str, type, str]

    def _make_store(
        self, kind: str, url: str, timeout: float, clock: Callable[[], int] | None
    ) -> _StoreT | LocalStore:
        """The store a URL names (``kind`` from :func:`parse_store_url`)."""
        if kind == "memory":
            return MemoryStore(micros_from(None) if clock is None else clock)
        return self._redis(url, timeout=timeout, clock=clock)

    def _accepts(self, store: object) -> TypeGuard[_StoreT]:
        """Whether ``store`` is a store object this facade executes calls on."""
        return isinstance(store, self._kind)

    def _wrong_store(self, store: object) -> TypeError:
        """The error for a store object this facade cannot use."""
        other, other_kind, which = self._other
        return TypeError(
            f"{type(self).__name__} needs a store URL, a ratewall.stores.{self._kind.__name__} "
            f"(such as {getattr(self._redis, '__name__', self._redis)}) or a MemoryStore; got "
            f"{type(store).__name__}"
            + (f" ({which}: use {other})" if isinstance(store, other_kind) else "")
        )

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
        the memory store is used: per process, so not shared between workers). No
        environment variable is read; to take the store from one, pass it:
        ``from_config(path, os.environ.get("RATEWALL_STORE"))``. ``timeout`` overrides the
        file's store timeout, and
        ``metrics`` its ``metrics`` setting.

        ``watch=True`` (a path only; needs ``ratewall[watch]``) reloads the policies each
        time the file changes, as :meth:`reload` does: a bad edit is logged and the old
        config stays. ``close()`` stops watching.
        """
        from .config import Config, load_config

        if watch and isinstance(path, Config):
            raise TypeError("watch=True needs the config file's path, not a loaded Config")
        config = path if isinstance(path, Config) else load_config(path)
        chosen = store or config.store or "memory://"
        timeout = config.timeout if timeout is None else timeout
        limiter = cls(
            config.policies,
            cls._configured_store(chosen, config, timeout, clock),
            key_prefix=config.key_prefix,
            local_cache_size=config.local_cache_size,
            timeout=timeout,
            clock=clock,
            observer=observer,
            metrics=config.metrics if metrics is None else metrics,
            breaker_threshold=config.breaker.threshold,
            breaker_cooldown=config.breaker.cooldown,
        )
        if watch and not isinstance(path, Config):
            limiter._watcher = ConfigWatcher(path, limiter._reload)
        return limiter

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    @classmethod
    def _configured_store(
        cls,
        store: str | Store | AsyncStore | LocalStore,
        config: Config,
        timeout: float,
        clock: Clock | None,
    ) -> str | Store | AsyncStore | LocalStore:
        """The store ``from_config`` passes on: ``store`` itself, unless the config has
        settings that only a store built here can take (the async ``batching`` section)."""
        return store

    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._core.policies

    def exempt(self, policy: str) -> Decision:
        """The decision for a request that ``policy`` does not limit for a reason outside
        the identity (the HTTP layer calls it for each policy whose ``exempt_networks``
        hold the client's address): allowed with the whole limit left, ``source ==
        "exempt"``, nothing stored or asked of the store. It leaves through the policy's
        decision exit like an exempt identity's, so metrics count it under the outcome
        ``exempt`` and an observer sees it. Plain (not awaitable) on both limiters: no I/O.
        An unknown policy is a ``KeyError``."""
        exits = self._core.exits
        if policy not in exits:
            self._core.reject("", policy, 1)
        return exits[policy].exempt()

    def _seconds_left(self, deadline: int | None) -> float | None:
        return None if deadline is None else (deadline - self._now_us()) / 1_000_000

    def _deadline(self, timeout: object) -> int | None:
        seconds = check_timeout(timeout)
        return None if seconds is None else self._now_us() + round(seconds * 1_000_000)

    def _slot_store(self, name: str) -> Any:
        """The object that runs slot operations (the memory store, or the store's
        ``run_slot``/``arun_slot``); a clear TypeError for a store without them."""
        store = self._local if self._local is not None else self._store
        if not hasattr(store, name):
            raise TypeError(
                f"the store {type(store).__name__} does not support concurrency policies "
                f"(it has no {name}); use the memory store or RedisStore/AsyncRedisStore"
            )
        return store

    def _limited_check(self, policy: str, identity: Identity, function: Callable[..., Any]) -> None:
        """Raise the errors a ``limited`` decorator deserves at decoration time."""
        if policy not in self._core.policies:
            self._core.reject("", policy, 1)
        if not isinstance(identity, str) and not callable(identity):
            raise TypeError(
                "identity must be a str or a callable taking the decorated function's "
                f"arguments and returning one, got {type(identity).__name__}"
            )
        if not callable(function):
            raise TypeError(f"limited() decorates a function, got {type(function).__name__}")

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


Item = tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str | None]

_CHECK_MANY_DOC = """Check one request against several ``(identity, policy[, cost[, tier]])`` items.

        A ``tier`` picks one of the policy's tiers, as ``check(..., tier=)`` does (``None``:
        the policy's own limits); an unknown tier is a :class:`KeyError`.

        All or nothing: the request may proceed only if every returned decision is allowed;
        if any is refused, nothing is consumed, and the allowed decisions describe what
        *would* have been consumed. One store round trip. On a Redis Cluster, all or nothing
        holds per hash slot (per identity: its keys share a slot): items of identities on
        different shards are decided each there, so a refused request may still have
        consumed another identity's items that allowed it."""


def _tell_reload(observer: Observer | None, error: BaseException | None) -> None:
    if observer is None:
        return
    try:
        observer.on_reload(error)
    except Exception:  # noqa: BLE001 - an observer's bug must not fail the reload
        _log.exception("ratewall observer failed on a reload")


def _unreachable(limiter: _Limiter[Store] | _Limiter[AsyncStore], error: Exception) -> StoreError:
    return StoreError(
        f"the rate-limit store {redacted(limiter.store_url)!r} did not answer: "
        f"{type(error).__name__}: {error}"
    )


def _reset_failed(plan: Plan | SlotPlan, error: Exception) -> StoreError:
    return StoreError(f"reset of {plan.call.key!r} failed: {type(error).__name__}: {error}")


def _identity_of(identity: Identity, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return identity if isinstance(identity, str) else identity(*args, **kwargs)


_SLOT_DOC = """Hold one slot of concurrency policy ``policy`` for ``identity`` inside the block::

            with limiter.slot("customer_42", "exports") as decision:
                if decision.allowed:
                    ...  # at most `limit` of these run at once for customer_42, everywhere

        ``decision`` is a :class:`Decision`: the slot is held inside the block only when
        ``decision.allowed``; a refusal raises nothing. The slot is released when the block
        ends (by an exception too), and renewed in the background while it lasts.
        ``timeout`` (seconds) waits that long at most for a slot to free (polling: slots
        free when holders release); 0, the default, asks once. ``tier`` as for ``check``.
        For code that cannot use a block: :meth:`acquire_slot`."""

_ACQUIRE_SLOT_DOC = """Take a slot as :meth:`slot` does, and return it held (when
        ``slot.allowed``) until ``slot.release()``, which is idempotent and never raises; the
        slot renews itself in the background meanwhile. The returned slot is also a context
        manager that releases on exit."""

_ACQUIRE_DOC = """Wait until ``cost`` units of rate policy ``policy`` are consumed for
        ``identity``, and return the allowed :class:`Decision`; or return the refusing one
        as soon as waiting longer would pass ``timeout`` seconds (``None``: no limit; 0:
        ask once). Never sleeps past the timeout.

        A refused waiter sleeps for the decision's ``retry_after`` plus a small random
        jitter (at most 10% of it, and 50 ms), then asks again. Waiters are not served in
        arrival order: see the README's "Waiting mode". A failing store answers per the
        policy's failure mode (``"closed"`` refusals are waited out like any other)."""

_LIMITED_DOC = """A decorator that limits every call of the function it decorates::

            @limiter.limited("partner_api", identity="all-workers", wait=30)
            def call_partner(...): ...

            @limiter.limited("exports", identity=lambda customer, **_: customer)
            def export(customer, ...): ...

        ``identity`` is a str, or a callable given the call's arguments that returns one.
        A rate policy consumes ``cost`` units per call, waiting up to ``wait`` seconds for
        them (:meth:`acquire`; 0, the default, asks once); a concurrency policy holds one
        slot for the duration of the call (waiting as :meth:`slot`). When the call is
        refused, the function is not called and :class:`~ratewall.RateLimitExceeded` is
        raised, carrying the decision. A :class:`RateLimiter` decorates plain functions, an
        :class:`AsyncRateLimiter` coroutine functions."""


class RateLimiter(_Limiter[Store]):
    """Checks requests against named policies, synchronously. Thread-safe.

    >>> limiter = RateLimiter({"login": Policy(limit=5, window=60)})
    >>> limiter.check("user_123", "login").allowed
    True
    """

    _kind = Store
    _redis = RedisStore
    _other = ("AsyncRateLimiter", AsyncStore, "an asyncio store")

    def _bind_local(self) -> None:
        # On the memory store, `check` *is* the store's: the facade's method would only pass
        # its arguments on, and that call is about a tenth of a memory-store decision. Not
        # for a subclass that overrides `check` (its override must keep running).
        local = self._local
        if local is not None and type(self).check is RateLimiter.check:
            self.check = local.check  # type: ignore[method-assign]

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
        """The decision :meth:`check` would give now, consuming nothing (for a concurrency
        policy: whether ``cost`` slots are free now)."""
        if policy in self._core.slot_policies:
            return self._run_slot_decision(
                self._core.plan_slot(identity, policy, SLOT_PEEK, "", cost, tier)
            )[0]
        if self._local is not None:
            return self._local.peek(identity, policy, cost, tier)
        return self._decide(self._core.plan(identity, policy, PEEK, cost, tier))

    def reset(self, identity: str, policy: str) -> None:
        """Forget ``identity``'s state for ``policy`` (everywhere, and in this node's cache).
        For a concurrency policy: every slot of ``identity`` is free again (holders lose
        theirs: their next renewal fails).

        Raises :class:`StoreError` if the store fails, whatever the failure mode.
        """
        if policy in self._core.slot_policies:
            slot_plan = self._core.plan_slot(identity, policy, SLOT_RESET)
            try:
                self._slot_store("run_slot").run_slot(slot_plan.call)
            except Exception as error:
                raise _reset_failed(slot_plan, error) from error
            return
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

    # -- concurrency slots and waiting ----------------------------------------------------

    def _run_slot(self, call: SlotCall) -> Reply:
        reply: Reply = self._slot_store("run_slot").run_slot(call)
        return reply

    def _run_slot_decision(self, plan: SlotPlan) -> tuple[Decision, bool]:
        """The decision of an acquire or peek, and whether the store granted it."""
        if plan.decision is not None:
            return plan.decision, False
        store = self._slot_store("run_slot")  # outside the try: a wrong store is no outage
        try:
            reply = store.run_slot(plan.call)
        except Exception as error:  # noqa: BLE001 - the policy's failure mode handles any failure
            return self._core.slot_failure(plan, error), False
        return self._core.decide_slot(plan, reply), reply[0] == 1

    @functools.cached_property
    def _keeper(self) -> SlotKeeper:
        return SlotKeeper(self._run_slot)

    def acquire_slot(
        self, identity: str, policy: str, *, tier: str | None = None, timeout: float = 0.0
    ) -> Slot:
        deadline = self._deadline(timeout)
        sleep = self._sleep or time.sleep
        attempt = 0
        while True:
            plan = self._core.plan_slot(identity, policy, SLOT_ACQUIRE, new_token(), 1, tier)
            decision, granted = self._run_slot_decision(plan)
            if decision.allowed:
                return Slot(self._keeper, plan.call, decision, granted, self._now_us)
            wait = slot_wait(decision.retry_after, attempt, self._seconds_left(deadline))
            if wait is None:
                return Slot(self._keeper, plan.call, decision, False, self._now_us)
            attempt += 1
            sleep(wait)

    acquire_slot.__doc__ = _ACQUIRE_SLOT_DOC

    @contextlib.contextmanager
    def slot(
        self, identity: str, policy: str, *, tier: str | None = None, timeout: float = 0.0
    ) -> Iterator[Decision]:
        held = self.acquire_slot(identity, policy, tier=tier, timeout=timeout)
        try:
            yield held.decision
        finally:
            held.release()

    slot.__doc__ = _SLOT_DOC

    def acquire(
        self,
        identity: str,
        policy: str,
        cost: int = 1,
        *,
        timeout: float | None = None,
        tier: str | None = None,
    ) -> Decision:
        deadline = self._deadline(timeout)
        sleep = self._sleep or time.sleep
        while True:
            decision = self.check(identity, policy, cost, tier=tier)
            if decision.allowed:
                return decision
            wait = rate_wait(decision.retry_after, self._seconds_left(deadline))
            if wait is None:
                return decision
            sleep(wait)

    acquire.__doc__ = _ACQUIRE_DOC

    def limited(
        self,
        policy: str,
        *,
        identity: Identity,
        cost: int = 1,
        wait: float = 0.0,
        tier: str | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        check_timeout(wait)

        def decorate(function: Callable[P, R]) -> Callable[P, R]:
            self._limited_check(policy, identity, function)
            if inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"{function.__qualname__} is a coroutine function: decorate it with an "
                    "AsyncRateLimiter's limited()"
                )

            @functools.wraps(function)
            def limited_call(*args: P.args, **kwargs: P.kwargs) -> R:
                who = _identity_of(identity, args, kwargs)
                if policy in self._core.slot_policies:
                    with self.slot(who, policy, tier=tier, timeout=wait) as decision:
                        if not decision.allowed:
                            raise RateLimitExceeded(decision)
                        return function(*args, **kwargs)
                decision = self.acquire(who, policy, cost, timeout=wait, tier=tier)
                if not decision.allowed:
                    raise RateLimitExceeded(decision)
                return function(*args, **kwargs)

            return limited_call

        return decorate

    limited.__doc__ = _LIMITED_DOC

    def close(self) -> None:
        """Release the store's connections (and stop watching the config file). The limiter
        must not be used afterwards."""
        self._stop_watching()
        if self._local is not None:
            self._local.close()
        else:
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


class AsyncRateLimiter(_Limiter[AsyncStore]):
    """The asyncio twin of :class:`RateLimiter`: the same names, awaitable."""

    _kind = AsyncStore
    _redis = AsyncRedisStore
    _other = ("RateLimiter", Store, "a synchronous store")

    @classmethod
    def _configured_store(
        cls,
        store: str | Store | AsyncStore | LocalStore,
        config: Config,
        timeout: float,
        clock: Clock | None,
    ) -> str | Store | AsyncStore | LocalStore:
        from .config import NO_BATCHING_SETTINGS

        if not isinstance(store, str) or config.batching == NO_BATCHING_SETTINGS:
            return store
        kind, _ = parse_store_url(store)
        if kind == "memory":
            return store  # decides in this process: nothing to batch
        return AsyncRedisStore(
            store,
            timeout=timeout,
            clock=micros_from(clock) if clock else None,  # as __init__ does for a URL
            max_in_flight=config.batching.max_in_flight,
            max_batch=config.batching.max_batch,
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
        """The decision :meth:`check` would give now, consuming nothing (for a concurrency
        policy: whether ``cost`` slots are free now)."""
        if policy in self._core.slot_policies:
            plan = self._core.plan_slot(identity, policy, SLOT_PEEK, "", cost, tier)
            return (await self._run_slot_decision(plan))[0]
        if self._local is not None:
            return self._local.peek(identity, policy, cost, tier)
        return await self._decide(self._core.plan(identity, policy, PEEK, cost, tier))

    async def reset(self, identity: str, policy: str) -> None:
        """Forget ``identity``'s state for ``policy`` (everywhere, and in this node's cache).
        For a concurrency policy: every slot of ``identity`` is free again (holders lose
        theirs: their next renewal fails).

        Raises :class:`StoreError` if the store fails, whatever the failure mode.
        """
        if policy in self._core.slot_policies:
            slot_plan = self._core.plan_slot(identity, policy, SLOT_RESET)
            try:
                await self._arun_slot(slot_plan.call)
            except Exception as error:
                raise _reset_failed(slot_plan, error) from error
            return
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

    # -- concurrency slots and waiting ----------------------------------------------------

    async def _arun_slot(self, call: SlotCall) -> Reply:
        if self._local is not None:
            return self._slot_store("run_slot").run_slot(call)  # type: ignore[no-any-return]
        reply: Reply = await self._slot_store("arun_slot").arun_slot(call)
        return reply

    async def _run_slot_decision(self, plan: SlotPlan) -> tuple[Decision, bool]:
        """The decision of an acquire or peek, and whether the store granted it. A caller
        cancelled while the store decides an acquire gets nothing, and neither does anyone
        else: a slot granted meanwhile is released at once."""
        if plan.decision is not None:
            return plan.decision, False
        self._slot_store("run_slot" if self._local is not None else "arun_slot")
        asked = asyncio.ensure_future(self._arun_slot(plan.call))
        try:
            reply = await asyncio.shield(asked)
        except asyncio.CancelledError:
            if plan.call.op == SLOT_ACQUIRE:
                asked.add_done_callback(functools.partial(self._give_back, plan.call))
            raise
        except Exception as error:  # noqa: BLE001 - the policy's failure mode handles any failure
            return self._core.slot_failure(plan, error), False
        return self._core.decide_slot(plan, reply), reply[0] == 1

    def _give_back(self, call: SlotCall, asked: asyncio.Future[Reply]) -> None:
        """Release a slot granted to a caller that was cancelled meanwhile."""
        if asked.cancelled() or asked.exception() is not None or asked.result()[0] != 1:
            return
        task = asyncio.ensure_future(self._arun_slot(call._replace(op=SLOT_RELEASE)))
        self._giving_back.add(task)
        task.add_done_callback(self._gave_back)

    def _gave_back(self, task: asyncio.Future[Reply]) -> None:
        self._giving_back.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning(
                "ratewall: releasing the slot of a cancelled acquisition failed (%r); it frees "
                "itself when its lease expires",
                task.exception(),
            )

    @functools.cached_property
    def _giving_back(self) -> set[asyncio.Future[Reply]]:
        return set()

    async def acquire_slot(
        self, identity: str, policy: str, *, tier: str | None = None, timeout: float = 0.0
    ) -> AsyncSlot:
        deadline = self._deadline(timeout)
        sleep = self._sleep or asyncio.sleep
        attempt = 0
        while True:
            plan = self._core.plan_slot(identity, policy, SLOT_ACQUIRE, new_token(), 1, tier)
            decision, granted = await self._run_slot_decision(plan)
            if decision.allowed:
                return AsyncSlot(self._arun_slot, plan.call, decision, granted, self._now_us)
            wait = slot_wait(decision.retry_after, attempt, self._seconds_left(deadline))
            if wait is None:
                return AsyncSlot(self._arun_slot, plan.call, decision, False, self._now_us)
            attempt += 1
            await sleep(wait)

    acquire_slot.__doc__ = _ACQUIRE_SLOT_DOC

    @contextlib.asynccontextmanager
    async def slot(
        self, identity: str, policy: str, *, tier: str | None = None, timeout: float = 0.0
    ) -> AsyncIterator[Decision]:
        held = await self.acquire_slot(identity, policy, tier=tier, timeout=timeout)
        try:
            yield held.decision
        finally:
            await held.release()

    slot.__doc__ = _SLOT_DOC.replace("with limiter", "async with limiter")

    async def acquire(
        self,
        identity: str,
        policy: str,
        cost: int = 1,
        *,
        timeout: float | None = None,
        tier: str | None = None,
    ) -> Decision:
        deadline = self._deadline(timeout)
        sleep = self._sleep or asyncio.sleep
        while True:
            decision = await self.check(identity, policy, cost, tier=tier)
            if decision.allowed:
                return decision
            wait = rate_wait(decision.retry_after, self._seconds_left(deadline))
            if wait is None:
                return decision
            await sleep(wait)  # cancelled here: nothing was consumed

    acquire.__doc__ = (
        _ACQUIRE_DOC
        + """

        Cancelling a waiter consumes nothing: it is either sleeping (nothing taken) or
        inside one store round trip, as any cancelled ``check`` would be."""
    )

    def limited(
        self,
        policy: str,
        *,
        identity: Identity,
        cost: int = 1,
        wait: float = 0.0,
        tier: str | None = None,
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
        check_timeout(wait)

        def decorate(
            function: Callable[P, Coroutine[Any, Any, R]],
        ) -> Callable[P, Coroutine[Any, Any, R]]:
            self._limited_check(policy, identity, function)
            if not inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"{getattr(function, '__qualname__', function)!r} is not a coroutine "
                    "function: decorate it with a RateLimiter's limited()"
                )

            @functools.wraps(function)
            async def limited_call(*args: P.args, **kwargs: P.kwargs) -> R:
                who = _identity_of(identity, args, kwargs)
                if policy in self._core.slot_policies:
                    async with self.slot(who, policy, tier=tier, timeout=wait) as decision:
                        if not decision.allowed:
                            raise RateLimitExceeded(decision)
                        return await function(*args, **kwargs)
                decision = await self.acquire(who, policy, cost, timeout=wait, tier=tier)
                if not decision.allowed:
                    raise RateLimitExceeded(decision)
                return await function(*args, **kwargs)

            return limited_call

        return decorate

    limited.__doc__ = _LIMITED_DOC

    async def aclose(self) -> None:
        """Release the store's connections (and stop watching the config file). The limiter
        must not be used afterwards."""
        self._stop_watching()
        if self._local is not None:
            self._local.close()
        else:
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
