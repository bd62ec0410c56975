"""Leases: units a node took from the store ahead of time, spent without a round trip.

A policy with ``lease=N`` makes the core ask the store for a *lease* instead of a plain
check when this node holds too few units for a request: the store admits the request and
hands over up to ``N - cost`` more units, at most half of what would remain
(:func:`ratewall.algorithms.lease`). The node spends them locally until they run out or the
lease ends. The store counted them when it granted them, so within the lease's window no
node can admit more than the limit; units spent after the store's window moved on are the
overshoot, at most ``N`` per node: the documented worst case ``nodes × N``.

A lease ends when the policy's state would be back to full (a fixed window's end), at most
one ``window`` after it was granted, measured on this node's clock. Only one lease per key is
asked for at a time: while it is in flight, other requests for the key make plain checks, so
a node never holds more than one lease's worth of units per key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["LeaseBook"]

# A lease request that never came back (a cancelled task) stops blocking new ones after this.
_FETCH_TIMEOUT_US = 1_000_000


class _Lease:
    __slots__ = ("expires", "fetching_since", "reset_at", "store_remaining", "units")

    def __init__(self) -> None:
        self.units = 0  # held here, not yet spent
        self.expires = 0  # local µs: the units are void from then on
        self.reset_at = 0  # local µs: when the store's state is back to full
        self.store_remaining = 0  # what the store had left after the grant
        self.fetching_since = -1  # local µs a lease request left, -1: none in flight


class LeaseBook:
    """Leases held by this node, per key; a bounded LRU. Thread-safe; does no I/O."""

    __slots__ = ("_entries", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[str, _Lease] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def spend(self, key: str, cost: int, now: int) -> tuple[int, int] | None:
        """Spend ``cost`` held units: ``(remaining, reset_after_us)`` for the decision, or
        ``None`` when this node does not hold enough (the store must decide)."""
        lease = self._entries.get(key)
        if lease is None or lease.units < cost or now >= lease.expires:
            return None
        with self._lock:
            if lease.units < cost:  # another thread spent them meanwhile
                return None
            lease.units -= cost
            return lease.store_remaining + lease.units, max(0, lease.reset_at - now)

    def start(self, key: str, now: int) -> bool:
        """Whether this caller should ask the store for a lease (none is in flight for
        ``key``); if so, one is now in flight until :meth:`granted` or :meth:`ended`."""
        if self.maxsize <= 0:
            return False
        with self._lock:
            lease = self._entries.get(key)
            if lease is None:
                lease = self._entries[key] = _Lease()
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
            elif lease.fetching_since >= 0 and now - lease.fetching_since < _FETCH_TIMEOUT_US:
                return False
            self._entries.move_to_end(key)
            lease.fetching_since = now
            return True

    def granted(
        self,
        key: str,
        cost: int,
        granted: int,
        remaining: int,
        reset_us: int,
        window_us: int,
        now: int,
    ) -> int:
        """The store granted ``granted`` units (``cost`` of them for the asking request);
        returns the remaining units the request's decision reports (store + held)."""
        with self._lock:
            lease = self._entries.get(key)
            if lease is None:  # evicted meanwhile: keep nothing, report the store's view
                return remaining
            left = lease.units if now < lease.expires else 0
            lease.units = left + granted - cost
            lease.store_remaining = remaining
            lease.reset_at = now + reset_us
            lease.expires = now + min(reset_us, window_us)
            lease.fetching_since = -1
            return remaining + lease.units

    def ended(self, key: str) -> None:
        """The lease request was refused or failed: another may be asked for."""
        with self._lock:
            lease = self._entries.get(key)
            if lease is not None:
                lease.fetching_since = -1

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
