"""The script's arguments as RESP: the lone-call shortcut packs exactly what the general
packer does (tests/redis runs both against real servers)."""

from __future__ import annotations

import hiredis
import pytest

from ratewall import Policy
from ratewall._calls import CHECK, LEASE, PEEK, RESET, Call
from ratewall.algorithms import rule_for
from ratewall.stores._arguments import Arguments

RULES = [
    rule_for(Policy(5, 60)),
    rule_for(Policy(100, "1h", algorithm="gcra")),
    rule_for(Policy(10, 1, algorithm="token_bucket", burst=30, lease=4)),
]
CALLS = [
    Call(key, op, cost, rule)
    for key in ("ratelimit:{user_1}:login", "ratelimit:{ü ✓}:p")
    for op in (CHECK, PEEK, RESET, LEASE)
    for cost in (1, 3)
    for rule in RULES
]


def _arguments(argc: int, body: bytes) -> list[bytes]:
    """What the server receives: ``body`` parsed back into its ``argc`` bulk strings."""
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % argc + body)
    parsed = reader.gets()
    assert isinstance(parsed, list)
    assert len(parsed) == argc
    return parsed


@pytest.mark.parametrize("call", CALLS)
def test_a_lone_call_is_packed_as_the_general_packer_packs_it(call: Call) -> None:
    # One packer for each, so that neither finds the other's cached encodings.
    lone = Arguments(None).pack_one(call)
    general = Arguments(None).pack((call,), (0,))
    assert lone == general
    # And again from the lone packer's caches.
    arguments = Arguments(None)
    arguments.pack_one(call)
    assert arguments.pack_one(call) == general


def test_a_lone_call_carries_its_key_rule_and_values() -> None:
    rule = RULES[2]
    call = Call("ratelimit:{user_1}:p", LEASE, 3, rule)
    numkeys, key, clock, rules, text, op, group, cost, index = _arguments(
        *Arguments(None).pack_one(call)
    )
    assert (numkeys, key, clock, rules) == (b"1", call.key.encode(), b"", b"1")
    assert text == ":".join(str(value) for value in rule).encode()
    assert (op, group, cost, index) == (b"3", b"0", b"3", b"1")


def test_an_injected_clock_is_sent_with_a_lone_call() -> None:
    call = Call("ratelimit:{user_1}:login", CHECK, 1, RULES[0])
    arguments = Arguments(lambda: 1_700_000_000_123_456)
    assert _arguments(*arguments.pack_one(call))[2] == b"1700000000123456"
