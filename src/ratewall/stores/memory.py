"""The in-process store: the pure algorithms over a dict. Exact within one process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..algorithms import FUNCTIONS
from ..core import CHECK, RESET, Call, Reply, Request

__all__ = ["MemoryStore"]

_Entry = tuple[tuple[int, ...], int]  # state, expiry (µs)


class MemoryStore:
    """Keeps each key's state with its expiry; thread-safe; expired entries are swept as the
    dict grows, so memory stays proportional to the live keys. Executes calls exactly as
    ``lua/_main.lua`` does, groups (all-or-nothing) included.

    ``clock`` gives integer microseconds (monotonic by default, injectable for tests).
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._data: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024

    def __len__(self) -> int:
        return len(self._data)

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request (all or nothing) in order; one reply per call."""
        with self._lock:
            now = self._clock()
            return [self._run_request(request, now) for request in requests]

    async def arun(self, requests: Sequence[Request]) -> list[list[Reply]]:
        return self.run(requests)

    def run_one(self, call: Call) -> Reply:
        """One call on its own: the hot path of ``check``."""
        with self._lock:
            return self._one(call, self._clock())

    async def arun_one(self, call: Call) -> Reply:
        return self.run_one(call)

    def _one(self, call: Call, now: int) -> Reply:
        if call.op == RESET:
            self._data.pop(call.key, None)
            return (1, 0, 0, -1, now)
        state = self._stored(call.key, now)
        rule = call.rule
        outcome = FUNCTIONS[rule.algorithm](state, now, call.cost, rule)
        if not outcome.allowed:
            return (0, outcome.remaining, outcome.reset, outcome.retry, now, *state)
        if call.op == CHECK and outcome.state is not None:
            self._data[call.key] = (outcome.state, now + outcome.ttl)
            if len(self._data) >= self._sweep_at:
                self._sweep(now)
        return (1, outcome.remaining, outcome.reset, -1, now)

    def _stored(self, key: str, now: int) -> tuple[int, ...]:
        entry = self._data.get(key)
        return entry[0] if entry is not None and now < entry[1] else ()

    def _run_request(self, calls: Request, now: int) -> list[Reply]:
        if len(calls) == 1:
            return [self._one(calls[0], now)]
        data = self._data
        pending: dict[str, _Entry] = {}
        replies: list[Reply] = []
        before: list[tuple[int, ...]] = []
        all_allowed = True
        for call in calls:
            if call.op == RESET:
                data.pop(call.key, None)
                pending.pop(call.key, None)
                replies.append((1, 0, 0, -1, now))
                before.append(())
                continue
            stored = self._stored(call.key, now)
            state = pending[call.key][0] if call.key in pending else stored
            rule = call.rule
            outcome = FUNCTIONS[rule.algorithm](state, now, call.cost, rule)
            before.append(stored)
            replies.append(
                (int(outcome.allowed), outcome.remaining, outcome.reset, outcome.retry, now)
            )
            if not outcome.allowed:
                all_allowed = False
            elif call.op == CHECK and outcome.state is not None:
                pending[call.key] = (outcome.state, now + outcome.ttl)
        if all_allowed:
            data.update(pending)
            if len(data) >= self._sweep_at:
                self._sweep(now)
            return replies
        return [(*reply, *state) for reply, state in zip(replies, before, strict=True)]

    def _sweep(self, now: int) -> None:
        live = {key: entry for key, entry in self._data.items() if now < entry[1]}
        self._data = live
        self._sweep_at = max(1024, 2 * len(live))

    def close(self) -> None:
        with self._lock:
            self._data.clear()

    async def aclose(self) -> None:
        self.close()
