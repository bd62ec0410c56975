"""The memory store's incremental sliding log decides exactly as the pure function."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ratewall import Policy
from ratewall.algorithms import rule_for, sliding_log
from ratewall.stores._memory_log import SlidingLog

# (time step µs, cost, commit?, action): steps mostly forward, sometimes back (a server clock
# stepped by NTP); actions compact the lists or rebuild the log from the pure state (as the
# memory store's multi-policy check_many writes it).
STEP = st.one_of(st.integers(0, 3), st.integers(0, 2_000_000), st.sampled_from([-1, -1_000_000]))
ACTION = st.sampled_from(["", "", "", "rebuild", "compact"])


@settings(max_examples=400, deadline=None)
@given(
    limit=st.integers(1, 8),
    window_ms=st.integers(1, 3000),
    ops=st.lists(
        st.tuples(STEP, st.integers(1, 8), st.booleans(), ACTION), min_size=1, max_size=300
    ),
)
def test_decisions_equal_the_pure_function(
    limit: int, window_ms: int, ops: list[tuple[int, int, bool, str]]
) -> None:
    rule = rule_for(Policy(limit, window_ms / 1000, "sliding_log"))
    log = SlidingLog()
    state: tuple[int, ...] = ()
    now = 1_700_000_000_000_000
    for index, (step, raw_cost, commit, action) in enumerate(ops):
        now += step
        cost = min(raw_cost, rule.capacity)
        if action == "rebuild":
            log = SlidingLog.from_state(state)
        elif action == "compact":
            log.compact()
        want = sliding_log(state, now, cost, rule)
        got = log.decide(now, cost, rule, commit)
        assert got[:4] == want[:4], f"op {index}"
        assert got.ttl == want.ttl
        if want.allowed and commit:
            assert want.state is not None
            state = want.state
        assert log.state() == state


def test_compaction_keeps_memory_proportional_to_the_window() -> None:
    rule = rule_for(Policy(10, 1, "sliding_log"))
    log = SlidingLog()
    now = 0
    for _ in range(10_000):
        now += 200_000  # 5 per window: every decision is allowed, the oldest ones expire
        assert log.decide(now, 1, rule, commit=True).allowed  # compacts as it admits
    assert len(log.times) < 2 * 64 + 10
