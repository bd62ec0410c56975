"""The counters: an :class:`~ratewall.observer.Observer` that counts what limiters report.

Counting happens on the deciding thread, inside every decision, so it must be cheap and
must not lose updates between threads. ``counts[key] += 1`` is a read, an add and a store:
two threads can read the same value and one increment is lost. A lock would be correct but
costs as much as the rest of the counting. Each decision counter is therefore an
:func:`itertools.count`, whose ``next()`` is one C call that the GIL makes atomic; the
value is read back (rarely: at scrape time) from its ``repr``.

The budget (issue 16: metrics add at most 5% to a memory decision, 2% to a Redis one; see
benchmarks/README.md) shapes the rest:

- A limiter whose observer is a :class:`Metrics` does not call :meth:`Metrics.on_decision`
  at all: each policy's decision exit holds that policy's :class:`PolicyCounters` (bound
  once, when the config is compiled) and counts with one ``next()`` on the path that
  already knows the outcome (see ``ratewall._exit``). ``on_decision`` stays for any other
  caller (a :class:`~ratewall.metrics.FanOut`, a user's own wrapper) and counts the same.
- A store call is counted exactly, with one ``next()``. Its latency goes into the
  histogram for one call in ``latency_sample`` (default 16; 1 records every call): only
  then is the lock taken, for two plain additions (the bucket and the sum: a float, which
  no atomic counter can carry). The histogram is then a uniform sample of the calls (every
  Nth, whatever its kind), its count the number sampled, and the exact number of calls is
  ``ratewall_store_calls_total``. The batch-size histogram of a call that carried one
  decision (a sync limiter's every call) is not written at all: it is the number of calls
  minus those recorded as batches, worked out at scrape time.

Exact under threads: every count (each ``next()`` is atomic under the GIL; each locked
update is whole). Not designed for free-threaded CPython builds, where ``itertools.count``
is not atomic.

Labels are bounded by construction: a policy name (configured, hence finite), an outcome,
an error kind, a breaker state or a reload result. Identities and keys never reach this
module (a :class:`~ratewall.Decision` does not carry them).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, cast

from ..decision import Decision

__all__ = [
    "BATCH_BUCKETS",
    "BREAKER_STATES",
    "ERROR_KINDS",
    "LATENCY_BUCKETS",
    "LISTENED",
    "OUTCOMES",
    "RELOAD_RESULTS",
    "TIMED",
    "Histogram",
    "Metrics",
    "PolicyCounters",
    "Snapshot",
    "error_kind",
]

#: The values of the ``outcome`` label, in the order exporters list them.
OUTCOMES: Final = (
    "allowed",
    "limited",
    "shadow_limited",
    "exempt",
    "failed_open",
    "failed_closed",
    "error",
)
#: Upper bounds (seconds) of the store-latency histogram: a Redis call on loopback takes
#: 50-200 µs, a remote one about a millisecond, a timed-out one the store timeout (50 ms).
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
#: Upper bounds of the batch-size histogram (decisions carried by one store round trip).
#: What Metrics.counting_store_call asks of a store call: time it for the latency
#: histogram (and any listeners), or for the listeners only.
TIMED: Final = 1
LISTENED: Final = 2
BATCH_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
#: The values of the ``kind`` label of store errors.
ERROR_KINDS: Final = ("timeout", "connection", "protocol", "other")
#: The values of the ``state`` label of breaker transitions.
BREAKER_STATES: Final = ("open", "closed")
#: The values of the ``result`` label of config reloads.
RELOAD_RESULTS: Final = ("success", "failure")


def error_kind(error: BaseException) -> str:
    """The bounded ``kind`` label of a store error (never its message)."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionError | OSError):
        return "connection"
    if type(error).__name__ in ("StoreProtocolError", "ResponseError", "RedisError"):
        return "protocol"
    return "other"


def _read(counter: itertools.count[int]) -> int:
    """How often ``next`` was called on ``counter``: its repr is ``count(N)`` (reading it
    does not count)."""
    return int(repr(counter)[6:-1])


@dataclass(slots=True)
class Histogram:
    """Per-bucket counts (not cumulative; one more than ``bounds``, for +Inf) and the sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        return list(itertools.accumulate(self.counts))

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


@dataclass(slots=True)
class Snapshot:
    """Every counter's value at one moment, as plain data (what exporters read, and what
    worker processes write to share their totals)."""

    decisions: dict[str, dict[str, int]] = field(default_factory=dict)
    near_limit: dict[str, int] = field(default_factory=dict)
    cache_answers: dict[str, int] = field(default_factory=dict)
    store_calls: int = 0
    store_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    breaker: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BREAKER_STATES, 0))
    reloads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RELOAD_RESULTS, 0))
    latency: Histogram = field(default_factory=lambda: Histogram.empty(LATENCY_BUCKETS))
    batch: Histogram = field(default_factory=lambda: Histogram.empty(BATCH_BUCKETS))
    #: The latency histogram holds one store call in this many (``Metrics.latency_sample``;
    #: the largest, when processes that sample differently are summed).
    latency_sample: int = 1

    def add(self, other: Snapshot) -> None:
        """Add ``other``'s counts to these (another process's, say)."""
        for policy, outcomes in other.decisions.items():
            mine = self.decisions.setdefault(policy, dict.fromkeys(OUTCOMES, 0))
            for outcome, value in outcomes.items():
                mine[outcome] = mine.get(outcome, 0) + value
        for target, source in (
            (self.near_limit, other.near_limit),
            (self.cache_answers, other.cache_answers),
            (self.store_errors, other.store_errors),
            (self.breaker, other.breaker),
            (self.reloads, other.reloads),
        ):
            for name, value in source.items():
                target[name] = target.get(name, 0) + value
        self.store_calls += other.store_calls
        self.latency_sample = max(self.latency_sample, other.latency_sample)
        self.latency.add(other.latency)
        self.batch.add(other.batch)

    def to_json(self) -> dict[str, object]:
        return {
            "decisions": self.decisions,
            "near_limit": self.near_limit,
            "cache_answers": self.cache_answers,
            "store_calls": self.store_calls,
            "store_errors": self.store_errors,
            "breaker": self.breaker,
            "reloads": self.reloads,
            "latency": {"counts": self.latency.counts, "sum": self.latency.total},
            "batch": {"counts": self.batch.counts, "sum": self.batch.total},
            "latency_sample": self.latency_sample,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Snapshot:
        """The inverse of :meth:`to_json`; ``ValueError``, ``KeyError`` or ``TypeError`` on a
        malformed document."""

        def counts(value: object) -> dict[str, int]:
            if not isinstance(value, dict):
                raise TypeError("expected an object of counts")
            return {str(k): int(v) for k, v in value.items()}

        def histogram(value: object, bounds: tuple[float, ...]) -> Histogram:
            if not isinstance(value, dict) or len(value["counts"]) != len(bounds) + 1:
                raise ValueError("histogram buckets differ")
            return Histogram(bounds, [int(c) for c in value["counts"]], float(value["sum"]))

        decisions = data["decisions"]
        if not isinstance(decisions, dict):
            raise TypeError("expected decisions by policy")
        store_calls = data["store_calls"]
        if not isinstance(store_calls, int):
            raise TypeError("expected a count of store calls")
        return cls(
            {str(p): counts(o) for p, o in decisions.items()},
            counts(data["near_limit"]),
            counts(data["cache_answers"]),
            store_calls,
            counts(data["store_errors"]),
            counts(data["breaker"]),
            counts(data["reloads"]),
            histogram(data["latency"], LATENCY_BUCKETS),
            histogram(data["batch"], BATCH_BUCKETS),
            int(cast("int", data.get("latency_sample", 1))),
        )


_POLICY_COUNTS: Final = (*OUTCOMES, "cache", "near_limit")


class PolicyCounters:
    """One policy's counters, one :func:`itertools.count` each. Decision exits hold this
    object, and may hold its counts themselves, for good: the count objects are never
    replaced. A forked child counts from zero by taking their values at the fork as its
    zero (:meth:`reset`)."""

    __slots__ = (*_POLICY_COUNTS, "_zero")

    def __init__(self) -> None:
        self.allowed = itertools.count()
        self.limited = itertools.count()
        self.shadow_limited = itertools.count()
        self.exempt = itertools.count()
        self.failed_open = itertools.count()
        self.failed_closed = itertools.count()
        self.error = itertools.count()
        self.cache = itertools.count()  # refusals the deny cache answered
        self.near_limit = itertools.count()
        self._zero: dict[str, int] = dict.fromkeys(_POLICY_COUNTS, 0)

    def reset(self) -> None:
        """Count from zero from now on (the counts themselves stay, exits hold them)."""
        self._zero = {name: _read(getattr(self, name)) for name in _POLICY_COUNTS}

    def value(self, name: str) -> int:
        """The count ``name`` (an outcome, ``"cache"`` or ``"near_limit"``) since the zero."""
        return _read(getattr(self, name)) - self._zero[name]

    def read(self) -> dict[str, int]:
        return {outcome: self.value(outcome) for outcome in OUTCOMES}


_INSTANCES: weakref.WeakSet[Metrics] = weakref.WeakSet()


class Metrics:
    """Counters of what limiters decide and how their store behaves. Thread-safe.

    It is an :class:`~ratewall.observer.Observer`: ``RateLimiter(..., metrics="prometheus")``
    attaches the process's shared instance (:func:`ratewall.metrics.default_metrics`); any
    instance also works as ``observer=``. Several limiters may share one: their counts add
    up per policy name.

    ``near_limit`` is the fraction of a policy's limit at or below which an allowed
    decision's ``remaining`` counts as near the limit (default 0.2: 20%).

    ``latency_sample``: the store-latency histogram records one store call in this many
    (default 16, every 16th call; 1 records every call). Store calls themselves, their
    errors and batch sizes are always counted exactly. Timing each round trip into a locked
    histogram was most of what metrics cost a Redis decision; a sample of one call in 16
    still gives thousands of observations a minute to any busy limiter.

    A forked child process starts from zero (its parent's counts are the parent's), so
    that summing the processes of a pre-forking server counts each decision once.
    """

    def __init__(self, *, near_limit: float = 0.2, latency_sample: int = 16) -> None:
        if not isinstance(near_limit, int | float) or not 0 <= near_limit <= 1:
            raise ValueError(f"near_limit must be a fraction in [0, 1], got {near_limit!r}")
        if type(latency_sample) is not int or not 1 <= latency_sample <= 1_000_000:
            raise ValueError(
                f"latency_sample must be an int in [1, 1000000] (one call in N), got "
                f"{latency_sample!r}"
            )
        self.near_limit = float(near_limit)
        self.latency_sample = latency_sample
        self._clear()
        _INSTANCES.add(self)

    def _clear(self) -> None:
        self._listeners: tuple[Callable[[float, int], None], ...] = getattr(self, "_listeners", ())
        # Decision exits hold these objects (and their counts): a fork resets them in place,
        # never replaces them.
        self._policies: dict[str, PolicyCounters] = getattr(self, "_policies", {})
        for counters in self._policies.values():
            counters.reset()
        self._lock = threading.Lock()
        self._store_errors = dict.fromkeys(ERROR_KINDS, 0)
        self._store_calls = itertools.count()
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_total = 0.0
        self._batched_calls = 0  # calls recorded in _batch; the others carried one decision
        self._batch = Histogram.empty(BATCH_BUCKETS)
        self._breaker_open = itertools.count()
        self._breaker_closed = itertools.count()
        self._reloads_ok = itertools.count()
        self._reloads_failed = itertools.count()

    def listen_to_store_calls(self, listener: Callable[[float, int], None]) -> None:
        """Also tell ``listener`` each store call's seconds and decisions carried (for
        exporters whose histograms record values one by one, as OpenTelemetry's do)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def watch(self, policies: Iterable[str]) -> None:
        """Create the series of ``policies`` now (at zero), before their first decision, so
        that dashboards and ``rate()`` see them from the start."""
        for policy in policies:
            self.counters(policy)

    def counters(self, policy: str) -> PolicyCounters:
        """``policy``'s counters (created at zero on first use). A decision exit keeps them
        and counts into them directly; see the module's note."""
        counters = self._policies.get(policy)
        if counters is None:
            with self._lock:
                counters = self._policies.setdefault(policy, PolicyCounters())
        return counters

    # -- the observer's events: keep them short, they run inside every decision -----------

    def on_decision(self, decision: Decision) -> None:
        counters = self._policies.get(decision.policy) or self.counters(decision.policy)
        if decision.allowed:
            if decision.shadowed:
                # Passed by shadow mode: a refusal of the store or of a local share, or the
                # failure mode "closed" (as the counting exit counts them).
                next(
                    counters.failed_closed
                    if decision.source == "failure"
                    else counters.shadow_limited
                )
                return
            source = decision.source
            if source == "exempt":
                next(counters.exempt)
            elif source in {"failure", "local"}:  # answered without the store
                next(counters.failed_open)
            else:
                next(counters.allowed)
                if decision.remaining <= decision.limit * self.near_limit:
                    next(counters.near_limit)
        elif decision.source in {"failure", "local"}:
            next(counters.failed_closed)
        else:
            next(counters.limited)
            if decision.source == "cache":
                next(counters.cache)

    def on_error(self, policy: str, error: BaseException) -> None:
        next(self.counters(policy).error)

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        # Every call is counted; one in latency_sample (the first, then every Nth, whatever
        # its kind) goes into the latency histogram.
        if calls == 1 and error is None and not self._listeners:
            # The common case: one decision, no error, nobody listening. Most return here,
            # counted by one next() and no lock.
            if next(self._store_calls) % self.latency_sample:
                return
            bucket = bisect_left(LATENCY_BUCKETS, seconds)
            # acquire/release rather than `with`: half the cost (try/finally costs nothing
            # until it raises, as a KeyboardInterrupt between the two could).
            lock = self._lock
            lock.acquire()
            try:
                self._latency_counts[bucket] += 1
                self._latency_total += seconds
            finally:
                lock.release()
            return
        bucket = bisect_left(LATENCY_BUCKETS, seconds)
        batch = bisect_left(BATCH_BUCKETS, calls)
        with self._lock:
            # Counted under the lock with _batched_calls, so that a snapshot (which holds
            # it) never sees one without the other: single calls = calls - batched.
            if not next(self._store_calls) % self.latency_sample:
                self._latency_counts[bucket] += 1
                self._latency_total += seconds
            self._batched_calls += 1
            self._batch.counts[batch] += 1
            self._batch.total += calls
            if error is not None:
                self._store_errors[error_kind(error)] += 1
        for listener in self._listeners:
            listener(seconds, calls)

    # -- the sync store's single calls, without a clock for the calls not sampled --------

    def counting_store_call(self) -> int:
        """Count one store call carrying one decision, about to be made, and say how to time
        it: ``0`` not at all, ``TIMED`` for the latency histogram (one call in
        ``latency_sample``), ``LISTENED`` for the listeners only. Then the caller reports
        it with :meth:`counted_store_call`, unless it was not timed and succeeded. Together
        the two record what :meth:`on_store_call` records for such a call; the sync store
        uses them so that a call outside the sample reads no clock and makes one Python
        call less."""
        if next(self._store_calls) % self.latency_sample:
            return LISTENED if self._listeners else 0
        return TIMED

    def counted_store_call(self, how: int, seconds: float, error: BaseException | None) -> None:
        """Report a call counted by :meth:`counting_store_call` (``how`` is what it said;
        ``seconds`` is 0.0 for a call not timed). A call that carried one decision needs
        no batch-size entry, failed or not: the snapshot counts it from the store calls."""
        if how == TIMED or error is not None:
            with self._lock:
                if how == TIMED:
                    self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
                    self._latency_total += seconds
                if error is not None:
                    self._store_errors[error_kind(error)] += 1
        if how:
            for listener in self._listeners:
                listener(seconds, 1)

    def on_breaker(self, opened: bool, error: BaseException | None) -> None:
        next(self._breaker_open if opened else self._breaker_closed)

    def on_reload(self, error: BaseException | None) -> None:
        """A limiter reloaded its config (``error`` is ``None``) or rejected a new one."""
        self.record_reload(error is None)

    def record_reload(self, ok: bool) -> None:
        """Count one config reload: ``ok`` if the new config is in force, else it failed
        (and the old one stays)."""
        next(self._reloads_ok if ok else self._reloads_failed)

    # -- reading ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every counter's value now."""
        with self._lock:
            policies = dict(self._policies)
            latency = Histogram(LATENCY_BUCKETS, list(self._latency_counts), self._latency_total)
            store_calls = _read(self._store_calls)
            single = store_calls - self._batched_calls  # calls that carried one decision
            batch = Histogram(BATCH_BUCKETS, list(self._batch.counts), self._batch.total + single)
            batch.counts[0] += single
            store_errors = dict(self._store_errors)
        return Snapshot(
            decisions={name: counters.read() for name, counters in policies.items()},
            near_limit={name: c.value("near_limit") for name, c in policies.items()},
            cache_answers={name: c.value("cache") for name, c in policies.items()},
            store_calls=store_calls,
            store_errors=store_errors,
            breaker={"open": _read(self._breaker_open), "closed": _read(self._breaker_closed)},
            reloads={"success": _read(self._reloads_ok), "failure": _read(self._reloads_failed)},
            latency=latency,
            batch=batch,
            latency_sample=self.latency_sample,
        )

    def __repr__(self) -> str:
        return (
            f"Metrics(policies={sorted(self._policies)!r}, near_limit={self.near_limit}, "
            f"latency_sample={self.latency_sample})"
        )


def _forget_in_child() -> None:
    for metrics in list(_INSTANCES):
        metrics._clear()


os.register_at_fork(after_in_child=_forget_in_child)
