"""The decision exit: every :class:`~ratewall.Decision` a limiter returns is made here.

Each policy has one :class:`PolicyExit`, shared by every path a decision can take: the
memory store's tables, the core's handling of a Redis reply, the deny cache, a lease, the
failure mode. What must happen to every decision (observers now; shadow mode and metrics
build on it) is therefore written once, in this module.

An observed limiter gets :class:`_ObservedExit` instead, so that an unobserved one pays
nothing: not even a test of whether someone listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .decision import Decision, Source
from .errors import StoreError
from .observer import Observer

__all__ = ["PolicyExit", "exit_for"]

_MICROS: Final = 1_000_000
_log = logging.getLogger("ratewall")


class _Draft:
    """:class:`Decision`'s exact slot layout without its frozen ``__setattr__``.

    A frozen dataclass' ``__init__`` sets each field through ``object.__setattr__``; the hot
    path makes one Decision per request, and filling a draft with plain attribute stores,
    then assigning ``__class__`` (CPython allows it between classes of identical layout),
    costs a quarter of that. The result *is* a Decision, frozen and equal like any other.
    This is the only place that builds Decisions this way."""

    __slots__ = Decision.__slots__
    allowed: bool
    policy: str
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None
    degraded: bool
    shadowed: bool
    source: Source


def _decision(
    allowed: bool,
    policy: str,
    limit: int,
    remaining: int,
    reset_after: float,
    retry_after: float | None,
    degraded: bool,
    source: Source,
    shadowed: bool = False,
) -> Decision:
    draft = _Draft()  # cheaper than object.__new__(_Draft); _Draft has no __init__
    draft.allowed = allowed
    draft.policy = policy
    draft.limit = limit
    draft.remaining = remaining
    draft.reset_after = reset_after
    draft.retry_after = retry_after
    draft.degraded = degraded
    draft.shadowed = shadowed
    draft.source = source
    draft.__class__ = Decision  # type: ignore[assignment]
    return draft  # type: ignore[return-value]


class PolicyExit:
    """Makes one policy's decisions. Times are integer microseconds, as the stores and the
    algorithms count them; a negative ``remaining`` (an algorithm's overdraft) reads 0."""

    __slots__ = ("limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit

    def allowed(self, remaining: int, reset_us: int, source: Source = "store") -> Decision:
        return _decision(
            True,
            self.name,
            self.limit,
            remaining if remaining > 0 else 0,
            reset_us / _MICROS,
            None,
            False,
            source,
        )

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "store"
    ) -> Decision:
        return _decision(
            False,
            self.name,
            self.limit,
            remaining if remaining > 0 else 0,
            reset_us / _MICROS,
            retry_us / _MICROS,
            False,
            source,
        )

    def failed(self, allowed: bool, wait: float) -> Decision:
        """The failure mode's answer while the store fails: allowed with the whole limit
        ("open"), or refused for ``wait`` seconds ("closed")."""
        if allowed:
            return _decision(True, self.name, self.limit, self.limit, 0.0, None, True, "failure")
        return _decision(False, self.name, self.limit, 0, wait, wait, True, "failure")

    def store_error(self, error: BaseException) -> StoreError:
        """What the caller gets instead of a decision while the store fails and the policy's
        failure mode is ``"raise"`` (raised from ``error``)."""
        return StoreError(
            f"rate-limit store failed for policy {self.name!r}: {type(error).__name__}: {error}"
        )


class _ObservedExit(PolicyExit):
    """A :class:`PolicyExit` that shows every decision (and every store error raised
    instead of one) to an observer."""

    __slots__ = ("_observer", "_warned")

    def __init__(self, name: str, limit: int, observer: Observer) -> None:
        super().__init__(name, limit)
        self._observer = observer
        self._warned = False

    def _tell(self, event: Callable[..., object], *arguments: object) -> None:
        try:
            event(*arguments)
        except Exception:  # noqa: BLE001 - an observer's bug must not change or lose the answer
            if not self._warned:
                self._warned = True
                _log.exception(
                    "ratewall observer %r failed (reported once per policy)", self._observer
                )

    def allowed(self, remaining: int, reset_us: int, source: Source = "store") -> Decision:
        decision = PolicyExit.allowed(self, remaining, reset_us, source)
        self._tell(self._observer.on_decision, decision)
        return decision

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "store"
    ) -> Decision:
        decision = PolicyExit.refused(self, remaining, reset_us, retry_us, source)
        self._tell(self._observer.on_decision, decision)
        return decision

    def failed(self, allowed: bool, wait: float) -> Decision:
        decision = PolicyExit.failed(self, allowed, wait)
        self._tell(self._observer.on_decision, decision)
        return decision

    def store_error(self, error: BaseException) -> StoreError:
        self._tell(self._observer.on_error, self.name, error)
        return PolicyExit.store_error(self, error)


def exit_for(name: str, limit: int, observer: Observer | None) -> PolicyExit:
    """The exit of policy ``name`` (whose decisions report ``limit``)."""
    if observer is None:
        return PolicyExit(name, limit)
    return _ObservedExit(name, limit, observer)
