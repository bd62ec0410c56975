"""Decision is a frozen dataclass (SPEC §2), however it was built: through its constructor or
through the decision exit's fast path (``ratewall._exit``)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from ratewall import Decision
from ratewall._exit import PolicyExit, exit_for
from ratewall.metrics import Metrics

# (exit's arguments, the same Decision through its constructor)
MADE = [
    (("allowed", 4, 60_000_000, "store"), Decision(True, "login", 5, 4, 60.0, None)),
    (("refused", 0, 15_000_000, 15_000_000, "store"), Decision(False, "login", 5, 0, 15.0, 15.0)),
    (
        ("allowed", 0, 2_000_001, "lease"),
        Decision(True, "login", 5, 0, 2.000001, None, source="lease"),
    ),
    (("refused", -3, 1, 1, "cache"), Decision(False, "login", 5, 0, 1e-6, 1e-6, source="cache")),
]


@pytest.mark.parametrize(("arguments", "slow"), MADE)
def test_the_exit_builds_the_same_decision_as_the_constructor(
    arguments: tuple[object, ...], slow: Decision
) -> None:
    method, *values = arguments
    fast = getattr(PolicyExit("login", 5), str(method))(*values)
    assert type(fast) is Decision
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert bool(fast) is slow.allowed
    assert fast.source == slow.source
    assert not fast.degraded


def test_failure_mode_decisions_say_so() -> None:
    exit = PolicyExit("login", 5)
    assert exit.failed(True, 1.0) == Decision(True, "login", 5, 5, 0.0, None, degraded=True)
    assert exit.failed(False, 1.0) == Decision(False, "login", 5, 0, 1.0, 1.0, degraded=True)
    assert {exit.failed(True, 1.0).source, exit.failed(False, 1.0).source} == {"failure"}


def test_the_source_takes_no_part_in_comparisons() -> None:
    """The same answer reached through the deny cache or the store is the same decision."""
    exit = PolicyExit("login", 5)
    assert exit.refused(0, 1, 1, "cache") == exit.refused(0, 1, 1, "store")


def test_a_made_decision_is_frozen_and_a_full_dataclass() -> None:
    decision = PolicyExit("login", 5).allowed(4, 60_000_000)
    assert dataclasses.is_dataclass(decision)
    assert [f.name for f in dataclasses.fields(decision)] == [
        "allowed",
        "policy",
        "limit",
        "remaining",
        "reset_after",
        "retry_after",
        "degraded",
        "shadowed",
        "source",
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


@pytest.mark.parametrize("shadow", [False, True])
@pytest.mark.parametrize(("arguments", "slow"), MADE)
def test_the_counting_exit_builds_the_same_decisions_as_the_plain_one(
    arguments: tuple[object, ...], slow: Decision, shadow: bool
) -> None:
    """The exit of a limiter observed by Metrics fills its drafts itself (the metrics
    budget): field for field what the plain exit makes, shadow policies included."""
    method, *values = arguments
    plain = getattr(PolicyExit("login", 5, shadow), str(method))(*values)
    counted = getattr(exit_for("login", 5, Metrics(), shadow), str(method))(*values)
    assert type(counted) is Decision
    assert dataclasses.astuple(counted) == dataclasses.astuple(plain)
    assert counted.source == plain.source
    assert counted.shadowed == plain.shadowed == (shadow and not slow.allowed)
