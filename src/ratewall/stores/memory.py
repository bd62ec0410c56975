"""The in-process store: each policy's states in a dict keyed by identity (its *table*,
:mod:`._tables`). Exact within one process.

There is no I/O and no deny cache here, so the facades hand whole operations to the store
(``check``, ``peek``, ``reset``, ``check_many``) and it decides them under its lock, with no
plan, key string or reply in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .._calls import CHECK, PEEK, Reply, SlotCall
from .._clock import monotonic_micros
from .._fork import reset_in_child
from ..algorithms import CONCURRENCY_CODE, SLOT_RESET, Outcome, slots
from ..decision import Decision
from ._tables import SWEEP_AT, Table, table_for

if TYPE_CHECKING:
    from ..core import Core

__all__ = ["MemoryStore"]

Item = tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str | None]


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
        self._tables: dict[str, Table[Any]] = {}
        self._reject: Callable[..., NoReturn] = _unattached
        # Concurrency policies' holders, by key (the Redis store's key, so the two agree
        # on what is one identity's state): token -> lease expiry (µs).
        self._slots: dict[str, dict[str, int]] = {}
        self._slots_sweep_at = SWEEP_AT
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
        tables: dict[str, Table[Any]] = {}
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
                variants: dict[str, Table[Any]] = getattr(table, kind)
                for label, variant in (getattr(compiled, kind) or {}).items():
                    variants[label] = table_for(name, variant.rule, variant.exit)
                    variants[label].entries = table.entries
            tables[name] = table
        self._tables = tables  # one assignment: a decision sees the old tables or the new
        self._reject = core.reject

    def _select(self, table: Table[Any], identity: str, tier: str | None) -> Table[Any]:
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
        self, identity: object, policy: str, cost: object, table: Table[Any] | None = None
    ) -> Table[Any]:
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
        members: list[tuple[Table[Any], str, int]] = []
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

    def _check_split(self, members: list[tuple[Table[Any], str, int]]) -> list[Decision]:
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

    def _check_group(self, members: list[tuple[Table[Any], str, int]]) -> list[Decision]:
        """Decide ``members`` all or nothing, under the lock."""
        with self._lock:
            now = self._clock()
            # A member sees the states its predecessors in the group would write.
            pending: dict[tuple[str, str], Sequence[int]] = {}
            writes: list[tuple[Table[Any], str, tuple[int, ...], int]] = []
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
        self._slots_sweep_at = max(SWEEP_AT, 2 * len(table))

    def close(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.entries.clear()
            self._slots.clear()

    async def aclose(self) -> None:
        self.close()


def _unattached(identity: object, policy: str, cost: object, tier: object = None) -> NoReturn:
    raise KeyError(f"unknown policy {policy!r}: this memory store serves no limiter yet")
