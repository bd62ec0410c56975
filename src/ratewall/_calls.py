"""What the core asks a store to do, and what a store answers: the vocabulary between
:mod:`ratewall.core` (which plans and decides, with no I/O) and :mod:`ratewall.stores`
(which executes). Both sides import it; neither imports the other for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from .algorithms import Rule

__all__ = ["CHECK", "LEASE", "PEEK", "RESET", "Call", "Reply", "Request", "SlotCall"]

CHECK: Final = 0
PEEK: Final = 1
RESET: Final = 2
LEASE: Final = 3  # a check that also takes a slice for this node (Policy.lease)

# A store reply: allowed (0/1), remaining, reset µs, retry µs (-1 if allowed), store now µs,
# then on refusal the key's stored state (integers); after an allowed lease, the units granted.
Reply = Sequence[int]


class Call(NamedTuple):
    """One operation on one key. Stores execute *requests*: sequences of calls decided all
    or nothing (one HTTP request checked against several policies is one request)."""

    key: str
    op: int
    cost: int
    rule: Rule


Request = Sequence[Call]


class SlotCall(NamedTuple):
    """One operation on a concurrency policy's key (``lua/concurrency.lua``): ``op`` one of
    ``algorithms.SLOT_*``, ``token`` the holder's, ``cost`` the slots a peek asks for."""

    key: str
    op: int
    token: str
    cost: int
    rule: Rule
