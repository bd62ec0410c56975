"""Keys on a real server (SPEC §4): odd identities, one key each, always with a TTL."""

from __future__ import annotations

import hashlib
import random
import re

import pytest
import redis

from ratewall import ALGORITHMS, Policy, RateLimiter
from ratewall.keys import KeyBuilder
from ratewall.testing import FakeClock

ODD_IDENTITIES = (
    "user_123",
    "é",
    "e\u0301",  # the same letter, decomposed: a different identity
    "\U0001f600",
    "a:b",
    "a b",
    "a/b",
    "{a}}{",
    "{",
    "}",
    "{user_123}",
    "line\nbreak",
    "tab\there",
    "nul\x00",
    "\udcff",  # a lone surrogate, as surrogateescape-decoded bytes give
    "",
    " ",
    "~",
    "x" * 64,  # the longest raw identity
    "x" * 65,  # one more: digest form
    "x" * 10_000,
    hashlib.blake2b("é".encode(), digest_size=32).hexdigest(),  # raw, equals é's digest
    "~" + hashlib.blake2b("é".encode(), digest_size=32).hexdigest(),  # é's encoded form
)
HASH_TAG = re.compile(rb"\{([^{}]*)\}")
MAX_KEY_BYTES = 150
# Store timeout: these tests are about keys, not latency; a loaded machine must not fail them.
TIMEOUT = 5.0


def _all_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


def _pttl(client: redis.Redis, key: bytes | str) -> int:
    return client.pttl(key)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_odd_identities_are_limited_independently(redis_url: str, algorithm: str) -> None:
    # Limit 1: if two identities shared a key, the second one's first request would fail.
    policies = {"login": Policy(1, 60, algorithm)}
    assert len(set(ODD_IDENTITIES)) == len(ODD_IDENTITIES)
    with RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        first = [limiter.check(identity, "login").allowed for identity in ODD_IDENTITIES]
        second = [limiter.check(identity, "login").allowed for identity in ODD_IDENTITIES]
        assert first == [True] * len(ODD_IDENTITIES)
        assert second == [False] * len(ODD_IDENTITIES)


def test_keys_are_the_key_builders_with_one_hash_tag(
    redis_url: str, redis_client: redis.Redis
) -> None:
    policies = {"login": Policy(3, 60), "api": Policy(10, 60, "gcra", burst=20)}
    builder = KeyBuilder()
    with RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        for identity in ODD_IDENTITIES:
            limiter.check(identity, "login")
            limiter.check(identity, "api", cost=2)
    expected = {
        builder.key(identity, policy).encode() for identity in ODD_IDENTITIES for policy in policies
    }
    keys = _all_keys(redis_client)
    assert keys == expected
    assert len(keys) == 2 * len(ODD_IDENTITIES)
    assert b"ratelimit:{user_123}:login" in keys  # the seed identity is written as is
    for key in keys:
        assert len(key) <= MAX_KEY_BYTES, key
        assert key.count(b"{") == 1, key
        assert key.count(b"}") == 1, key
        tags = HASH_TAG.findall(key)
        assert len(tags) == 1, key
        assert tags[0], key  # an empty tag would hash the whole key instead
    # One identity's keys share the tag, hence the Redis Cluster slot.
    for identity in ODD_IDENTITIES:
        shared = {HASH_TAG.findall(builder.key(identity, p).encode())[0] for p in policies}
        assert len(shared) == 1


def test_raw_and_digest_identities_stay_apart(redis_url: str, redis_client: redis.Redis) -> None:
    # "é" is stored under "~<digest>": neither the raw identity "<digest>" nor the identity
    # "~<digest>" (itself digested, "~" being outside the raw alphabet) may share its key.
    digest = hashlib.blake2b("é".encode(), digest_size=32).hexdigest()
    with RateLimiter(
        {"login": Policy(1, 60)}, store=redis_url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        for identity in ("é", digest, "~" + digest):
            assert limiter.check(identity, "login").allowed, identity
    keys = _all_keys(redis_client)
    assert f"ratelimit:{{{digest}}}:login".encode() in keys
    assert f"ratelimit:{{~{digest}}}:login".encode() in keys
    assert len(keys) == 3


@pytest.mark.parametrize("prefix", ["myapp", "rl:v2", "a.b@c/d-e_f", "p" * 64])
def test_key_prefix_is_honoured(redis_url: str, redis_client: redis.Redis, prefix: str) -> None:
    policies = {"login": Policy(2, 60)}
    with RateLimiter(
        policies, store=redis_url, timeout=TIMEOUT, key_prefix=prefix, clock=FakeClock()
    ) as limiter:
        for identity in ("user_123", "é", "x" * 10_000):
            limiter.check(identity, "login")
        limiter.check("user_123", "login")
        assert not limiter.check("user_123", "login").allowed
    keys = _all_keys(redis_client)
    builder = KeyBuilder(prefix)
    assert keys == {builder.key(i, "login").encode() for i in ("user_123", "é", "x" * 10_000)}
    assert f"{prefix}:{{user_123}}:login".encode() in keys
    assert all(key.startswith(f"{prefix}:{{".encode()) for key in keys)
    assert all(len(key) <= len(prefix) + MAX_KEY_BYTES for key in keys)


def test_two_prefixes_on_one_server_do_not_share_counts(redis_url: str) -> None:
    policies = {"login": Policy(1, 60)}
    with (
        RateLimiter(
            policies, store=redis_url, timeout=TIMEOUT, key_prefix="one", clock=FakeClock()
        ) as one,
        RateLimiter(
            policies, store=redis_url, timeout=TIMEOUT, key_prefix="two", clock=FakeClock()
        ) as two,
    ):
        assert one.check("user_123", "login").allowed
        assert two.check("user_123", "login").allowed
        assert not one.check("user_123", "login").allowed


WORKLOAD_POLICIES = {
    "fixed": Policy(5, 10, "fixed_window"),
    "fixed_long": Policy(3, "1d", "fixed_window"),
    "sliding": Policy(7, 15, "sliding_window"),
    "log": Policy(6, 20, "sliding_log"),
    "bucket": Policy(4, 10, "token_bucket"),
    "bucket_burst": Policy(2, 10, "token_bucket", burst=9),
    "bucket_small": Policy(8, 30, "token_bucket", burst=3),
    "gcra": Policy(5, 12, "gcra"),
    "gcra_burst": Policy(3, 10.5, "gcra", burst=11),
}


def _ttl_horizon_ms(policy: Policy) -> int:
    """The longest a state may matter: its reset horizon, in whole ms (the TTL unit)."""
    window_us = policy.window_us
    if policy.algorithm == "sliding_window":
        # The current window's count keeps weighing through the next window.
        horizon_us = 2 * window_us
    elif policy.algorithm in ("token_bucket", "gcra"):
        # Empty to full at limit/window per second.
        horizon_us = -(-policy.capacity * window_us // policy.limit)
    else:
        horizon_us = window_us
    return -(-horizon_us // 1000)


@pytest.mark.parametrize("seed", range(4))
def test_every_key_has_a_ttl_within_its_policys_horizon(
    redis_url: str, redis_client: redis.Redis, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    identities = ["user_123", "é", "{a}}{", "", "x" * 10_000, "bob"]
    names = sorted(WORKLOAD_POLICIES)
    decisions = 0
    with RateLimiter(WORKLOAD_POLICIES, store=redis_url, timeout=TIMEOUT, clock=clock) as limiter:
        for _ in range(600):
            clock.advance(rng.choice([0, 0, 0.001, 0.25, 1, 3, 7, 30]))
            identity, name = rng.choice(identities), rng.choice(names)
            cost = rng.randint(1, WORKLOAD_POLICIES[name].capacity)
            roll = rng.random()
            if roll < 0.05:
                limiter.reset(identity, name)
            elif roll < 0.2:
                limiter.peek(identity, name, cost)
            else:
                decisions += limiter.check(identity, name, cost).allowed
    assert decisions > 100  # the workload wrote plenty of keys
    keys = _all_keys(redis_client)
    assert len(keys) >= len(names)
    for key in keys:
        name = key.rsplit(b":", 1)[1].decode()
        pttl = _pttl(redis_client, key)
        assert pttl != -1, f"{key!r} has no TTL"
        assert pttl <= _ttl_horizon_ms(WORKLOAD_POLICIES[name]), (key, pttl)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_first_write_ttl_is_the_full_horizon(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    # The bound above must be tight, not vacuous: a full-cost first request needs the whole
    # horizon to be forgotten, and its key lives exactly that long (less the real ms spent).
    burst = 12 if algorithm in ("token_bucket", "gcra") else None
    policy = Policy(4, 30, algorithm, burst)
    with RateLimiter({"p": policy}, store=redis_url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        limiter.check("user_123", "p", cost=policy.capacity)
    horizon = _ttl_horizon_ms(policy)
    pttl = _pttl(redis_client, "ratelimit:{user_123}:p")
    assert horizon - 1000 < pttl <= horizon


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reset_deletes_the_key(redis_url: str, redis_client: redis.Redis, algorithm: str) -> None:
    policies = {"login": Policy(2, 60, algorithm)}
    with RateLimiter(policies, store=redis_url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        for identity in ("user_123", "x" * 10_000, "{a}}{"):
            key = KeyBuilder().key(identity, "login")
            limiter.check(identity, "login", cost=2)
            assert redis_client.exists(key) == 1
            assert not limiter.check(identity, "login").allowed  # now known to the deny cache
            limiter.reset(identity, "login")
            assert redis_client.exists(key) == 0
            assert limiter.check(identity, "login", cost=2).allowed
        assert redis_client.dbsize() == 3


def test_changing_a_policys_algorithm_starts_afresh(redis_url: str) -> None:
    """A value written by another algorithm is not misread: it counts as no state."""
    clock = FakeClock()
    with RateLimiter(
        {"p": Policy(2, 60)}, store=redis_url, clock=clock, timeout=TIMEOUT
    ) as limiter:
        assert limiter.check("u", "p").allowed
        assert limiter.check("u", "p").allowed
        assert not limiter.check("u", "p").allowed
    for algorithm in ("sliding_log", "token_bucket", "gcra", "sliding_window"):
        with RateLimiter(
            {"p": Policy(2, 60, algorithm)}, store=redis_url, clock=clock, timeout=TIMEOUT
        ) as other:
            assert other.check("u", "p").remaining == 1, algorithm


@pytest.mark.parametrize("algorithm", ["fixed_window", "gcra"])
def test_a_key_costs_at_most_100_bytes_of_server_memory(
    redis_url: str, redis_client: redis.Redis, algorithm: str
) -> None:
    """Issue 4's budget: ≤ 100 bytes per key (``MEMORY USAGE``: key, value, TTL, overhead)
    for a typical key, with the state of a busy identity (a count in the hundred thousands).
    (A token bucket's level counts fractions of tokens and needs a few bytes more: gcra is
    the same bucket in one small number.)"""
    policy = Policy(1_000_000, 3600, algorithm)
    with RateLimiter({"login": policy}, store=redis_url, timeout=TIMEOUT) as limiter:
        for _ in range(3):
            assert limiter.check("user_123", "login", cost=77_777).allowed
    usage = redis_client.memory_usage("ratelimit:{user_123}:login", samples=0)
    assert usage is not None
    assert usage <= 100, f"{algorithm}: {usage} bytes"
