"""The failure mode "local" in config and on Policy: the name, ``local_nodes`` and the share
each process enforces (the behaviour during an outage is proven on real servers in
tests/redis/test_local_mode.py)."""

from __future__ import annotations

import pytest

from ratewall import ConfigError, Policy
from ratewall.config import parse_config
from ratewall.policy import FAILURE_MODES, local_share


def test_local_is_a_failure_mode() -> None:
    assert "local" in FAILURE_MODES
    assert Policy(5, 60, failure_mode="local").local_nodes == 1


@pytest.mark.parametrize(
    ("limit", "burst", "nodes", "share", "share_burst"),
    [(10, None, 1, 10, None), (10, None, 3, 4, None), (2, None, 8, 1, None), (10, 30, 4, 3, 8)],
)
def test_the_share_is_the_limit_divided_by_local_nodes_rounded_up(
    limit: int, burst: int | None, nodes: int, share: int, share_burst: int | None
) -> None:
    algorithm = "token_bucket" if burst else "fixed_window"
    policy = Policy(limit, 60, algorithm, burst, failure_mode="local", local_nodes=nodes)
    mine = local_share(policy)
    assert (mine.limit, mine.burst, mine.window, mine.algorithm) == (
        share,
        share_burst,
        60.0,
        algorithm,
    )


def test_config_sets_local_for_every_policy_and_local_nodes_per_policy() -> None:
    config = parse_config(
        {
            "failure_mode": "local",
            "policies": {
                "login": {"limit": 10, "window": "1m", "local_nodes": 4},
                "api": {"limit": 100, "window": "1s", "failure_mode": "open"},
            },
        },
        source="limits.json",
    )
    login = config.policies["login"]
    assert (login.failure_mode, login.local_nodes) == ("local", 4)
    assert config.policies["api"].failure_mode == "open"
    assert "fails local (1/4 per process)" in login.describe()


@pytest.mark.parametrize("nodes", [0, -1, True, "4", 2.5, None])
def test_a_bad_local_nodes_names_the_file_and_field(nodes: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"login": {"limit": 10, "window": 60, "failure_mode": "local", "local_nodes": nodes}},
            source="limits.json",
        )
    assert "limits.json" in str(caught.value)
    assert "policies.login.local_nodes" in str(caught.value)


def test_an_unknown_failure_mode_lists_local() -> None:
    with pytest.raises(ConfigError, match="expected one of raise, open, closed, local"):
        parse_config(
            {"failure_mode": "sometimes", "policies": {"a": {"limit": 1, "window": 1}}},
            source="x.json",
        )
