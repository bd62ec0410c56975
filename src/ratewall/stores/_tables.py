"""The memory store's tables: one policy's states in a dict keyed by identity, decided by
the policy's algorithm. The memory store (:mod:`.memory`) keeps one table per policy, and
the ``"local"`` failure mode (:mod:`ratewall._local_mode`) keeps its own per-process shares
in the same tables.

Each algorithm is a *table* class. The base class runs the pure function of
:mod:`ratewall.algorithms` on the stored state; the classes of the four cheap algorithms
override :meth:`Table.decide` with a twin of that function inlined over a mutable entry
(no Outcome, no state tuple per call), and ``tests/unit/test_memory_store.py`` proves every
twin gives the pure function's decisions and states. ``_TABLES`` picks the class per
algorithm, so one algorithm can get a structure of its own without touching the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from .._calls import CHECK
from .._exit import PolicyExit
from ..algorithms import ALGORITHM_CODES, FUNCTIONS, Outcome, Rule, _sliding_retry
from ..decision import Decision
from ._memory_log import SlidingLog

__all__ = ["SWEEP_AT", "Table", "table_for"]

# An entry: the algorithm's state and its expiry (µs), laid out as its table class likes,
# with the expiry last.
E = TypeVar("E", bound=Sequence[Any])

SWEEP_AT = 1024


class Table(Generic[E]):
    """One policy's entries. :meth:`decide` runs the policy's pure function over
    :meth:`state` and :meth:`write`; a subclass may decide faster, as long as it decides the
    same. An entry whose expiry has passed decides exactly like no entry."""

    __slots__ = (
        "capacity",
        "entries",
        "exempt",
        "exit",
        "function",
        "interval",
        "limit",
        "name",
        "overrides",
        "rate",
        "rule",
        "special",
        "sweep_at",
        "tiers",
        "window",
    )

    def __init__(self, name: str, rule: Rule, exit: PolicyExit) -> None:
        self.name = name
        self.rule = rule
        self.exit = exit
        # A policy's overrides and tiers are tables of their own rule sharing its entries;
        # ``special`` says whether there is any of them, or an exempt identity, to look at.
        self.special = False
        self.exempt: frozenset[str] = frozenset()
        self.overrides: dict[str, Table[Any]] = {}
        self.tiers: dict[str, Table[Any]] = {}
        self.function = FUNCTIONS[rule.algorithm]
        self.limit = rule.limit
        self.capacity = rule.capacity
        self.window = rule.window
        self.rate = rule.rate
        self.interval = rule.interval
        self.entries: dict[str, E] = {}
        self.sweep_at = SWEEP_AT

    def state(self, identity: str, now: int) -> Sequence[int]:
        """The pure function's view of ``identity``'s state (empty once expired)."""
        raise NotImplementedError

    def entry(self, state: tuple[int, ...], expiry: int) -> E:
        raise NotImplementedError

    def write(self, identity: str, state: tuple[int, ...], expiry: int, now: int) -> None:
        entries = self.entries
        new = identity not in entries
        entries[identity] = self.entry(state, expiry)
        if new and len(entries) >= self.sweep_at:
            self.sweep(now)

    def _insert(self, identity: str, entry: E, now: int) -> None:
        """A new identity's first entry (the twins' only insertion)."""
        entries = self.entries
        entries[identity] = entry
        if len(entries) >= self.sweep_at:
            self.sweep(now)

    def forget(self, identity: str) -> None:
        self.entries.pop(identity, None)

    def sweep(self, now: int) -> None:
        """Drop expired entries, so memory stays proportional to the live identities."""
        entries = self.entries  # in place: a policy's override and tier tables share it
        for identity in [identity for identity, entry in entries.items() if now >= entry[-1]]:
            del entries[identity]
        self.sweep_at = max(SWEEP_AT, 2 * len(entries))

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        outcome = self.function(self.state(identity, now), now, cost, self.rule)
        if outcome.allowed and op == CHECK and outcome.state is not None:
            self.write(identity, outcome.state, now + outcome.ttl, now)
        return self.decision(outcome)

    def decision(self, outcome: Outcome) -> Decision:
        if outcome.allowed:
            return self.exit.allowed(outcome.remaining, outcome.reset)
        return self.exit.refused(outcome.remaining, outcome.reset, outcome.retry)


class _Pure(Table[tuple[tuple[int, ...], int]]):
    """Entry ``(state, expiry)``: the pure function's own state, never copied."""

    __slots__ = ()

    def state(self, identity: str, now: int) -> Sequence[int]:
        entry = self.entries.get(identity)
        return entry[0] if entry is not None and now < entry[1] else ()

    def entry(self, state: tuple[int, ...], expiry: int) -> tuple[tuple[int, ...], int]:
        return (state, expiry)


class _Flat(Table[list[int]]):
    """Entry ``[*state, expiry]``, a list that the subclasses' twins of the pure function
    update in place (no Outcome, no state tuple per call)."""

    __slots__ = ()

    def state(self, identity: str, now: int) -> Sequence[int]:
        entry = self.entries.get(identity)
        return entry[:-1] if entry is not None and now < entry[-1] else ()

    def entry(self, state: tuple[int, ...], expiry: int) -> list[int]:
        return [*state, expiry]


class _FixedWindow(_Flat):
    """Entry ``[count, end, expiry]`` (expiry == end); twin of ``algorithms.fixed_window``."""

    __slots__ = ()

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        entry = self.entries.get(identity)
        if entry is not None and now < entry[2]:
            count = entry[0]
            end = entry[1]
        else:
            count = 0
            end = now + self.window
        left = end - now
        limit = self.limit
        if count + cost > limit:
            return self.exit.refused(limit - count, left, left)
        count += cost
        if op == CHECK:
            if entry is None:
                self._insert(identity, [count, end, end], now)
            else:
                entry[0] = count
                entry[1] = end
                entry[2] = end
        return self.exit.allowed(limit - count, left)


class _SlidingWindow(_Flat):
    """Entry ``[previous, current, start, expiry]`` (expiry == start + 2 windows); twin of
    ``algorithms.sliding_window``."""

    __slots__ = ("ms_capacity", "ms_window")

    def __init__(self, name: str, rule: Rule, exit: PolicyExit) -> None:
        super().__init__(name, rule, exit)
        self.ms_window = rule.window // 1000
        self.ms_capacity = rule.limit * self.ms_window

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        window = self.window
        entry = self.entries.get(identity)
        # Whether the entry must be rewritten whole (else only its current count changes).
        moved = True
        if entry is not None and now < entry[3]:
            previous, current, start, _ = entry
            # Two windows from the start, as the script derives it: the same as the stored
            # expiry unless a reload (or a tier) changed the window since it was written.
            expiry = start + 2 * window
            if now >= start + window:
                # Alive means within two windows of start: the current count becomes the
                # previous one (the pure function's "two windows later" case is expiry).
                previous = current
                current = 0
                start += window
                expiry += window
            else:
                moved = False
        else:
            previous = current = 0
            start = now
            expiry = now + 2 * window
        w = self.ms_window
        if previous:
            elapsed = now - start
            weighted = previous * (w - elapsed // 1000) if elapsed > 0 else previous * w
        else:
            weighted = 0
        capacity = self.ms_capacity
        if weighted + (current + cost) * w > capacity:
            return self.exit.refused(
                (capacity - weighted - current * w) // w,
                start + (2 if current > 0 else 1) * window - now,
                _sliding_retry(previous, current, start, now, cost, self.rule),
            )
        current += cost
        if op == CHECK:
            if entry is None:
                self._insert(identity, [previous, current, start, expiry], now)
            elif moved:
                entry[0] = previous
                entry[1] = current
                entry[2] = start
                entry[3] = expiry
            else:
                entry[1] = current
        return self.exit.allowed((capacity - weighted - current * w) // w, expiry - now)


class _TokenBucket(_Flat):
    """Entry ``[level, last, expiry]``; twin of ``algorithms.token_bucket``. The expiry is
    kept (not derived from ``last``) because time may step back: ``last`` then stays ahead
    of the instant the entry was written."""

    __slots__ = ()

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        rate = self.rate
        interval = self.interval
        full = self.capacity * interval
        entry = self.entries.get(identity)
        if entry is not None and now < entry[2]:
            level = entry[0]
            last = entry[1]
            if now > last:
                if now - last >= -((level - full) // rate):
                    level = full
                else:
                    level += (now - last) * rate
                last = now
        else:
            level = full
            last = now
        need = cost * interval
        if level < need:
            return self.exit.refused(
                level // interval, -((level - full) // rate), -((level - need) // rate)
            )
        level -= need
        reset = -((level - full) // rate)
        if op == CHECK:
            if entry is None:
                self._insert(identity, [level, last, now + reset], now)
            else:
                entry[0] = level
                entry[1] = last
                entry[2] = now + reset
        return self.exit.allowed(level // interval, reset)


class _Gcra(_Flat):
    """Entry ``[tat, remainder, expiry]``; twin of ``algorithms.gcra``."""

    __slots__ = ()

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        rate = self.rate
        interval = self.interval
        entry = self.entries.get(identity)
        ahead = 0
        if entry is not None and now < entry[2]:
            tat = entry[0]
            if tat > now or (tat == now and entry[1] > 0):
                ahead = (tat - now) * rate + entry[1]
        full = self.capacity * interval
        after = ahead + cost * interval
        if after > full:
            return self.exit.refused(
                (full - ahead) // interval,
                -(-ahead // rate),
                -((full - after) // rate),
            )
        reset = -(-after // rate)
        if op == CHECK:
            tat = now + after // rate
            if entry is None:
                self._insert(identity, [tat, after % rate, now + reset], now)
            else:
                entry[0] = tat
                entry[1] = after % rate
                entry[2] = now + reset
        return self.exit.allowed((full - after) // interval, reset)


class _SlidingLog(Table[list[Any]]):
    """Entry ``[log, expiry]``: a :class:`._memory_log.SlidingLog`, which decides like
    ``algorithms.sliding_log`` in O(cost) instead of copying the whole log every time."""

    __slots__ = ()

    def state(self, identity: str, now: int) -> Sequence[int]:
        entry = self.entries.get(identity)
        if entry is None or now >= entry[1]:
            return ()
        log: SlidingLog = entry[0]
        return log.state()

    def entry(self, state: tuple[int, ...], expiry: int) -> list[Any]:
        return [SlidingLog.from_state(state), expiry]

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        entry = self.entries.get(identity)
        if entry is None or now >= entry[1]:
            log = SlidingLog()
            entry = None
        else:
            log = entry[0]
        limit = self.limit
        window = self.window
        remaining = log.take(now, cost, limit, window, op == CHECK)
        if remaining < 0:
            left, reset, retry = log.refusal(now, cost, limit, window)
            return self.exit.refused(left, reset, retry)
        if op == CHECK:
            if entry is None:
                self._insert(identity, [log, now + window], now)
            else:
                entry[1] = now + window
        return self.exit.allowed(remaining, window)


# Per algorithm, the table class that decides it; the base class runs the pure function.
_TABLES: dict[str, type[Table[Any]]] = {
    "sliding_log": _SlidingLog,
    "fixed_window": _FixedWindow,
    "sliding_window": _SlidingWindow,
    "token_bucket": _TokenBucket,
    "gcra": _Gcra,
}


def table_for(name: str, rule: Rule, exit: PolicyExit) -> Table[Any]:
    return _TABLES.get(ALGORITHM_CODES[rule.algorithm], _Pure)(name, rule, exit)
