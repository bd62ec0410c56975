"""The memory store's sliding log: :func:`ratewall.algorithms.sliding_log` in O(cost).

The pure function takes the log as a tuple and returns a new one, so a decision costs time in
proportion to the entries in the window (tens of thousands on a busy key). This structure
keeps the same entries in growing lists with running totals, the layout of the Lua twin
(``lua/sliding_log.lua``): expired entries are skipped by moving ``start``, the used amount is
two subtractions, and a decision touches only the entries that expire or that a refusal's
retry time needs. Its decisions are the pure function's, entry for entry (a unit test checks).
"""

from __future__ import annotations

from ..algorithms import Outcome, Rule

__all__ = ["SlidingLog"]

# Expired entries are removed from the lists' front once there are this many and they are at
# least half of the lists: amortised O(1) per entry, and no copying on every decision.
_COMPACT_AT = 64


class SlidingLog:
    """Admitted ``(time, cost)`` entries, oldest first, with running totals.

    ``times[i]``, ``costs[i]``, ``totals[i]`` describe entry ``i``; ``totals[i]`` is the cost
    admitted in entries ``0..i``, so entries ``i..j`` admitted ``totals[j] - totals[i] +
    costs[i]``. Entries before ``start`` are expired. Not thread-safe (the store locks).
    """

    __slots__ = ("costs", "start", "times", "totals")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.costs: list[int] = []
        self.totals: list[int] = []
        self.start = 0

    @classmethod
    def from_state(cls, state: tuple[int, ...]) -> SlidingLog:
        """A log holding the pure function's state ``(t1, c1, t2, c2, ...)``."""
        log = cls()
        total = 0
        for index in range(0, len(state), 2):
            total += state[index + 1]
            log.times.append(state[index])
            log.costs.append(state[index + 1])
            log.totals.append(total)
        return log

    def decide(self, now: int, cost: int, rule: Rule, commit: bool) -> Outcome:
        """The pure function's outcome; if ``commit`` and allowed, the request is recorded.

        The outcome's ``state`` is always ``None``: the log itself is the state.
        """
        window = rule.window
        remaining = self.take(now, cost, rule.limit, window, commit)
        if remaining >= 0:
            return Outcome(True, remaining, window, -1, None, window)
        left, reset, retry = self.refusal(now, cost, rule.limit, window)
        return Outcome(False, left, reset, retry, None, 0)

    def take(self, now: int, cost: int, limit: int, window: int, commit: bool) -> int:
        """The units left once ``cost`` is admitted at ``now`` (recorded if ``commit``, and
        the expired entries compacted away), or -1 if it is refused, which changes nothing.
        An admission's reset time and expiry are both ``window``. The memory store's hot
        path: no :class:`Outcome`."""
        times, totals = self.times, self.totals
        size = len(times)
        first = self.start
        while first < size and times[first] + window <= now:
            first += 1
        used = totals[-1] - totals[first] + self.costs[first] if first < size else 0
        if used + cost > limit:
            return -1
        if commit:
            self.start = first
            if first < size and times[-1] == now:
                self.costs[-1] += cost
                totals[-1] += cost
            else:
                times.append(now)
                self.costs.append(cost)
                totals.append((totals[-1] if size else 0) + cost)
            if first >= _COMPACT_AT:
                self.compact()
        return limit - used - cost

    def refusal(self, now: int, cost: int, limit: int, window: int) -> tuple[int, int, int]:
        """``(remaining, reset, retry)`` of a request :meth:`take` refuses at ``now``."""
        times, totals = self.times, self.totals
        size = len(times)
        first = self.start
        while first < size and times[first] + window <= now:
            first += 1
        # Refused: used >= 1, so the last entry is live.
        used = totals[-1] - totals[first] + self.costs[first]
        reset = times[-1] + window - now
        retry = reset
        base = totals[first] - self.costs[first]
        for index in range(first, size):
            if used - (totals[index] - base) + cost <= limit:
                retry = times[index] + window - now
                break
        return limit - used, reset, retry

    def compact(self) -> None:
        """Drop expired entries from the lists."""
        start = self.start
        if start >= _COMPACT_AT and 2 * start >= len(self.times):
            del self.times[:start], self.costs[:start], self.totals[:start]
            self.start = 0

    def state(self) -> tuple[int, ...]:
        """The pure function's state ``(t1, c1, t2, c2, ...)``: the entries from ``start``,
        exactly as the pure function would hold them."""
        state: list[int] = []
        for index in range(self.start, len(self.times)):
            state += (self.times[index], self.costs[index])
        return tuple(state)
