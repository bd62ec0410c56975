"""Decision is a frozen dataclass (SPEC §2), however it was built: through its constructor or
through the hot path's ``make_decision``."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from ratewall import Decision
from ratewall.decision import make_decision

ARGUMENTS = [
    (True, "login", 5, 4, 60.0, None),
    (False, "login", 5, 0, 15.0, 15.0),
    (True, "api", 20, 0, 2.000001, None),
]


@pytest.mark.parametrize("arguments", ARGUMENTS)
def test_make_decision_builds_the_same_decision_as_the_constructor(
    arguments: tuple[bool, str, int, int, float, float | None],
) -> None:
    fast, slow = make_decision(*arguments), Decision(*arguments)
    assert type(fast) is Decision
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == (*arguments, False)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert bool(fast) is arguments[0]
    assert not fast.degraded


def test_a_made_decision_is_frozen_and_a_full_dataclass() -> None:
    decision = make_decision(True, "login", 5, 4, 60.0, None)
    assert dataclasses.is_dataclass(decision)
    assert [f.name for f in dataclasses.fields(decision)] == [
        "allowed",
        "policy",
        "limit",
        "remaining",
        "reset_after",
        "retry_after",
        "degraded",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del decision.remaining
    # No __dict__: other names cannot be set either (CPython 3.11 reports it as a TypeError
    # for any frozen slotted dataclass: dataclasses bug, its __setattr__ names the old class).
    with pytest.raises((AttributeError, TypeError)):
        decision.extra = 1  # type: ignore[attr-defined]
    refused = dataclasses.replace(decision, allowed=False, retry_after=15.0)
    assert refused == Decision(False, "login", 5, 4, 60.0, 15.0)
    assert decision.allowed  # replace made a new one
    assert copy.copy(decision) == decision
    assert copy.deepcopy(decision) == decision
    assert pickle.loads(pickle.dumps(decision)) == decision
    assert decision != Decision(True, "login", 5, 3, 60.0, None)
    match decision:
        case Decision(allowed, policy, limit, remaining):
            assert (allowed, policy, limit, remaining) == (True, "login", 5, 4)
