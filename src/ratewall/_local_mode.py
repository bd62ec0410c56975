"""The ``"local"`` failure mode: while the store fails, each process enforces its own share
of a policy's limit in memory, so that an outage neither opens the gates nor closes the
service.

Sans-IO, like the rest of the core. The share (``ratewall.policy.local_share``) is decided
by the memory store's tables, with the policy's algorithm, over an injected clock (the
core's). A table is kept per policy variant (overrides and tiers share their policy's
entries, as in the memory store) and keyed by the store key, so one identity's state is
one entry.

What the tables promise:

- **Kept across the outage.** Entries live until their own expiry (the window, the bucket
  refill), not until the store answers: a store that flaps does not hand out a fresh share
  on each failure. When it answers again the store decides, and this table is only read
  for the next failure.
- **Bounded.** At most ``maxsize`` identities per policy: expired entries are swept first,
  then the oldest entry is forgotten (that identity starts a fresh share).
- **Thread-safe**, with one lock taken only on this path, and forgotten in a forked child
  (whose share is its own, as a fresh process's would be).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._calls import CHECK, PEEK
from ._exit import LocalExit
from ._fork import reset_in_child
from .algorithms import rule_for
from .policy import Policy, local_share
from .stores._tables import Table, table_for

if TYPE_CHECKING:
    from .decision import Decision
    from .observer import Observer

__all__ = ["LocalShares"]


class LocalShares:
    """The local tables of one limiter (its :class:`~ratewall.core.Core`)."""

    def __init__(self, maxsize: int, clock: Callable[[], int], observer: Observer | None) -> None:
        self.maxsize = max(1, maxsize)
        self._now = clock
        self._observer = observer
        self._lock = threading.Lock()
        # (policy name, the variant's Policy) -> its table; entries shared per policy name.
        self._tables: dict[tuple[str, Policy], Table[Any]] = {}
        self._entries: dict[str, dict[str, Any]] = {}  # per policy name and algorithm
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._tables = {}
        self._entries = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def _table(self, name: str, policy: Policy) -> Table[Any]:
        table = self._tables.get((name, policy))
        if table is None:
            share = local_share(policy)
            rule = rule_for(share)
            table = table_for(
                name, rule, LocalExit(name, rule.capacity, policy.shadow, self._observer)
            )
            # Shared by the policy's variants; a reload that changes the algorithm starts
            # afresh (one algorithm's entries are never read as another's).
            table.entries = self._entries.setdefault(f"{name}\0{policy.algorithm}", {})
            self._tables[(name, policy)] = table
        return table

    def decide(self, name: str, policy: Policy, key: str, op: int, cost: int) -> Decision:
        """This process's answer for ``key`` under ``policy`` (a variant of policy ``name``)
        while the store fails; ``op`` is PEEK (consume nothing) or another (consume if
        allowed)."""
        return self.decide_many([(name, policy, key, cost)], op)[0]

    def decide_many(self, items: Sequence[tuple[str, Policy, str, int]], op: int) -> list[Decision]:
        """Decide ``items`` (policy name, policy, key, cost) all or nothing, as one request
        checked against several policies: if any is refused, none is consumed."""
        with self._lock:
            now = self._now()
            tables = []
            for name, policy, key, _ in items:
                table = self._table(name, policy)
                entries = table.entries
                if key not in entries and len(entries) >= self.maxsize:
                    table.sweep(now)
                    while len(entries) >= self.maxsize:
                        del entries[next(iter(entries))]  # the oldest: dicts keep order
                tables.append(table)
            if len(items) == 1:
                return [
                    tables[0].decide(items[0][2], PEEK if op == PEEK else CHECK, items[0][3], now)
                ]
            # A group, as the memory store decides one (its _check_group): each member sees
            # the states its predecessors would write; all are written only if all pass.
            pending: dict[tuple[str, str], Sequence[int]] = {}
            writes = []
            outcomes = []
            for table, (name, _, key, cost) in zip(tables, items, strict=True):
                state = pending[(name, key)] if (name, key) in pending else table.state(key, now)
                outcome = table.function(state, now, cost, table.rule)
                outcomes.append(outcome)
                if outcome.allowed and outcome.state is not None:
                    pending[(name, key)] = outcome.state
                    writes.append((table, key, outcome.state, now + outcome.ttl))
            if op != PEEK and all(
                o.allowed or t.exit.shadow for t, o in zip(tables, outcomes, strict=True)
            ):
                for table, key, state, expiry in writes:
                    table.write(key, state, expiry, now)
            return [table.decision(o) for table, o in zip(tables, outcomes, strict=True)]
