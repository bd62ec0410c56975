"""The decision exit: every :class:`~ratewall.Decision` a limiter returns is made here.

Each policy has one :class:`PolicyExit`, shared by every path a decision can take: the
memory store's tables, the core's handling of a Redis reply, the deny cache, a lease, the
failure mode. What must happen to every decision (observers now; shadow mode and metrics
build on it) is therefore written once, in this module.

An observed limiter gets :class:`_ObservedExit` instead, so that an unobserved one pays
nothing: not even a test of whether someone listens. A limiter whose observer is ratewall's
own :class:`~ratewall.metrics.Metrics` gets :class:`_CountedExit`, which counts with the
policy's counters bound in advance instead of handing each decision to
``Metrics.on_decision`` to sort out again (the metrics budget: see benchmarks/README.md).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final

from .decision import Decision, Source
from .errors import StoreError
from .observer import Observer

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["LocalExit", "PolicyExit", "exit_for"]

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
    algorithms count them; a negative ``remaining`` (an algorithm's overdraft) reads 0.

    A shadow policy's refusals leave as allowed decisions marked ``shadowed``: the state
    was handled exactly as for a refusal (nothing consumed), only the answer differs."""

    __slots__ = ("limit", "name", "shadow")

    def __init__(self, name: str, limit: int, shadow: bool = False) -> None:
        self.name = name
        self.limit = limit
        self.shadow = shadow

    # allowed() and refused() are the hot pair (one per request): each fills its draft
    # itself, since the extra call through _decision costs about a tenth of a memory-store
    # decision.

    def allowed(self, remaining: int, reset_us: int, source: Source = "store") -> Decision:
        draft = _Draft()
        draft.allowed = True
        draft.policy = self.name
        draft.limit = self.limit
        draft.remaining = remaining if remaining > 0 else 0
        draft.reset_after = reset_us / _MICROS
        draft.retry_after = None
        draft.degraded = False
        draft.shadowed = False
        draft.source = source
        draft.__class__ = Decision  # type: ignore[assignment]
        return draft  # type: ignore[return-value]

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "store"
    ) -> Decision:
        shadowed = self.shadow
        draft = _Draft()
        draft.allowed = shadowed
        draft.policy = self.name
        draft.limit = self.limit
        draft.remaining = remaining if remaining > 0 else 0
        draft.reset_after = reset_us / _MICROS
        draft.retry_after = None if shadowed else retry_us / _MICROS
        draft.degraded = False
        draft.shadowed = shadowed
        draft.source = source
        draft.__class__ = Decision  # type: ignore[assignment]
        return draft  # type: ignore[return-value]

    def exempt(self) -> Decision:
        """An exempt identity's decision: allowed, the whole limit left, nothing stored."""
        return _decision(True, self.name, self.limit, self.limit, 0.0, None, False, "exempt")

    def failed(self, allowed: bool, wait: float) -> Decision:
        """The failure mode's answer while the store fails: allowed with the whole limit
        ("open"), or refused for ``wait`` seconds ("closed"). A shadow policy never
        refuses: its "closed" answer passes, ``shadowed``."""
        if allowed:
            return _decision(True, self.name, self.limit, self.limit, 0.0, None, True, "failure")
        if self.shadow:
            return _decision(True, self.name, self.limit, 0, wait, None, True, "failure", True)
        return _decision(False, self.name, self.limit, 0, wait, wait, True, "failure")

    def store_error(self, error: BaseException) -> StoreError:
        """What the caller gets instead of a decision while the store fails and the policy's
        failure mode is ``"raise"`` (raised from ``error``)."""
        return StoreError(
            f"rate-limit store failed for policy {self.name!r}: {type(error).__name__}: {error}"
        )


class _ObservedExit(PolicyExit):
    """A :class:`PolicyExit` that shows every decision (and every store error raised
    instead of one) to an observer.

    Each method calls the observer's bound method directly, with no helper in between
    (metrics count on every decision)."""

    __slots__ = ("_observer", "_on_decision", "_warned")

    def __init__(self, name: str, limit: int, shadow: bool, observer: Observer) -> None:
        super().__init__(name, limit, shadow)
        self._observer = observer
        self._on_decision = observer.on_decision
        self._warned = False

    def _failed(self) -> None:
        """An observer method raised: log it, once per policy, and carry on."""
        if not self._warned:
            self._warned = True
            _log.exception("ratewall observer %r failed (reported once per policy)", self._observer)

    def allowed(self, remaining: int, reset_us: int, source: Source = "store") -> Decision:
        decision = PolicyExit.allowed(self, remaining, reset_us, source)
        try:
            self._on_decision(decision)
        except Exception:  # noqa: BLE001 - an observer's bug must not change or lose the answer
            self._failed()
        return decision

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "store"
    ) -> Decision:
        decision = PolicyExit.refused(self, remaining, reset_us, retry_us, source)
        try:
            self._on_decision(decision)
        except Exception:  # noqa: BLE001 - an observer's bug must not change or lose the answer
            self._failed()
        return decision

    def exempt(self) -> Decision:
        decision = PolicyExit.exempt(self)
        try:
            self._on_decision(decision)
        except Exception:  # noqa: BLE001 - an observer's bug must not change or lose the answer
            self._failed()
        return decision

    def failed(self, allowed: bool, wait: float) -> Decision:
        decision = PolicyExit.failed(self, allowed, wait)
        try:
            self._on_decision(decision)
        except Exception:  # noqa: BLE001 - an observer's bug must not change or lose the answer
            self._failed()
        return decision

    def store_error(self, error: BaseException) -> StoreError:
        try:
            self._observer.on_error(self.name, error)
        except Exception:  # noqa: BLE001 - an observer's bug must not change the answer
            self._failed()
        return PolicyExit.store_error(self, error)


class LocalExit(PolicyExit):
    """Makes the decisions of a policy's local share (``failure_mode="local"``) while the
    store fails: the memory tables decide them through ``allowed`` and ``refused`` as they
    do the memory store's, and they leave ``degraded``, with ``source == "local"`` and the
    share as their ``limit``. An observer (metrics) sees each, as the other exits show it
    theirs."""

    __slots__ = ("_observer",)

    def __init__(self, name: str, limit: int, shadow: bool, observer: Observer | None) -> None:
        super().__init__(name, limit, shadow)
        self._observer = observer

    def allowed(self, remaining: int, reset_us: int, source: Source = "local") -> Decision:
        decision = _decision(
            True,
            self.name,
            self.limit,
            remaining if remaining > 0 else 0,
            reset_us / _MICROS,
            None,
            True,
            "local",
        )
        return self._shown(decision)

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "local"
    ) -> Decision:
        shadowed = self.shadow
        decision = _decision(
            shadowed,
            self.name,
            self.limit,
            remaining if remaining > 0 else 0,
            reset_us / _MICROS,
            None if shadowed else retry_us / _MICROS,
            True,
            "local",
            shadowed,
        )
        return self._shown(decision)

    def _shown(self, decision: Decision) -> Decision:
        observer = self._observer
        if observer is not None:
            try:
                observer.on_decision(decision)
            except Exception:  # noqa: BLE001 - an observer's bug must not change the answer
                _log.exception("ratewall observer %r failed on a local decision", observer)
        return decision


class _CountedExit(PolicyExit):
    """A :class:`PolicyExit` that counts each decision into its policy's
    :class:`~ratewall.metrics.PolicyCounters`, exactly as ``Metrics.on_decision`` would.

    Each method knows its outcome already, so counting is one ``next()`` on a counter (atomic
    under the GIL), plus an integer comparison for near-limit. ``allowed`` (most requests)
    fills its draft itself, as ``PolicyExit.allowed`` does: calling that from here was a
    third of what counting cost a memory-store decision, the difference between meeting the
    metrics budget (5%) and missing it (see benchmarks/README.md, "Metrics cost");
    ``tests/unit/test_decision.py`` holds the two equal. The other decisions are
    ``PolicyExit``'s own.
    """

    __slots__ = ("_allowed", "_counters", "_near")

    def __init__(self, name: str, limit: int, shadow: bool, metrics: Metrics) -> None:
        super().__init__(name, limit, shadow)
        self._counters = metrics.counters(name)
        # The allowed count itself (a PolicyCounters never replaces its counts): one
        # attribute less on every allowed decision.
        self._allowed = self._counters.allowed
        # remaining <= limit * fraction  <=>  remaining <= floor(limit * fraction), remaining
        # being an integer: compare integers on the hot path.
        self._near = math.floor(limit * metrics.near_limit)

    def allowed(self, remaining: int, reset_us: int, source: Source = "store") -> Decision:
        next(self._allowed)
        draft = _Draft()
        if remaining > self._near:  # then remaining > 0 too: _near is at least 0
            draft.remaining = remaining
        else:
            next(self._counters.near_limit)
            draft.remaining = remaining if remaining > 0 else 0
        draft.allowed = True
        draft.policy = self.name
        draft.limit = self.limit
        draft.reset_after = reset_us / _MICROS
        draft.retry_after = None
        draft.degraded = False
        draft.shadowed = False
        draft.source = source
        draft.__class__ = Decision  # type: ignore[assignment]
        return draft  # type: ignore[return-value]

    def refused(
        self, remaining: int, reset_us: int, retry_us: int, source: Source = "store"
    ) -> Decision:
        counters = self._counters
        shadowed = self.shadow
        if shadowed:
            next(counters.shadow_limited)
        else:
            next(counters.limited)
            if source == "cache":
                next(counters.cache)
        return PolicyExit.refused(self, remaining, reset_us, retry_us, source)

    def exempt(self) -> Decision:
        next(self._counters.exempt)
        return PolicyExit.exempt(self)

    def failed(self, allowed: bool, wait: float) -> Decision:
        next(self._counters.failed_open if allowed else self._counters.failed_closed)
        return PolicyExit.failed(self, allowed, wait)

    def store_error(self, error: BaseException) -> StoreError:
        next(self._counters.error)
        return PolicyExit.store_error(self, error)


def exit_for(name: str, limit: int, observer: Observer | None, shadow: bool = False) -> PolicyExit:
    """The exit of policy ``name`` (whose decisions report ``limit``)."""
    if observer is None:
        return PolicyExit(name, limit, shadow)
    from .metrics import Metrics  # here: only an observed limiter loads the metrics package

    if type(observer) is Metrics:  # a subclass may override on_decision: observe it
        return _CountedExit(name, limit, shadow, observer)
    return _ObservedExit(name, limit, shadow, observer)
