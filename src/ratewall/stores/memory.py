"""The in-process store: each policy's states in a dict keyed by identity. Exact within one
process.

There is no I/O and no deny cache here, so the facades hand whole operations to the store
(``check``, ``peek``, ``reset``, ``check_many``) and it decides them under its lock, with no
plan, key string or reply in between.

Each algorithm is a *table* class. The base class runs the pure function of
:mod:`ratewall.algorithms` on the stored state; the classes of the four cheap algorithms
override :meth:`_Table.decide` with a twin of that function inlined over a mutable entry
(no Outcome, no state tuple per call), and ``tests/unit/test_memory_store.py`` proves every
twin gives the pure function's decisions and states. ``_TABLES`` picks the class per
algorithm, so one algorithm can get a structure of its own without touching the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from .._clock import monotonic_micros
from .._exit import PolicyExit
from .._fork import reset_in_child
from ..algorithms import (
    ALGORITHM_CODES,
    CONCURRENCY_CODE,
    FUNCTIONS,
    SLOT_RESET,
    Outcome,
    Rule,
    _sliding_retry,
    slots,
)
from ..core import CHECK, PEEK, Reply, SlotCall
from ..decision import Decision
from ._memory_log import SlidingLog

if TYPE_CHECKING:
    from ..core import Core

__all__ = ["MemoryStore"]

Item = tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str | None]
# An entry: the algorithm's state and its expiry (µs), laid out as its table class likes,
# with the expiry last.
E = TypeVar("E", bound=Sequence[Any])

_SWEEP_AT = 1024


class _Table(Generic[E]):
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
        self.overrides: dict[str, _Table[Any]] = {}
        self.tiers: dict[str, _Table[Any]] = {}
        self.function = FUNCTIONS[rule.algorithm]
        self.limit = rule.limit
        self.capacity = rule.capacity
        self.window = rule.window
        self.rate = rule.rate
        self.interval = rule.interval
        self.entries: dict[str, E] = {}
        self.sweep_at = _SWEEP_AT

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
        self.sweep_at = max(_SWEEP_AT, 2 * len(entries))

    def decide(self, identity: str, op: int, cost: int, now: int) -> Decision:
        outcome = self.function(self.state(identity, now), now, cost, self.rule)
        if outcome.allowed and op == CHECK and outcome.state is not None:
            self.write(identity, outcome.state, now + outcome.ttl, now)
        return self.decision(outcome)

    def decision(self, outcome: Outcome) -> Decision:
        if outcome.allowed:
            return self.exit.allowed(outcome.remaining, outcome.reset)
        return self.exit.refused(outcome.remaining, outcome.reset, outcome.retry)


class _Pure(_Table[tuple[tuple[int, ...], int]]):
    """Entry ``(state, expiry)``: the pure function's own state, never copied."""

    __slots__ = ()

    def state(self, identity: str, now: int) -> Sequence[int]:
        entry = self.entries.get(identity)
        return entry[0] if entry is not None and now < entry[1] else ()

    def entry(self, state: tuple[int, ...], expiry: int) -> tuple[tuple[int, ...], int]:
        return (state, expiry)


class _Flat(_Table[list[int]]):
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


class _SlidingLog(_Table[list[Any]]):
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
_TABLES: dict[str, type[_Table[Any]]] = {
    "sliding_log": _SlidingLog,
    "fixed_window": _FixedWindow,
    "sliding_window": _SlidingWindow,
    "token_bucket": _TokenBucket,
    "gcra": _Gcra,
}


def table_for(name: str, rule: Rule, exit: PolicyExit) -> _Table[Any]:
    return _TABLES.get(ALGORITHM_CODES[rule.algorithm], _Pure)(name, rule, exit)


class MemoryStore:
    """Keeps each policy's states with their expiries; thread-safe (one lock around each
    operation, clock read included, so decisions are serialized in time order). Expired
    entries are swept as a table grows, so memory stays proportional to the live identities.
    ``check_many`` is all or nothing, exactly as ``lua/_main.lua`` decides a group.

    ``clock`` gives integer microseconds (monotonic by default, injectable for tests). The
    store learns the limiter's policies from its :class:`~ratewall.core.Core`
    (:meth:`attach`), whose errors it raises for bad calls.
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        # The default clock read inline by check (a Python call less per decision).
        self._monotonic_ns = time.monotonic_ns if clock is monotonic_micros else None
        self._lock = threading.Lock()
        self._tables: dict[str, _Table[Any]] = {}
        self._reject: Callable[..., NoReturn] = _unattached
        # Concurrency policies' holders, by key (the Redis store's key, so the two agree
        # on what is one identity's state): token -> lease expiry (µs).
        self._slots: dict[str, dict[str, int]] = {}
        self._slots_sweep_at = _SWEEP_AT
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        """A forked child starts empty, as a fresh process would (its limits are its own:
        this store is per process), with a lock no thread of the parent can hold."""
        self._lock = threading.Lock()
        for table in self._tables.values():
            table.entries.clear()
        self._slots.clear()

    def attach(self, core: Core) -> None:
        """Make one table per policy of ``core`` (and one per override and tier, sharing
        the policy's entries). Attaching the core of a reloaded config keeps the entries of
        every policy whose algorithm did not change: their state carries over, read by the
        new rule from the next decision on."""
        old = self._tables
        tables: dict[str, _Table[Any]] = {}
        for name, compiled in core.compiled.items():
            if compiled.rule.algorithm == CONCURRENCY_CODE:
                continue  # slots: see run_slot (a check of one meets the core's error)
            table = table_for(name, compiled.rule, compiled.exit)
            previous = old.get(name)
            if previous is not None and previous.rule.algorithm == compiled.rule.algorithm:
                table.entries = previous.entries
            table.special = compiled.special
            table.exempt = compiled.exempt
            for kind in ("overrides", "tiers"):
                variants: dict[str, _Table[Any]] = getattr(table, kind)
                for label, variant in (getattr(compiled, kind) or {}).items():
                    variants[label] = table_for(name, variant.rule, variant.exit)
                    variants[label].entries = table.entries
            tables[name] = table
        self._tables = tables  # one assignment: a decision sees the old tables or the new
        self._reject = core.reject

    def _select(self, table: _Table[Any], identity: str, tier: str | None) -> _Table[Any]:
        """The table that decides for ``identity`` in ``tier`` (see ``Core.select``)."""
        if tier is not None and tier not in table.tiers:
            self._reject(identity, table.name, 1, tier)
        override = table.overrides.get(identity) if table.overrides else None
        if override is not None:
            return override
        return table.tiers[tier] if tier is not None else table

    def __len__(self) -> int:
        return sum(len(table.entries) for table in self._tables.values())

    def check(self, identity: str, policy: str, cost: int = 1, tier: str | None = None) -> Decision:
        # The hot path: _table's validation inlined, and the lock without a `with` block.
        table = self._tables.get(policy)
        if table is not None and (table.special or tier is not None) and type(identity) is str:
            base, table = table, self._select(table, identity, tier)
            if identity in base.exempt:
                self._table(identity, policy, cost, table)  # a bad cost is still an error
                return base.exit.exempt()
        if (
            table is None
            or type(identity) is not str
            or type(cost) is not int
            or not 0 < cost <= table.capacity
        ):
            self._reject(identity, policy, cost)
        ns = self._monotonic_ns
        lock = self._lock
        lock.acquire()
        try:
            return table.decide(
                identity, CHECK, cost, ns() // 1000 if ns is not None else self._clock()
            )
        finally:
            lock.release()

    def peek(self, identity: str, policy: str, cost: int = 1, tier: str | None = None) -> Decision:
        table = self._tables.get(policy)
        if table is not None and (table.special or tier is not None) and type(identity) is str:
            base, table = table, self._select(table, identity, tier)
            if identity in base.exempt:
                self._table(identity, policy, cost, table)  # a bad cost is still an error
                return base.exit.exempt()
        table = self._table(identity, policy, cost, table)
        with self._lock:
            return table.decide(identity, PEEK, cost, self._clock())

    def _table(
        self, identity: object, policy: str, cost: object, table: _Table[Any] | None = None
    ) -> _Table[Any]:
        """The policy's table (or ``table``, its variant), once the call is valid (``check``
        inlines this check)."""
        if table is None:
            table = self._tables.get(policy)
            if table is not None and table.overrides and type(identity) is str:
                table = table.overrides.get(identity, table)
        if (
            table is None
            or type(identity) is not str
            or type(cost) is not int
            or not 0 < cost <= table.capacity
        ):
            self._reject(identity, policy, cost)
        return table

    def reset(self, identity: str, policy: str) -> None:
        table = self._tables.get(policy)
        if table is None or type(identity) is not str:
            self._reject(identity, policy, 1)
        with self._lock:
            table.forget(identity)

    def check_many(self, items: Sequence[Item]) -> list[Decision]:
        """Decide ``items`` all or nothing: if any is refused, nothing is consumed."""
        if not items:
            raise ValueError("check_many needs at least one (identity, policy) item")
        if len(items) == 1:
            item = items[0]
            tier = item[3] if len(item) > 3 else None
            return [self.check(item[0], item[1], item[2] if len(item) > 2 else 1, tier)]
        members: list[tuple[_Table[Any], str, int]] = []
        for item in items:
            identity, policy = item[0], item[1]
            cost = item[2] if len(item) > 2 else 1
            tier = item[3] if len(item) > 3 else None
            variant = None
            if tier is not None:
                table = self._tables.get(policy)
                if table is not None and type(identity) is str:
                    variant = self._select(table, identity, tier)
            members.append((self._table(identity, policy, cost, variant), identity, cost))
        if any(table.special or table.exit.shadow for table, _, _ in members):
            return self._check_split(members)
        return self._check_group(members)

    def _check_split(self, members: list[tuple[_Table[Any], str, int]]) -> list[Decision]:
        """check_many with exempt identities (allowed, nothing stored) or shadow policies
        (each decided alone, so that a policy that only watches never blocks the others),
        as the core splits it for Redis."""
        decisions: dict[int, Decision] = {}
        group: list[int] = []
        with self._lock:
            now = self._clock()
            for index, (table, identity, cost) in enumerate(members):
                base = self._tables[table.name]  # an override's table has no exemptions
                if identity in base.exempt:
                    decisions[index] = base.exit.exempt()
                elif table.exit.shadow:
                    decisions[index] = table.decide(identity, CHECK, cost, now)
                else:
                    group.append(index)
        if group:
            decided = self._check_group([members[i] for i in group])
            decisions.update(zip(group, decided, strict=True))
        return [decisions[index] for index in range(len(members))]

    def _check_group(self, members: list[tuple[_Table[Any], str, int]]) -> list[Decision]:
        """Decide ``members`` all or nothing, under the lock."""
        with self._lock:
            now = self._clock()
            # A member sees the states its predecessors in the group would write.
            pending: dict[tuple[str, str], Sequence[int]] = {}
            writes: list[tuple[_Table[Any], str, tuple[int, ...], int]] = []
            outcomes: list[Outcome] = []
            for table, identity, cost in members:
                key = (table.name, identity)
                state = pending[key] if key in pending else table.state(identity, now)
                outcome = table.function(state, now, cost, table.rule)
                outcomes.append(outcome)
                if outcome.allowed and outcome.state is not None:
                    pending[key] = outcome.state
                    writes.append((table, identity, outcome.state, now + outcome.ttl))
            if all(outcome.allowed for outcome in outcomes):
                for table, identity, state, expiry in writes:
                    table.write(identity, state, expiry, now)
        return [
            member[0].decision(outcome) for member, outcome in zip(members, outcomes, strict=True)
        ]

    def run_slot(self, call: SlotCall) -> Reply:
        """One slot operation, as ``lua/concurrency.lua`` does it on Redis (the same pure
        function, :func:`ratewall.algorithms.slots`), answered with the same reply."""
        with self._lock:
            now = self._clock()
            table = self._slots
            if call.op == SLOT_RESET:
                table.pop(call.key, None)
                return [1, 0, 0, -1, now]
            outcome = slots(table.get(call.key, {}), call.op, call.token, now, call.cost, call.rule)
            if outcome.holders is not None:
                if outcome.holders:
                    if call.key not in table and len(table) >= self._slots_sweep_at:
                        self._sweep_slots(now)
                    table[call.key] = outcome.holders
                else:
                    table.pop(call.key, None)
            return [int(outcome.allowed), outcome.free, outcome.reset, outcome.retry, now]

    def _sweep_slots(self, now: int) -> None:
        """Drop keys whose every lease has expired (their holders died without releasing)."""
        table = self._slots
        for key in [k for k, holders in table.items() if max(holders.values()) <= now]:
            del table[key]
        self._slots_sweep_at = max(_SWEEP_AT, 2 * len(table))

    def close(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.entries.clear()
            self._slots.clear()

    async def aclose(self) -> None:
        self.close()


def _unattached(identity: object, policy: str, cost: object, tier: object = None) -> NoReturn:
    raise KeyError(f"unknown policy {policy!r}: this memory store serves no limiter yet")
