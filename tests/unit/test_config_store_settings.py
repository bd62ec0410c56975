"""The ``breaker`` and ``batching`` sections: parsed, defaulted, checked with clear errors."""

from __future__ import annotations

import pytest

from ratewall import AsyncRateLimiter, RateLimiter
from ratewall.cli import describe_config
from ratewall.config import (
    NO_BATCHING_SETTINGS,
    NO_BREAKER_SETTINGS,
    Batching,
    Breaker,
    parse_config,
)
from ratewall.errors import ConfigError

POLICIES = {"login": {"limit": 5, "window": 60}}


def test_the_sections_default_to_the_limiters_defaults() -> None:
    config = parse_config({"policies": POLICIES}, source="x")
    assert config.breaker == NO_BREAKER_SETTINGS == Breaker(threshold=3, cooldown=1.0)
    assert config.batching == NO_BATCHING_SETTINGS == Batching(max_in_flight=2, max_batch=512)
    assert not any(line.startswith(("breaker", "batching")) for line in describe_config(config))


def test_the_sections_are_read() -> None:
    data = {
        "policies": POLICIES,
        "breaker": {"threshold": 5, "cooldown": "250ms"},
        "batching": {"max_in_flight": 4, "max_batch": 64},
    }
    config = parse_config(data, source="x")
    assert config.breaker == Breaker(threshold=5, cooldown=0.25)
    assert config.batching == Batching(max_in_flight=4, max_batch=64)
    assert "breaker = opens after 5 consecutive failures, fails fast for 250ms" in (
        describe_config(config)
    )
    assert (
        "batching = 4 script calls in flight, at most 64 decisions each (asyncio limiters)"
        in describe_config(config)
    )
    partial = parse_config({"policies": POLICIES, "breaker": {"cooldown": 2}}, source="x")
    assert partial.breaker == Breaker(threshold=3, cooldown=2.0)


@pytest.mark.parametrize(
    ("section", "field", "reason"),
    [
        ({"breaker": 3}, "breaker", "must be a mapping such as {threshold: 3, cooldown: 1s}"),
        ({"breaker": {"threshold": 0}}, "breaker.threshold", "must be an integer from 1 to"),
        ({"breaker": {"threshold": True}}, "breaker.threshold", "got True"),
        ({"breaker": {"threshold": 2.5}}, "breaker.threshold", "got 2.5"),
        ({"breaker": {"cooldown": 0}}, "breaker.cooldown", "must be a positive number"),
        ({"breaker": {"cooldown": "soon"}}, "breaker.cooldown", "'soon' is not a duration"),
        ({"breaker": {"cooldown": "2h"}}, "breaker.cooldown", "at most 3600 seconds"),
        ({"breaker": {"treshold": 2}}, "breaker.treshold", "(did you mean 'threshold'?)"),
        ({"batching": []}, "batching", "must be a mapping such as {max_in_flight: 2"),
        ({"batching": {"max_in_flight": 0}}, "batching.max_in_flight", "from 1 to 64"),
        ({"batching": {"max_batch": 10_000}}, "batching.max_batch", "from 1 to 8192"),
        ({"batching": {"max_bach": 8}}, "batching.max_bach", "(did you mean 'max_batch'?)"),
    ],
)
def test_bad_values_are_named(section: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"policies": POLICIES, **section}, source="limits.yaml")
    assert (caught.value.source, caught.value.field) == ("limits.yaml", field)
    assert reason in caught.value.reason


def test_every_bad_value_of_a_section_is_reported() -> None:
    data = {"policies": POLICIES, "breaker": {"threshold": 0, "cooldown": -1}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="x")
    assert [each.field for each in caught.value.errors] == ["breaker.cooldown", "breaker.threshold"]


def test_from_config_gives_the_limiters_the_breaker_settings() -> None:
    config = parse_config(
        {"policies": POLICIES, "breaker": {"threshold": 7, "cooldown": 3}}, source="x"
    )
    for limiter in (RateLimiter.from_config(config), AsyncRateLimiter.from_config(config)):
        breaker = limiter._core._breaker
        assert (breaker.threshold, breaker.cooldown) == (7, 3_000_000)  # microseconds


def test_batching_on_the_memory_store_changes_nothing() -> None:
    config = parse_config(
        {"policies": POLICIES, "batching": {"max_batch": 4}, "store": "memory://"}, source="x"
    )
    assert AsyncRateLimiter.from_config(config).local_store is not None


def test_the_store_comes_from_the_argument_then_the_file_never_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ratewall reads no environment variable (the examples read RATEWALL_STORE themselves
    and pass it as ``store``): argument, else the file's ``store``, else memory://."""
    monkeypatch.setenv("RATEWALL_STORE", "redis://127.0.0.1:1/0")
    without = parse_config({"policies": POLICIES}, source="x")
    limiter = RateLimiter.from_config(without)
    assert (limiter.store_url, limiter.local_store is not None) == ("memory://", True)
    named = parse_config({"policies": POLICIES, "store": "memory://"}, source="x")
    assert RateLimiter.from_config(named).store_url == "memory://"
    passed = RateLimiter.from_config(without, "memory://?from=argument")
    assert passed.store_url == "memory://?from=argument"
