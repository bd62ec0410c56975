"""One script call deciding many requests gives what the memory store gives, reply by reply.

Batching (async callers sharing a round trip, ``check_many`` groups) sends many requests in
one script call: the same key decided several times, groups refused after some members were
admitted (their changes undone), resets between checks. Hypothesis draws such batches over a
small pool of keys and policies of every algorithm, runs each batch through the Redis store
(one script call) and the memory store at the same instant, and compares every reply: the
decision fields, and for refused groups the state snapshot the deny cache would keep.
"""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratewall import ALGORITHMS, Policy
from ratewall.algorithms import FUNCTIONS, rule_for
from ratewall.core import CHECK, PEEK, RESET, Call, Reply
from ratewall.stores.memory import MemoryStore
from ratewall.stores.redis import RedisStore

pytestmark = pytest.mark.slow

START_US = 1_700_000_000_000_000
KEYS = ("ratelimit:{a}:p", "ratelimit:{b}:p")
# Windows of seconds: Redis expires keys in real time while the injected clock stands still,
# and a key must not vanish in real time while it is alive on the fake clock.
POLICY = st.builds(
    Policy,
    limit=st.integers(1, 6),
    window=st.integers(5, 30),
    algorithm=st.sampled_from(ALGORITHMS),
)


def _calls(templates: list[Call], data: st.DataObject) -> list[Call]:
    """One request as the core makes them: a reset alone, or 1-3 checks (or peeks) decided
    all or nothing, possibly on the same key twice."""
    op = data.draw(st.sampled_from([CHECK, CHECK, CHECK, PEEK, RESET]), label="op")
    size = 1 if op == RESET else data.draw(st.integers(1, 3), label="group size")
    calls = []
    for _ in range(size):
        template = data.draw(st.sampled_from(templates), label="key and policy")
        cost = data.draw(st.integers(1, template.rule.capacity), label="cost")
        calls.append(template._replace(op=op, cost=cost))
    return calls


def _comparable(reply: Reply, call: Call, refused: bool) -> tuple[object, ...]:
    """A reply's decision fields, and for a refused group what its state snapshot means: the
    pure algorithm's outcomes on it over the next window, as the deny cache would read it.
    (The stores may send different but equivalent snapshots: a sliding log's live entries
    or all of them, a key past its end or no key.)"""
    head = tuple(reply[:5])
    if not refused or call.op == RESET:
        return head
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
    memory = MemoryStore(lambda: now[0])
    store = RedisStore(redis_url, timeout=5.0, clock=lambda: now[0])
    try:
        for batch in range(data.draw(st.integers(1, 6), label="batches")):
            now[0] += data.draw(st.sampled_from([0, 1, 500_000, 3_000_000, 31_000_000]))
            size = data.draw(st.integers(1, 8), label=f"batch {batch} size")
            requests = [_calls(templates, data) for _ in range(size)]
            expected = memory.run(requests)
            actual = store.run(requests)
            for request, want, got in zip(requests, expected, actual, strict=True):
                refused = any(reply[0] == 0 for reply in want)
                for call, want_reply, got_reply in zip(request, want, got, strict=True):
                    assert _comparable(got_reply, call, refused) == _comparable(
                        want_reply, call, refused
                    ), call
    finally:
        store.close()
