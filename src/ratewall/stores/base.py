"""What a limiter needs of its store: the :class:`Store` and :class:`AsyncStore` protocols.

A store *executes calls*: each :class:`~ratewall._calls.Call` names a key, an operation
(check, peek, reset, lease), a cost and the policy's :class:`~ratewall.algorithms.Rule`, and
gets back a :data:`~ratewall._calls.Reply` (integers: allowed, remaining, reset µs, retry µs,
the store's clock in µs, then the key's state on a refusal). A *request* is a sequence of
calls decided all or nothing; :meth:`Store.run` decides several requests, in order, in one
atomic step. Everything else (keys, the deny cache, failure modes, turning replies into
:class:`~ratewall.Decision` objects) is the sans-IO core's job, so a store is only I/O.

:class:`~ratewall.stores.RedisStore` and :class:`~ratewall.stores.AsyncRedisStore` are the
stores of this kind; a URL (``redis://...``) is only a way to build one, and a store object
may be passed to a limiter instead (see :func:`ratewall.testing.FailingStore` for one that
fails on demand). :class:`~ratewall.stores.MemoryStore` is the exception: it has no I/O, so
it decides whole operations itself (:class:`LocalStore`), through the same per-policy
decision exit as every other path.

``timeout`` means one thing everywhere: the most one decision may wait for the store,
connecting and any recovery step included. When it passes, the call fails and the policy's
``failure_mode`` answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from .._calls import Call, Reply, Request
    from ..core import Core
    from ..decision import Decision
    from ..observer import Observer

_T = TypeVar("_T")
_A = TypeVar("_A")

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncStore",
    "LocalStore",
    "Store",
    "report_store_call",
    "timed",
]

_log = logging.getLogger("ratewall")

#: The store timeout when none is given, in seconds: a limiter answers or fails fast.
DEFAULT_TIMEOUT: Final = 0.05

Item = tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str | None]


@runtime_checkable
class Store(Protocol):
    """A synchronous store. Thread-safe: the limiter calls it from any thread."""

    #: The Redis Cluster hash slot of a key when the store is a cluster (a request must
    #: stay within one slot to stay atomic), else ``None``.
    slot_of: Callable[[str], int] | None

    def run_one(self, call: Call) -> Reply:
        """The reply to one call (the usual decision)."""
        ...

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request all or nothing, in order, atomically; replies per request."""
        ...

    def ping(self) -> float:
        """The round trip to the store in seconds; raises if it does not answer in time."""
        ...

    def observe(self, observer: Observer | None) -> None:
        """Report each round trip to ``observer`` (``None``: stop)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """An asyncio store: the same, awaitable. Used from one event loop."""

    slot_of: Callable[[str], int] | None

    def arun_one(self, call: Call) -> Awaitable[Reply]: ...

    def arun(self, requests: Sequence[Request]) -> Awaitable[list[list[Reply]]]: ...

    async def aping(self) -> float: ...

    def observe(self, observer: Observer | None) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class LocalStore(Protocol):
    """A store in this process (no I/O): it decides whole operations under its own lock,
    with no plan, key or reply in between, and serves sync and async limiters alike."""

    def attach(self, core: Core) -> None:
        """Serve ``core``'s policies, making decisions through their exits."""
        ...

    def check(
        self, identity: str, policy: str, cost: int = 1, tier: str | None = None
    ) -> Decision: ...

    def peek(
        self, identity: str, policy: str, cost: int = 1, tier: str | None = None
    ) -> Decision: ...

    def reset(self, identity: str, policy: str) -> None: ...

    def check_many(self, items: Sequence[Item]) -> list[Decision]: ...

    def close(self) -> None: ...


def timed(observer: Observer, calls: int, run: Callable[[_A], _T], argument: _A) -> _T:
    """``run(argument)``, reported to ``observer`` as one round trip carrying ``calls``."""
    started = time.perf_counter()
    try:
        result = run(argument)
    except BaseException as error:
        report_store_call(observer, time.perf_counter() - started, calls, error)
        raise
    report_store_call(observer, time.perf_counter() - started, calls, None)
    return result


def report_store_call(
    observer: Observer, seconds: float, calls: int, error: BaseException | None
) -> None:
    try:
        observer.on_store_call(seconds, calls, error)
    except Exception:  # noqa: BLE001 - an observer's bug must not fail the decision
        _log.exception("ratewall observer failed on a store call")
