"""One script call deciding many requests gives what the pure functions give, reply by reply.

Batching (async callers sharing a round trip, ``check_many`` groups) sends many requests in
one script call: the same key decided several times, groups refused after some members were
admitted (their changes undone), resets and leases between checks. Hypothesis draws such
batches over a small pool of keys and policies of every algorithm, runs each batch through
the Redis store (one script call) and through a reference that applies
``ratewall.algorithms`` request by request at the same instant, and compares every reply: the
decision fields, the units a lease granted, and for refused groups the state snapshot the
deny cache would keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratewall import ALGORITHMS, Policy
from ratewall._calls import CHECK, LEASE, PEEK, RESET, Call, Reply, Request
from ratewall.algorithms import FUNCTIONS, lease, rule_for
from ratewall.stores.redis import RedisStore

pytestmark = pytest.mark.slow

START_US = 1_700_000_000_000_000
KEYS = ("ratelimit:{a}:p", "ratelimit:{b}:p")
# Windows of seconds: Redis expires keys in real time while the injected clock stands still,
# and a key must not vanish in real time while it is alive on the fake clock.
POLICY = st.builds(
    lambda limit, window, algorithm, lease: Policy(
        limit, window, algorithm, lease=None if lease is None else min(lease, limit)
    ),
    limit=st.integers(1, 6),
    window=st.integers(5, 30),
    algorithm=st.sampled_from(ALGORITHMS),
    lease=st.integers(1, 6) | st.none(),
)


class _Reference:
    """The pure functions over a dict of (state, expiry): what a script call must do."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[tuple[int, ...], int]] = {}

    def _stored(self, key: str, now: int) -> tuple[int, ...]:
        entry = self.data.get(key)
        return entry[0] if entry is not None and now < entry[1] else ()

    def run(self, requests: Sequence[Request], now: int) -> list[list[Reply]]:
        return [self._request(request, now) for request in requests]

    def _request(self, calls: Request, now: int) -> list[Reply]:
        pending: dict[str, tuple[tuple[int, ...], int]] = {}
        replies: list[tuple[int, ...]] = []
        before: list[tuple[int, ...]] = []
        for call in calls:
            if call.op == RESET:
                self.data.pop(call.key, None)
                pending.pop(call.key, None)
                replies.append((1, 0, 0, -1, now))
                before.append(())
                continue
            stored = self._stored(call.key, now)
            state = pending[call.key][0] if call.key in pending else stored
            function = FUNCTIONS[call.rule.algorithm]
            granted: tuple[int, ...] = ()
            if call.op == LEASE:
                outcome, units = lease(function, state, now, call.cost, call.rule)
                granted = (units,) if outcome.allowed else ()
            else:
                outcome = function(state, now, call.cost, call.rule)
            before.append(stored)
            replies.append(
                (
                    int(outcome.allowed),
                    outcome.remaining,
                    outcome.reset,
                    outcome.retry,
                    now,
                    *granted,
                )
            )
            if outcome.allowed and call.op != PEEK and outcome.state is not None:
                pending[call.key] = (outcome.state, now + outcome.ttl)
        if all(reply[0] == 1 for reply in replies):
            self.data.update(pending)
            return list(replies)
        return [(*reply, *state) for reply, state in zip(replies, before, strict=True)]


def _calls(templates: list[Call], data: st.DataObject) -> list[Call]:
    """One request as the core makes them: a reset or a lease alone, or 1-3 checks (or
    peeks) decided all or nothing, possibly on the same key twice."""
    op = data.draw(st.sampled_from([CHECK, CHECK, CHECK, PEEK, RESET, LEASE]), label="op")
    size = 1 if op in (RESET, LEASE) else data.draw(st.integers(1, 3), label="group size")
    calls = []
    for _ in range(size):
        template = data.draw(st.sampled_from(templates), label="key and policy")
        cost = data.draw(st.integers(1, template.rule.capacity), label="cost")
        calls.append(template._replace(op=op, cost=cost))
    return calls


def _comparable(reply: Reply, call: Call, refused: bool) -> tuple[object, ...]:
    """A reply's decision fields (and a lease's grant), and for a refused group what its
    state snapshot means: the pure algorithm's outcomes on it over the next window, as the
    deny cache would read it. (Snapshots may differ and mean the same: a sliding log's live
    entries or all of them, a key past its end or no key.)"""
    head = tuple(reply[:5])
    if not refused or call.op == RESET:
        return tuple(reply)
    rule, now, state = call.rule, reply[4], tuple(reply[5:])
    algorithm = FUNCTIONS[rule.algorithm]
    later = [now + step for step in (0, 1, rule.window // 3, rule.window - 1, rule.window)]
    return head + tuple(
        algorithm(state, at, cost, rule) for at in later for cost in {1, rule.capacity}
    )


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policies=st.lists(POLICY, min_size=1, max_size=2), data=st.data())
def test_one_script_call_decides_like_the_memory_store(
    redis_url: str, redis_client: redis.Redis, policies: list[Policy], data: st.DataObject
) -> None:
    redis_client.flushdb()
    now = [START_US]  # µs; both stores read the same instant
    templates = [
        Call(f"{key}{index}", CHECK, 1, rule_for(policy))
        for key in KEYS
        for index, policy in enumerate(policies)
    ]
    reference = _Reference()
    store = RedisStore(redis_url, timeout=5.0, clock=lambda: now[0])
    try:
        for batch in range(data.draw(st.integers(1, 6), label="batches")):
            now[0] += data.draw(st.sampled_from([0, 1, 500_000, 3_000_000, 31_000_000]))
            size = data.draw(st.integers(1, 8), label=f"batch {batch} size")
            requests = [_calls(templates, data) for _ in range(size)]
            expected = reference.run(requests, now[0])
            actual = store.run(requests)
            for request, want, got in zip(requests, expected, actual, strict=True):
                refused = any(reply[0] == 0 for reply in want)
                for call, want_reply, got_reply in zip(request, want, got, strict=True):
                    assert _comparable(got_reply, call, refused) == _comparable(
                        want_reply, call, refused
                    ), call
    finally:
        store.close()
