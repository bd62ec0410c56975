"""Shadow mode, exemptions, overrides, tiers and live reload on the memory store (the same
rules run on Redis in tests/redis/test_operations_redis.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ratewall import AsyncRateLimiter, ConfigError, Policy, RateLimiter
from ratewall.config import load_config
from ratewall.testing import DecisionCapture, FailingStore, FakeClock


def test_a_shadow_policy_counts_as_if_enforced_but_never_refuses() -> None:
    limiter = RateLimiter({"login": Policy(2, 60, shadow=True)})
    decisions = [limiter.check("u", "login") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True] * 4
    assert [d.shadowed for d in decisions] == [False, False, True, True]
    # A refusal in shadow mode consumed nothing, as an enforced one would not have.
    assert [d.remaining for d in decisions] == [1, 0, 0, 0]
    assert decisions[2].retry_after is None
    assert limiter.peek("u", "login").shadowed


def test_shadowed_is_false_for_every_other_decision() -> None:
    limiter = RateLimiter({"login": Policy(1, 60)})
    assert [limiter.check("u", "login").shadowed for _ in range(2)] == [False, False]


def test_the_global_shadow_switch_and_a_policy_that_opts_out(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(
        json.dumps(
            {
                "shadow": True,
                "policies": {
                    "new": {"limit": 1, "window": 60},
                    "old": {"limit": 1, "window": 60, "shadow": False},
                },
            }
        )
    )
    limiter = RateLimiter.from_config(path)
    assert [limiter.check("u", "new").allowed for _ in range(2)] == [True, True]
    assert [limiter.check("u", "old").allowed for _ in range(2)] == [True, False]


def test_a_shadow_policy_never_blocks_the_others_in_check_many() -> None:
    policies = {"enforced": Policy(5, 60), "watch": Policy(1, 60, shadow=True)}
    limiter = RateLimiter(policies)
    for _ in range(3):
        decisions = limiter.check_many([("u", "enforced"), ("u", "watch")])
        assert all(d.allowed for d in decisions)
    # All three were counted: a peek of one more leaves 5 - 3 - 1.
    assert limiter.peek("u", "enforced").remaining == 1


def test_a_shadow_policy_failing_closed_still_passes_while_the_store_fails() -> None:
    # The failure mode's refusal is a refusal too: shadow mode lets it pass, marked, so a
    # limit under watch cannot refuse traffic even when Redis is down.
    policies = {
        "watch": Policy(1, 60, shadow=True, failure_mode="closed"),
        "enforced": Policy(1, 60, failure_mode="closed"),
    }
    with RateLimiter(policies, store=FailingStore()) as limiter:
        watched = limiter.check("u", "watch")
        assert (watched.allowed, watched.shadowed, watched.degraded) == (True, True, True)
        assert watched.retry_after is None
        assert watched.source == "failure"
        assert limiter.peek("u", "watch").allowed
        enforced = limiter.check("u", "enforced")
        assert (enforced.allowed, enforced.shadowed, enforced.degraded) == (False, False, True)
        assert [d.allowed for d in limiter.check_many([("u", "watch"), ("u", "enforced")])] == [
            True,
            False,
        ]


def test_exempt_identities_are_always_allowed_and_store_nothing() -> None:
    capture = DecisionCapture()
    limiter = RateLimiter({"api": Policy(1, 60, exempt=["healthcheck"])}, observer=capture)
    decisions = [limiter.check("healthcheck", "api") for _ in range(5)]
    assert all(d.allowed and d.source == "exempt" and d.remaining == 1 for d in decisions)
    assert limiter.check("someone", "api").allowed
    assert not limiter.check("someone", "api").allowed
    assert limiter.check_many([("healthcheck", "api")])[0].source == "exempt"
    assert len(capture.where(lambda d: d.source == "exempt")) == 6


def test_an_override_gives_one_identity_its_own_limit() -> None:
    limiter = RateLimiter({"api": Policy(2, 60, overrides={"partner_1": {"limit": 20}})})
    partner = [limiter.check("partner_1", "api") for _ in range(21)]
    assert sum(d.allowed for d in partner) == 20
    assert partner[0].limit == 20
    assert [limiter.check("u", "api").allowed for _ in range(3)] == [True, True, False]


def test_tiers_are_chosen_per_call_and_an_override_wins() -> None:
    policy = Policy(1, 60, tiers={"pro": {"limit": 3}}, overrides={"vip": {"limit": 5}})
    limiter = RateLimiter({"api": policy})
    assert [limiter.check("a", "api", tier="pro").allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert limiter.peek("a", "api", tier="pro").limit == 3
    assert limiter.check("vip", "api", tier="pro").limit == 5
    with pytest.raises(KeyError, match=r"unknown tier 'gold'.*its tiers: pro"):
        limiter.check("a", "api", tier="gold")
    with pytest.raises(KeyError, match="unknown tier"):
        limiter.peek("a", "api", tier="gold")


async def test_the_async_facade_takes_tiers_too() -> None:
    async with AsyncRateLimiter({"api": Policy(1, 60, tiers={"pro": {"limit": 2}})}) as limiter:
        assert (await limiter.check("a", "api", tier="pro")).limit == 2
        with pytest.raises(KeyError):
            await limiter.peek("a", "api", tier="gold")


@pytest.mark.parametrize(
    ("policy", "field", "reason"),
    [
        ({"shadow": "yes"}, "policies.api.shadow", "true or false"),
        ({"exempt": "healthcheck"}, "policies.api.exempt", "list of identities"),
        ({"exempt": [1]}, "policies.api.exempt[0]", "identity"),
        ({"overrides": {"p": {"limit": 0}}}, "policies.api.overrides.p.limit", "positive"),
        (
            {"overrides": {"p": {"algorithm": "gcra"}}},
            "policies.api.overrides.p.algorithm",
            "unknown field",
        ),
        ({"tiers": {"": {"limit": 2}}}, "policies.api.tiers", "non-empty"),
        ({"tiers": []}, "policies.api.tiers", "mapping"),
        ({"tiers": {"pro": {}}}, "policies.api.tiers.pro", "at least one"),
    ],
)
def test_bad_operations_fields_name_file_field_and_reason(
    tmp_path: Path, policy: dict[str, object], field: str, reason: str
) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"api": {"limit": 5, "window": 60, **policy}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_reload_swaps_policies_and_keeps_the_state_of_unchanged_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    capture = DecisionCapture()
    limiter = RateLimiter(
        {"login": Policy(3, 60), "api": Policy(10, 60)}, clock=clock, observer=capture
    )
    for _ in range(2):
        limiter.check("u", "login")
        limiter.check("u", "api")
    path = tmp_path / "limits.yaml"
    path.write_text(
        "login: {limit: 3, window: 60}\n"
        "api: {limit: 4, window: 60}\n"
        "search: {limit: 1, window: 60}\n"
    )
    limiter.reload(path)
    assert sorted(limiter.policies) == ["api", "login", "search"]
    assert limiter.check("u", "login").remaining == 0  # unchanged: its count stayed
    assert limiter.check("u", "api").remaining == 1  # new limit, same count (2 + 1 of 4)
    assert limiter.check("u", "search").allowed
    assert capture.reloads == [None]


def test_a_changed_algorithm_starts_from_empty_state() -> None:
    limiter = RateLimiter({"login": Policy(2, 60)})
    limiter.check("u", "login")
    limiter.check("u", "login")
    limiter.reload({"login": {"limit": 2, "window": 60, "algorithm": "sliding_log"}})
    assert limiter.check("u", "login").remaining == 1


def test_a_bad_reload_raises_and_changes_nothing(tmp_path: Path) -> None:
    capture = DecisionCapture()
    limiter = RateLimiter({"login": Policy(1, 60)}, observer=capture)
    assert limiter.check("u", "login").allowed
    bad = tmp_path / "limits.json"
    bad.write_text('{"login": {"limit": -1, "window": 60}}')
    with pytest.raises(ConfigError, match=r"policies\.login\.limit"):
        limiter.reload(bad)
    with pytest.raises(ConfigError):
        limiter.reload({"login": {"limit": 1}})
    assert limiter.policies["login"] == Policy(1, 60)
    assert not limiter.check("u", "login").allowed  # the old state and policy in force
    assert [type(error).__name__ for error in capture.reloads] == ["ConfigError"] * 2


async def test_async_reload_is_awaitable() -> None:
    async with AsyncRateLimiter({"login": Policy(1, 60)}) as limiter:
        await limiter.reload({"login": {"limit": 2, "window": 60}})
        assert (await limiter.check("u", "login")).limit == 2
