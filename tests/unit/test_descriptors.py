"""Descriptor matching, both config forms: envoyproxy/ratelimit's rules, without I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ratewall import ConfigError, Policy
from ratewall.config import parse_config
from ratewall.descriptors import (
    DomainTable,
    identity_of,
    load_envoy_config,
    merge_tables,
    parse_envoy_config,
)

ENVOY_DIR = Path(__file__).parent.parent / "configs" / "envoy"


@pytest.fixture(scope="module")
def edge() -> DomainTable:
    return load_envoy_config([str(ENVOY_DIR / "readme_example.yaml")])


def rule_path(table: DomainTable, *entries: tuple[str, str], domain: str = "edge") -> str | None:
    found = table.match(domain, list(entries))
    return None if found is None else found.rule.path


def test_exact_value_then_default_at_the_leaf(edge: DomainTable) -> None:
    exact = edge.match("edge", [("source_cluster", "proxy"), ("destination_cluster", "mongo")])
    assert exact is not None
    assert exact.rule.name == "mongo_limit"
    assert (exact.rule.limit, exact.rule.window) == (500, 1)
    assert exact.identity == "proxy/mongo"
    default = edge.match("edge", [("source_cluster", "proxy"), ("destination_cluster", "pg")])
    assert default is not None
    assert default.rule.path == "edge.source_cluster_proxy.destination_cluster"
    assert (default.rule.limit, default.rule.window) == (100, 60)
    assert default.identity == "proxy/pg"


def test_a_limit_applies_only_at_the_depth_of_the_descriptor(edge: DomainTable) -> None:
    # Shorter: source_cluster_proxy has no rule of its own.
    assert rule_path(edge, ("source_cluster", "proxy")) is None
    # Longer than the tree: nothing, not the rule of a prefix.
    assert rule_path(edge, ("remote_address", "1.2.3.4"), ("extra", "x")) is None
    # The parent's rule does not apply to a child that matched nothing.
    assert rule_path(edge, ("foo", "x"), ("unknown", "y")) is None
    assert rule_path(edge, ("foo", "x")) == "edge.foo"
    assert rule_path(edge, ("foo", "x"), ("bar", "banned")) == "edge.foo.bar_banned"
    assert rule_path(edge, ("foo", "x"), ("bar", "other")) is None


def test_unknown_domain_and_empty_descriptor_match_nothing(edge: DomainTable) -> None:
    assert edge.match("nope", [("user", "a")]) is None
    assert edge.match("edge", []) is None


def test_unlimited_blocked_shadow_and_allowlist(edge: DomainTable) -> None:
    unlimited = edge.match("edge", [("remote_address", "10.0.0.1")])
    assert unlimited is not None
    assert unlimited.rule.unlimited
    assert unlimited.rule.policy is None
    limited = edge.match("edge", [("remote_address", "10.0.0.2")])
    assert limited is not None
    assert limited.rule.limit == 10
    banned = edge.match("edge", [("foo", "x"), ("bar", "banned")])
    assert banned is not None
    assert banned.rule.blocked
    assert banned.rule.policy is None
    shady = edge.match("edge", [("foo", "x"), ("baz", "shady")])
    assert shady is not None
    assert shady.rule.shadow
    assert shady.rule.window == 3600
    assert rule_path(edge, ("allowlisted", "ok")) is None


def test_wildcards_and_share_threshold(edge: DomainTable) -> None:
    first = edge.match("edge", [("path", "/api/users")])
    second = edge.match("edge", [("path", "/api/orders")])
    assert first is not None
    assert second is not None
    assert first.rule is second.rule
    assert first.rule.limit == 7
    assert first.identity == second.identity == "/api/*"  # one shared counter
    assert edge.match("edge", [("path", "/web")]) is None


def test_replaces_drops_the_replaced_rule(edge: DomainTable) -> None:
    resolved = edge.resolve("edge", [[("user", "alice")], [("category", "account")]])
    assert resolved[0] is None
    assert resolved[1] is not None
    assert resolved[1].rule.limit == 4
    alone = edge.resolve("edge", [[("user", "alice")]])
    assert alone[0] is not None
    assert alone[0].rule.name == "per_user"


def test_envoy_rules_become_fixed_window_policies(edge: DomainTable) -> None:
    policy = edge.policies["envoy.edge.remote_address"]
    assert policy == Policy(10, 1)
    assert all(name.startswith("envoy.") for name in edge.policies)
    # A path that does not fit a policy name becomes a digest, the same every time.
    shared = edge.match("edge", [("path", "/api/x")])
    assert shared is not None
    assert shared.rule.policy is not None
    assert shared.rule.policy.startswith("envoy.")
    assert "/" not in shared.rule.policy
    again = load_envoy_config([str(ENVOY_DIR / "readme_example.yaml")], failure_mode="open")
    assert set(again.policies) == set(edge.policies)
    assert {p.failure_mode for p in again.policies.values()} == {"open"}


def envoy_error(document: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_envoy_config(yaml.safe_load(document), source="rl.yaml")
    assert caught.value.source == "rl.yaml"
    return caught.value


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        ("descriptors: []", "domain", "empty domain"),
        ("domain: d\ndescriptors: [{value: v}]", "descriptors[0].key", "empty key"),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {unit: fortnight}}]",
            "descriptors[0].rate_limit.unit",
            "invalid rate limit unit",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {unlimited: true, unit: second}}]",
            "descriptors[0].rate_limit.unit",
            "unlimited",
        ),
        (
            "domain: d\ndescriptors: [{key: k}, {key: k}]",
            "descriptors[1]",
            "duplicate descriptor composite key 'd.k'",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limt: {unit: second}}]",
            "descriptors[0].rate_limt",
            "unknown key",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: -1}}]",
            "descriptors[0].rate_limit.requests_per_unit",
            "whole number",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {name: a, unit: second, "
            "replaces: [{name: a}]}}]",
            "descriptors[0].rate_limit.replaces[0]",
            "same descriptor",
        ),
        (
            "domain: d\ndescriptors: [{key: k, value: v, share_threshold: true}]",
            "descriptors[0].share_threshold",
            "wildcard",
        ),
        (
            "domain: d\ndescriptors: [{key: k, shadow_mode: yes please}]",
            "descriptors[0].shadow_mode",
            "true or false",
        ),
    ],
)
def test_envoy_config_errors_name_the_field(document: str, field: str, reason: str) -> None:
    error = envoy_error(document)
    assert error.field == field
    assert reason in error.reason


def test_duplicate_domains_across_files_are_an_error() -> None:
    one = parse_envoy_config({"domain": "d", "descriptors": []}, source="a.yaml")
    two = parse_envoy_config({"domain": "d", "descriptors": []}, source="b.yaml")
    with pytest.raises(ConfigError, match="duplicate domain 'd'"):
        merge_tables([one, two])


RATEWALL_FORM = """
policies:
  per_user: {limit: 5, window: 60}
  global: {limit: 100, window: 1s, algorithm: token_bucket}
domains:
  rl:
    - key: user
      policy: per_user
    - key: generic_key
      value: global
      policy: global
      replaces: [per_user_dest]
    - key: source_cluster
      value: proxy
      descriptors:
        - key: destination_cluster
          policy: per_user
          name: per_user_dest
          shadow_mode: true
        - key: destination_cluster
          value: free
          unlimited: true
"""


def test_the_domains_section_maps_descriptors_to_policies() -> None:
    config = parse_config(yaml.safe_load(RATEWALL_FORM), source="limits.yaml")
    table = config.domains
    assert table is not None
    user = table.match("rl", [("user", "alice")])
    assert user is not None
    assert (user.rule.policy, user.identity, user.rule.limit) == ("per_user", "alice", 5)
    nested = table.match("rl", [("source_cluster", "proxy"), ("destination_cluster", "db")])
    assert nested is not None
    assert nested.rule.shadow
    assert nested.rule.name == "per_user_dest"
    free = table.match("rl", [("source_cluster", "proxy"), ("destination_cluster", "free")])
    assert free is not None
    assert free.rule.unlimited
    both = table.resolve(
        "rl",
        [[("source_cluster", "proxy"), ("destination_cluster", "db")], [("generic_key", "global")]],
    )
    assert both[0] is None
    assert both[1] is not None


@pytest.mark.parametrize(
    ("domains", "field", "reason"),
    [
        ({"rl": [{"key": "user", "policy": "nope"}]}, "domains.rl[0].policy", "unknown policy"),
        ({"rl": [{"policy": "p"}]}, "domains.rl[0].key", "required"),
        ({"rl": [{"key": "u", "polcy": "p"}]}, "domains.rl[0].polcy", "unknown field"),
        ({"rl": {"key": "u"}}, "domains.rl", "list"),
        ([], "domains", "mapping"),
        ({"rl": [{"key": "u", "policy": "p", "unlimited": True}]}, "domains.rl[0].unlimited", ""),
        ({"rl": [{"key": "u", "shadow_mode": True}]}, "domains.rl[0].shadow_mode", "policy"),
        ({"rl": [{"key": "u", "value": 5, "policy": "p"}]}, "domains.rl[0].value", "quote"),
        (
            {"rl": [{"key": "u", "descriptors": [{"key": "v", "policy": "x"}]}]},
            "domains.rl[0].descriptors[0].policy",
            "unknown policy",
        ),
        ({"rl": [{"key": "u"}, {"key": "u"}]}, "domains.rl[1]", "duplicate"),
    ],
)
def test_domains_section_errors_name_file_and_field(
    domains: object, field: str, reason: str
) -> None:
    data = {"policies": {"p": {"limit": 1, "window": 1}}, "domains": domains}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="limits.json")
    assert (caught.value.source, caught.value.field) == ("limits.json", field)
    assert reason in caught.value.reason


def test_identity_of_one_value_is_the_value_and_lists_never_collide() -> None:
    assert identity_of(["alice"]) == "alice"
    assert identity_of(["a/b", "c"]) != identity_of(["a", "b/c"])
    assert identity_of(["a/b", "c"]) == "a%2Fb/c"
