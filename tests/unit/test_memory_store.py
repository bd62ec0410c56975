"""The memory store decides exactly as the pure functions of ``algorithms.py`` define.

Its tables for the cheap algorithms run inlined twins of those functions over mutable
entries; here random sequences of operations (time stepping forward and back, identities,
check/peek/reset, costs, groups) run through the store and through a reference model (the
pure functions over a dict of ``(state, expiry)``, as the store was first written), and every
decision and every stored state must be equal.
"""

from __future__ import annotations

import time
from typing import Literal, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratewall import ALGORITHMS, Decision, Policy
from ratewall._clock import monotonic_micros
from ratewall.algorithms import FUNCTIONS, Outcome, Rule
from ratewall.core import Core
from ratewall.stores.memory import MemoryStore

START = 1_700_000_000_000_000  # µs: large integers, as on a real clock
IDENTITIES = ("u", "v", "", "a b")
Kind = Literal["check", "peek", "reset", "many"]
Anchor = Literal["", "reset", "retry"]


class Op(NamedTuple):
    """One operation, after a time step: ``step`` µs when ``anchor`` is empty; else to the
    instant the previous decision's ``reset_after`` (or ``retry_after``) points at, plus
    ``step`` (-1, 0 or 1), where ``<`` and ``<=`` part ways. A negative plain step is the
    clock stepping back."""

    anchor: Anchor
    step: int
    kind: Kind
    identity: str
    cost: int
    policy: str


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


def _decision(name: str, rule: Rule, outcome: Outcome) -> Decision:
    return Decision(
        outcome.allowed,
        name,
        rule.capacity,
        max(0, outcome.remaining),
        outcome.reset / 1_000_000,
        None if outcome.allowed else outcome.retry / 1_000_000,
    )


class Reference:
    """The pure functions over ``(policy, identity) -> (state, expiry)``."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules
        self.data: dict[tuple[str, str], tuple[tuple[int, ...], int]] = {}

    def state(self, key: tuple[str, str], now: int) -> tuple[int, ...]:
        entry = self.data.get(key)
        return entry[0] if entry is not None and now < entry[1] else ()

    def one(self, op: Op, now: int) -> Decision:
        rule = self.rules[op.policy]
        key = (op.policy, op.identity)
        outcome = FUNCTIONS[rule.algorithm](self.state(key, now), now, op.cost, rule)
        if outcome.allowed and op.kind == "check" and outcome.state is not None:
            self.data[key] = (outcome.state, now + outcome.ttl)
        return _decision(op.policy, rule, outcome)

    def group(self, ops: list[Op], now: int) -> list[Decision]:
        pending: dict[tuple[str, str], tuple[tuple[int, ...], int]] = {}
        decisions = []
        for op in ops:
            rule = self.rules[op.policy]
            key = (op.policy, op.identity)
            state = pending[key][0] if key in pending else self.state(key, now)
            outcome = FUNCTIONS[rule.algorithm](state, now, op.cost, rule)
            decisions.append(_decision(op.policy, rule, outcome))
            if outcome.allowed and outcome.state is not None:
                pending[key] = (outcome.state, now + outcome.ttl)
        if all(d.allowed for d in decisions):
            self.data.update(pending)
        return decisions


def _store(policies: dict[str, Policy], clock: Clock) -> tuple[MemoryStore, Core]:
    core = Core(policies, local_cache_size=0, local_clock=clock)
    store = MemoryStore(clock)
    store.attach(core)
    return store, core


@st.composite
def policies(draw: st.DrawFn, algorithm: str) -> Policy:
    window = draw(st.sampled_from([0.001, 0.5, 1, 7, 60, 3600, 86_400]) | st.integers(1, 5000))
    limit = draw(st.integers(1, 30) | st.integers(31, 100_000))
    burst = None
    if algorithm in ("token_bucket", "gcra"):
        most = (2**53 - 1) // (4 * round(window * 1_000_000))
        limit = min(limit, most)
        burst = draw(st.none() | st.integers(1, min(2 * limit + 30, most)))
    return Policy(limit, window, algorithm, burst)


@st.composite
def _op(draw: st.DrawFn, kind: Kind, chosen: dict[str, Policy]) -> Op:
    name = draw(st.sampled_from(["p", "p", "p", "q"]))
    window_us = chosen["p"].window_us
    edge = st.sampled_from([-1, 0, 1])
    anchor: Anchor = draw(st.sampled_from(["", "", "", "reset", "retry"]))
    if anchor:
        step = draw(edge)
    else:
        step = draw(
            st.one_of(
                st.just(0),
                st.integers(0, 1000),
                st.integers(0, 3 * window_us),
                st.integers(-window_us, -1),
            )
        )
        if draw(st.booleans()):
            step -= step % max(1, window_us // chosen["p"].limit) - draw(edge)
    identity = draw(st.sampled_from(IDENTITIES))
    return Op(anchor, step, kind, identity, draw(st.integers(1, chosen[name].capacity)), name)


@st.composite
def scenarios(draw: st.DrawFn, algorithm: str) -> tuple[dict[str, Policy], list[list[Op]]]:
    other = draw(st.sampled_from(ALGORITHMS))
    chosen = {"p": draw(policies(algorithm)), "q": draw(policies(other))}
    batches = []
    for _ in range(draw(st.integers(1, 50))):
        kind: Kind = draw(st.sampled_from(["check", "check", "check", "peek", "reset", "many"]))
        size = draw(st.integers(2, 4)) if kind == "many" else 1
        batches.append([draw(_op(kind, chosen)) for _ in range(size)])
    return chosen, batches


def _replay(algorithm: str, scenario: tuple[dict[str, Policy], list[list[Op]]]) -> list[Decision]:
    """Runs ``scenario`` through the store and the reference, which must agree at every
    step; returns the store's decisions (a group's last one)."""
    chosen, batches = scenario
    clock = Clock()
    store, core = _store(chosen, clock)
    reference = Reference(dict(core.rules))
    last: Decision | None = None
    decided: list[Decision] = []
    for index, batch in enumerate(batches):
        first = batch[0]
        step = first.step
        if first.anchor and last is not None:
            seconds = last.reset_after if first.anchor == "reset" else last.retry_after
            step += 0 if seconds is None else round(seconds * 1_000_000)
        clock.now += step
        where = f"{algorithm} step {index}: {batch}"
        if first.kind == "many":
            items = [(op.identity, op.policy, op.cost) for op in batch]
            decisions = store.check_many(items)
            assert decisions == reference.group(batch, clock.now), where
            last = decisions[-1]
            decided.append(last)
        elif first.kind == "reset":
            store.reset(first.identity, first.policy)
            reference.data.pop((first.policy, first.identity), None)
        else:
            method = store.check if first.kind == "check" else store.peek
            last = method(first.identity, first.policy, first.cost)
            assert last == reference.one(first, clock.now), where
            decided.append(last)
        for op in batch:
            stored = tuple(store._tables[op.policy].state(op.identity, clock.now))
            assert stored == reference.state((op.policy, op.identity), clock.now), where
    return decided


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_store_decides_like_the_pure_functions(algorithm: str, data: st.DataObject) -> None:
    _replay(algorithm, data.draw(scenarios(algorithm)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_edges_of_a_window_and_of_a_bucket(algorithm: str) -> None:
    """A hand-made sequence through every boundary: fill, refuse, expire to the µs."""
    policy = Policy(3, 1, algorithm)
    ops: list[list[Op]] = []
    for step in [0, 0, 0, 0, 1, 333_333, 333_334, 999_999 - 666_667, 1, 1, 1_000_000, -2]:
        ops.append([Op("", step, "check", "u", 1, "p")])
        ops.append([Op("", 0, "peek", "u", 3, "p")])
    _replay(algorithm, ({"p": policy, "q": policy}, ops))


def test_a_full_previous_window_weighs_whole_where_the_next_one_starts() -> None:
    """Sliding window: at the very µs the window rolls over, and on a clock stepping back
    before the window's start, the previous count weighs whole (a partial weight admits the
    first check below; the property test rarely lands on these instants)."""
    policy = Policy(1000, 1, "sliding_window")
    steps = [(0, 1000), (1_000_000, 1), (0, 1), (500_000, 500), (-600_000, 1), (600_000, 1)]
    ops = [[Op("", step, "check", "u", cost, "p")] for step, cost in steps]
    decisions = _replay("sliding_window", ({"p": policy, "q": policy}, ops))
    assert [d.allowed for d in decisions] == [True, False, False, True, False, False]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expired_entries_are_swept_as_a_table_grows(algorithm: str) -> None:
    clock = Clock()
    store, _ = _store({"p": Policy(5, 1, algorithm)}, clock)
    for i in range(1500):
        assert store.check(f"old{i}", "p").allowed
    assert len(store) == 1500
    clock.now += 2_000_000  # every entry is past its expiry
    for i in range(3000):
        assert store.check(f"new{i}", "p").remaining == 4
    # The old entries went at the first sweep; the new ones are alive.
    assert len(store) == 3000
    # An expired entry that was never swept decides like no entry at all.
    assert store.check("new0", "p").remaining == 3
    clock.now += 2_000_000
    assert store.check("new0", "p").remaining == 4


def test_bad_calls_raise_the_cores_errors() -> None:
    store, _ = _store({"login": Policy(5, 60)}, Clock())
    with pytest.raises(KeyError, match="unknown policy 'logon'; this limiter knows: login"):
        store.peek("u", "logon")
    with pytest.raises(KeyError, match="unknown policy"):
        store.reset("u", "logon")
    with pytest.raises(TypeError, match="identity must be a str"):
        store.reset(1, "login")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost must be an integer from 1 to 5"):
        store.check_many([("u", "login", 1), ("u", "login", 6)])
    with pytest.raises(ValueError, match="cost"):
        store.check_many([("u", "login", True)])  # a bool is not a cost
    with pytest.raises(ValueError, match="at least one"):
        store.check_many([])
    # Nothing was consumed by the calls that raised.
    assert store.peek("u", "login", 5).allowed


def test_a_store_serves_only_once_attached() -> None:
    with pytest.raises(KeyError, match="serves no limiter"):
        MemoryStore(Clock()).check("u", "p")


def test_the_default_clock_is_read_inline_as_the_same_microseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``check`` reads ``time.monotonic_ns`` itself when the clock is the default one, and
    must see the very instants that ``monotonic_micros`` (used by peek) gives."""
    now_ns = [5_000_000_999]  # 5_000_000 µs and 999 ns, which both must drop
    monkeypatch.setattr(time, "monotonic_ns", lambda: now_ns[0])
    store = MemoryStore(monotonic_micros)
    store.attach(Core({"p": Policy(2, 1)}, local_cache_size=0, local_clock=monotonic_micros))
    assert store.check("u", "p").reset_after == 1.0
    now_ns[0] += 999_999_000  # 1 µs before the window ends (µs: 5_999_999)
    assert store.check("u", "p").remaining == 0
    assert not store.check("u", "p").allowed
    assert not store.peek("u", "p").allowed
    now_ns[0] += 1_000  # the window's end, to the µs
    assert store.peek("u", "p").allowed
    assert store.check("u", "p").remaining == 1
