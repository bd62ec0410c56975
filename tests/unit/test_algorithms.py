"""The pure algorithms against their contract and against independent reference models."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratewall import ALGORITHMS, Policy
from ratewall.algorithms import FUNCTIONS, Outcome, Rule, rule_for

WINDOWS = st.sampled_from([0.5, 1, 7, 60, 3600, 86400])
START = 1_700_000_000_000_000  # µs, a realistic epoch time: exercises large integers


@st.composite
def scenarios(draw: st.DrawFn, algorithm: str | None = None) -> tuple[Rule, list[tuple[int, int]]]:
    name = algorithm or draw(st.sampled_from(ALGORITHMS))
    limit = draw(st.integers(1, 50))
    burst = None
    if name in ("token_bucket", "gcra") and draw(st.booleans()):
        burst = draw(st.integers(1, 80))
    rule = rule_for(Policy(limit, draw(WINDOWS), name, burst))
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.just(0),
                    st.integers(0, 2 * rule.window // max(1, limit)),
                    st.integers(0, 3 * rule.window),
                ),
                st.integers(1, rule.capacity),
            ),
            max_size=40,
        )
    )
    return rule, steps


def run(rule: Rule, steps: list[tuple[int, int]]) -> list[tuple[int, tuple[int, ...], Outcome]]:
    """Apply steps; return (now, state before, outcome) for every decision."""
    function = FUNCTIONS[rule.algorithm]
    state: tuple[int, ...] = ()
    now = START
    trace = []
    for step, cost in steps:
        now += step
        outcome = function(state, now, cost, rule)
        trace.append((now, state, outcome))
        if outcome.state is not None:
            state = outcome.state
    return trace


@settings(max_examples=400)
@given(scenarios())
def test_remaining_is_exactly_what_still_fits(scenario: tuple[Rule, list[tuple[int, int]]]) -> None:
    rule, steps = scenario
    function = FUNCTIONS[rule.algorithm]
    for now, before, outcome in run(rule, steps):
        after = outcome.state if outcome.state is not None else before
        assert 0 <= outcome.remaining <= rule.capacity
        if outcome.remaining:
            assert function(after, now, outcome.remaining, rule).allowed
        if outcome.remaining < rule.capacity:
            assert not function(after, now, outcome.remaining + 1, rule).allowed


@settings(max_examples=400)
@given(scenarios())
def test_retry_after_is_the_first_instant_the_same_request_passes(
    scenario: tuple[Rule, list[tuple[int, int]]],
) -> None:
    rule, steps = scenario
    function = FUNCTIONS[rule.algorithm]
    for (now, before, outcome), (_, cost) in zip(run(rule, steps), steps, strict=True):
        if outcome.allowed:
            assert outcome.retry == -1
            continue
        assert outcome.retry > 0
        assert not function(before, now + outcome.retry - 1, cost, rule).allowed
        assert function(before, now + outcome.retry, cost, rule).allowed


@settings(max_examples=400)
@given(scenarios())
def test_reset_after_is_when_the_state_is_full_again(
    scenario: tuple[Rule, list[tuple[int, int]]],
) -> None:
    rule, steps = scenario
    function = FUNCTIONS[rule.algorithm]
    for now, before, outcome in run(rule, steps):
        after = outcome.state if outcome.state is not None else before
        full = function(after, now + outcome.reset, rule.capacity, rule)
        assert full.allowed, "the whole capacity must fit once reset_after has passed"
        assert outcome.reset > 0
        assert not function(after, now + outcome.reset - 1, rule.capacity, rule).allowed


@settings(max_examples=400)
@given(scenarios())
def test_a_refusal_changes_nothing_and_ttl_covers_the_state(
    scenario: tuple[Rule, list[tuple[int, int]]],
) -> None:
    rule, steps = scenario
    function = FUNCTIONS[rule.algorithm]
    for now, _before, outcome in run(rule, steps):
        if not outcome.allowed:
            assert outcome.state is None
            continue
        assert outcome.state is not None
        assert outcome.ttl > 0
        # Past its TTL a state decides exactly like no state at all (so Redis may drop it).
        later = now + outcome.ttl
        for cost in {1, rule.capacity}:
            assert function(outcome.state, later, cost, rule) == function((), later, cost, rule)


@settings(max_examples=300)
@given(st.data())
def test_token_bucket_and_gcra_decide_identically(data: st.DataObject) -> None:
    rule, steps = data.draw(scenarios("token_bucket"))
    gcra_rule = rule._replace(algorithm=FUNCTIONS.index(FUNCTIONS[4]))
    bucket = [outcome[:4] for _, _, outcome in run(rule, steps)]
    gcra = [outcome[:4] for _, _, outcome in run(gcra_rule, steps)]
    assert bucket == gcra


def _reference_bucket(rule: Rule, steps: list[tuple[int, int]]) -> list[bool]:
    """A token bucket in exact rational arithmetic, written independently of the module."""
    capacity = Fraction(rule.capacity)
    per_us = Fraction(rule.limit, rule.window)
    tokens, last, now = capacity, START, START
    answers = []
    for step, cost in steps:
        now += step
        tokens = min(capacity, tokens + (now - last) * per_us)
        last = now
        if tokens >= cost:
            tokens -= cost
            answers.append(True)
        else:
            answers.append(False)
    return answers


def _reference_log(rule: Rule, steps: list[tuple[int, int]]) -> list[bool]:
    admitted: list[tuple[int, int]] = []
    now = START
    answers = []
    for step, cost in steps:
        now += step
        used = sum(c for t, c in admitted if now - rule.window < t)
        answers.append(used + cost <= rule.limit)
        if answers[-1]:
            admitted.append((now, cost))
    return answers


def _reference_fixed(rule: Rule, steps: list[tuple[int, int]]) -> list[bool]:
    opened, count, now = None, 0, START
    answers = []
    for step, cost in steps:
        now += step
        if opened is None or now >= opened + rule.window:
            opened, count = now, 0
        answers.append(count + cost <= rule.limit)
        if answers[-1]:
            count += cost
    return answers


def _reference_sliding(rule: Rule, steps: list[tuple[int, int]]) -> list[bool]:
    """Counts per window since the first request; previous weighted at ms resolution."""
    counts: dict[int, int] = {}
    origin, now = None, START
    answers = []
    for step, cost in steps:
        now += step
        if origin is None:
            origin = now
        index = (now - origin) // rule.window
        if index >= 2 and counts.get(index - 1, 0) == 0 and counts.get(index, 0) == 0:
            # Windows restart at the first request after an idle gap of two windows.
            origin, index, counts = now, 0, {}
        elapsed_ms = (now - origin - index * rule.window) // 1000
        w = rule.window // 1000
        used = Fraction(counts.get(index - 1, 0) * (w - elapsed_ms), w) + counts.get(index, 0)
        answers.append(used + cost <= rule.limit)
        if answers[-1]:
            counts[index] = counts.get(index, 0) + cost
    return answers


REFERENCES = {
    "fixed_window": _reference_fixed,
    "sliding_window": _reference_sliding,
    "sliding_log": _reference_log,
    "token_bucket": _reference_bucket,
    "gcra": _reference_bucket,
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=300)
@given(data=st.data())
def test_matches_an_independent_reference_model(algorithm: str, data: st.DataObject) -> None:
    rule, steps = data.draw(scenarios(algorithm))
    decided = [outcome.allowed for _, _, outcome in run(rule, steps)]
    assert decided == REFERENCES[algorithm](rule, steps)


def test_gcra_and_token_bucket_are_exact_over_a_day_at_odd_rates() -> None:
    """7 per day: the emission interval is not a whole number of microseconds."""
    for name in ("token_bucket", "gcra"):
        rule = rule_for(Policy(7, "1d", name))
        steps = [(0, 7)] + [(86_400_000_000 // 7, 1)] * 7 + [(86_400_000_000 // 7 + 1, 1)]
        answers = [o.allowed for _, _, o in run(rule, steps)]
        # 1/7 day is 12342857142.857 µs: waiting the truncated interval is 0.857 µs too early.
        assert answers == [True, False, True, True, True, True, True, True, True]
        assert answers == _reference_bucket(rule, steps)
