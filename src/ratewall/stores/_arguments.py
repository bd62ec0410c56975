"""The script's KEYS and ARGV for a list of requests, encoded as RESP once and reused (the
hot path's allocation-free packing), and the replies split back per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from .._calls import Call, Reply, Request, SlotCall
from ..algorithms import Rule
from ._resp import bulk

__all__ = ["ALTERNATING", "Arguments", "flatten", "regroup"]

_CACHE_LIMIT: Final = 4096  # encoded keys and call arguments kept; past it, start afresh
_NO_CLOCK: Final = bulk("")  # ARGV[1] "": the script reads the server's TIME
_ZERO: Final = bulk(0)
_ONE: Final = bulk(1)
_ONE_GROUP: Final = (0,)  # pack's groups for one call
_LONE_ARGC: Final = 3 + 5 + 1  # numkeys, clock, rule count; a key and its 4 values; a rule


def _rule_text(rule: Rule) -> str:
    """A rule as the script reads it: its integers joined by ":" (lua/_main.lua's header)."""
    return ":".join(map(str, rule))


class Arguments:
    """Builds the script's KEYS and ARGV for a list of requests: each distinct rule once,
    then four values per call (op, group, cost, rule index).

    The script only compares a call's group with its neighbour's, so a request's group is
    the parity of its index (0, 1, 0, ...): every per-call value then comes from a small set,
    and a call's arguments are encoded to RESP once and reused (a batch of 512 decisions is
    mostly dictionary look-ups and one join).
    """

    __slots__ = ("_arguments", "_clock", "_keys", "_lone", "_rules")

    def __init__(self, clock: Callable[[], int] | None) -> None:
        self._clock = clock
        self._rules: dict[Rule, bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._arguments: dict[tuple[int, int, int, int], bytes] = {}
        self._lone: dict[tuple[int, int, Rule], bytes] = {}

    def pack(self, calls: Sequence[Call], groups: Sequence[int]) -> tuple[int, bytes]:
        """``(argc, body)`` for :class:`._resp.Script`: numkeys, KEYS and ARGV as RESP.
        ``groups`` holds each call's group parity (alternating between requests)."""
        keys = self._keys
        arguments = self._arguments
        positions: dict[Rule, int] = {}
        last_rule: Rule | None = None
        position = 0
        key_parts: list[bytes] = []
        call_parts: list[bytes] = []
        for (key, op, cost, rule), group in zip(calls, groups, strict=False):
            encoded = keys.get(key)
            if encoded is None:
                if len(keys) >= _CACHE_LIMIT:
                    keys.clear()
                encoded = keys[key] = bulk(key)
            key_parts.append(encoded)
            if rule is not last_rule:
                last_rule = rule
                position = positions.setdefault(rule, len(positions) + 1)
            encoded = arguments.get((op, group, cost, position))
            if encoded is None:
                if len(arguments) >= _CACHE_LIMIT:
                    arguments.clear()
                encoded = arguments[op, group, cost, position] = (
                    bulk(op) + bulk(group) + bulk(cost) + bulk(position)
                )
            call_parts.append(encoded)
        count = len(key_parts)
        key_parts.append(_NO_CLOCK if self._clock is None else bulk(self._clock()))
        key_parts.append(bulk(len(positions)))
        key_parts += [self._encoded(rule) for rule in positions]
        key_parts += call_parts
        return 3 + 5 * count + len(positions), bulk(count) + b"".join(key_parts)

    def pack_one(self, call: Call) -> tuple[int, bytes]:
        """``pack((call,), (0,))`` for the usual sync decision, cheaper: everything after the
        key (the clock, the rule, the call's values) is the same for every call of a policy,
        op and cost, and is encoded once."""
        if self._clock is not None:
            return self.pack((call,), _ONE_GROUP)
        key, op, cost, rule = call
        encoded = self._keys.get(key)
        if encoded is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            encoded = self._keys[key] = bulk(key)
        tail = self._lone.get((op, cost, rule))
        if tail is None:
            if len(self._lone) >= _CACHE_LIMIT:
                self._lone.clear()
            tail = self._lone[op, cost, rule] = (
                _NO_CLOCK + _ONE + self._encoded(rule) + bulk(op) + _ZERO + bulk(cost) + _ONE
            )
        return _LONE_ARGC, _ONE + encoded + tail

    def _encoded(self, rule: Rule) -> bytes:
        encoded = self._rules.get(rule)
        if encoded is None:
            encoded = self._rules[rule] = bulk(_rule_text(rule))
        return encoded

    def slot_args(self, call: SlotCall) -> list[int | str]:
        """ARGV of ``lua/concurrency.lua`` for ``call`` (its one key is ``call.key``)."""
        rule = call.rule
        now: int | str = self._clock() if self._clock is not None else ""
        return [call.op, call.token, rule.limit, rule.window, call.cost, now]

    def pack_slot(self, call: SlotCall) -> tuple[int, bytes]:
        """``(argc, body)`` of ``lua/concurrency.lua`` for ``call``, as :meth:`pack`."""
        args = self.slot_args(call)
        return 2 + len(args), _ONE + bulk(call.key) + b"".join(map(bulk, args))

    def build(self, requests: Sequence[Request]) -> tuple[list[str], list[int | str]]:
        """KEYS and ARGV as lists, for redis-py's ``Script`` (Cluster and Sentinel)."""
        index: dict[Rule, int] = {}
        keys: list[str] = []
        calls: list[int | str] = []
        for group, request in enumerate(requests):
            for call in request:
                position = index.get(call.rule)
                if position is None:
                    position = index[call.rule] = len(index) + 1
                keys.append(call.key)
                calls += (call.op, group & 1, call.cost, position)
        args: list[int | str] = [self._clock() if self._clock is not None else "", len(index)]
        args += [_rule_text(rule) for rule in index]
        args += calls
        return keys, args


def flatten(requests: Sequence[Request]) -> tuple[list[Call], list[int]]:
    """Every call of ``requests`` in order, and each one's group parity."""
    calls: list[Call] = []
    groups: list[int] = []
    for group, request in enumerate(requests):
        calls += request
        groups += [group & 1] * len(request)
    return calls, groups


def regroup(requests: Sequence[Request], replies: Sequence[Reply]) -> list[list[Reply]]:
    grouped = []
    index = 0
    for request in requests:
        grouped.append(list(replies[index : index + len(request)]))
        index += len(request)
    return grouped


# The group parities of a batch of single calls, each call its own request.
ALTERNATING: Final = (0, 1) * 4096
