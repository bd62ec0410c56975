"""The local deny cache: what this node already knows is refused.

When the store refuses a request, it also returns the key's state and the store's clock.
This node keeps that snapshot (bounded LRU) and, for later requests on the same key, runs the
same pure algorithm on it, with the store's time estimated from the local monotonic clock.
If the snapshot refuses the request, the store would too: other nodes can only have
consumed *more* since the snapshot, so the answer is given locally, with no round trip. If
the snapshot would allow it, the entry is dropped and the store decides. The cache therefore
never grants anything; it only saves round trips while a key is over its limit, and an
entry stops answering by itself at the refusal's retry time.

Two honest caveats, documented in the README: a ``reset`` made through *another* node is
seen here only when this node's snapshot runs out (at the latest at the retry time), and the
store's time is extrapolated with this node's clock (drift of a few ppm).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

from .algorithms import FUNCTIONS, Outcome, Rule

__all__ = ["DenyCache"]


class _Snapshot(NamedTuple):
    state: tuple[int, ...]
    store_now: int  # µs, store clock, when the snapshot was taken
    local_at: int  # µs, local clock, at the same moment


class DenyCache:
    """A bounded LRU of refused keys' state snapshots. Thread-safe; does no I/O."""

    __slots__ = ("_lock", "entries", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        #: key -> snapshot; read-only for callers (``key in cache.entries`` is the cheap test
        #: the hot path makes before anything else).
        self.entries: OrderedDict[str, _Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key: str, rule: Rule, cost: int, local_now: int) -> Outcome | None:
        """What the snapshot of ``key`` says now (``None`` without one). Only a refusal may be
        trusted: an allowed outcome means "ask the store" (the caller then forgets the key)."""
        snapshot = self.entries.get(key)
        if snapshot is None:
            return None
        state, store_now, local_at = snapshot
        elapsed = local_now - local_at
        if elapsed > 0:
            store_now += elapsed
        outcome = FUNCTIONS[rule.algorithm](state, store_now, cost, rule)
        if not outcome.allowed:
            # acquire/release rather than `with`: a refused flood comes through here.
            lock = self._lock
            lock.acquire()
            try:
                if key in self.entries:
                    self.entries.move_to_end(key)
            finally:
                lock.release()
        return outcome

    def remember(self, key: str, state: tuple[int, ...], store_now: int, local_now: int) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self.entries[key] = _Snapshot(state, store_now, local_now)
            self.entries.move_to_end(key)
            while len(self.entries) > self.maxsize:
                self.entries.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self.entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
