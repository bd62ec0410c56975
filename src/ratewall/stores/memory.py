"""The in-process store: the pure algorithms over a dict. Exact within one process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..algorithms import FUNCTIONS
from ..core import CHECK, RESET, Call, Reply

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps each key's state with its expiry; thread-safe; expired entries are swept as the
    dict grows, so memory stays proportional to the live keys.

    ``clock`` gives integer microseconds (monotonic by default, injectable for tests).
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._data: dict[str, tuple[tuple[int, ...], int]] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024

    def __len__(self) -> int:
        return len(self._data)

    def run(self, calls: Sequence[Call]) -> list[Reply]:
        with self._lock:
            now = self._clock()
            return [self._run_one(call, now) for call in calls]

    async def arun(self, calls: Sequence[Call]) -> list[Reply]:
        return self.run(calls)

    def _run_one(self, call: Call, now: int) -> Reply:
        data = self._data
        if call.op == RESET:
            data.pop(call.key, None)
            return (1, 0, 0, -1, now)
        entry = data.get(call.key)
        state = entry[0] if entry is not None and now < entry[1] else ()
        rule = call.rule
        outcome = FUNCTIONS[rule.algorithm](state, now, call.cost, rule)
        if outcome.allowed:
            if call.op == CHECK and outcome.state is not None:
                data[call.key] = (outcome.state, now + outcome.ttl)
                if len(data) >= self._sweep_at:
                    self._sweep(now)
            return (1, outcome.remaining, outcome.reset, -1, now)
        return (0, outcome.remaining, outcome.reset, outcome.retry, now, *state)

    def _sweep(self, now: int) -> None:
        live = {key: entry for key, entry in self._data.items() if now < entry[1]}
        self._data = live
        self._sweep_at = max(1024, 2 * len(live))

    def close(self) -> None:
        with self._lock:
            self._data.clear()

    async def aclose(self) -> None:
        self.close()
