"""Config files: the corpus of good and bad files, both forms, and fuzzing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratewall import AsyncRateLimiter, RateLimiter
from ratewall.cli import main
from ratewall.config import (
    DEFAULT_LOCAL_CACHE_SIZE,
    DEFAULT_TIMEOUT,
    SETTINGS,
    STORE_SCHEMES,
    Config,
    load_config,
    parse_config,
)
from ratewall.errors import ConfigError
from ratewall.http.routes import routes_from_config
from ratewall.keys import DEFAULT_PREFIX
from ratewall.policy import ALGORITHMS, FAILURE_MODES, Policy

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GOOD = CONFIGS / "good"
BAD = CONFIGS / "bad"
SEED = {"login": Policy(limit=5, window=60)}

# file in tests/configs/bad -> (field path or None for a whole-file error, part of the reason)
BAD_FILES: dict[str, tuple[str | None, str]] = {
    "unknown_setting.json": ("stroe", "unknown setting 'stroe'; expected one of"),
    "route_unknown_policy.yaml": ("routes[0].policies[0]", "unknown policy 'logon'"),
    "route_bad_identity.json": ("routes[0].identity", "unknown identity source 'cookie:session'"),
    "route_not_a_list.toml": ("routes", "must be a list of routes"),
    "client_ip_unknown_field.yaml": ("client_ip.trusted", "unknown field 'trusted'"),
    "client_ip_bad_cidr.json": ("client_ip.trusted_proxies[0]", "10.0.0.0/33"),
    "unknown_policy_field.yaml": ("policies.login.windwo", "unknown field 'windwo'"),
    "limit_zero.json": ("policies.login.limit", "must be a positive integer, got 0"),
    "limit_string.toml": ("policies.login.limit", "must be a positive integer, got '5'"),
    "limit_true.yaml": ("policies.login.limit", "must be a positive integer, got True"),
    "window_negative.json": ("policies.login.window", "must be a positive duration"),
    "window_words.yaml": ("policies.login.window", "'5 minutes' is not a duration; write seconds"),
    "window_submillisecond.toml": ("policies.login.window", "whole number of milliseconds"),
    "window_beyond_float.json": ("policies.login.window", "is too large"),
    "unknown_algorithm.json": (
        "policies.login.algorithm",
        "unknown algorithm 'leaky_bucket'; expected one of",
    ),
    "burst_with_fixed_window.yaml": ("policies.login.burst", "only to token_bucket and gcra"),
    "lease_above_limit.json": ("policies.api.lease", "lease (200) must be at most the policy's"),
    "missing_window.yaml": ("policies.login.window", "is required"),
    "syntax_error.yaml": (None, "invalid YAML at line 3, column 2"),
    "syntax_error.json": (None, "invalid JSON at line 1, column 37"),
    "syntax_error.toml": (None, "invalid TOML: Invalid value (at line 2, column 9)"),
    "duplicate_key.json": ("policies.login.limit", "duplicate key 'limit'"),
    "duplicate_key.yaml": ("policies.login", "duplicate key 'login'"),
    "duplicate_key.toml": (None, "Cannot overwrite a value (at line 3"),
    "empty.yaml": (None, "is empty; define at least one policy"),
    "empty_policies.json": ("policies", "defines no policies"),
    "policies_not_mapping.yaml": ("policies", "must be a mapping of policy names to policies"),
    "policy_not_mapping.toml": ("policies.login", "must be a mapping"),
    "policy_name_with_space.json": ("policies.log in", "must be 1-64 characters"),
    "top_level_list.json": (None, "must be a mapping of policy names to policies"),
    "setting_in_short_form.json": ("timeout", "settings need the long form"),
    "store_bad_scheme.toml": ("store", "unsupported scheme; expected one of memory://"),
    "store_not_string.yaml": ("store", "must be a store URL string"),
    "key_prefix_braces.yaml": ("key_prefix", "no braces"),
    "local_cache_size_negative.json": ("local_cache_size", "must be an integer >= 0"),
    "timeout_fast.yaml": ("timeout", "'fast' is not a duration; write seconds"),
    "failure_mode_maybe.toml": (
        "failure_mode",
        "unknown failure mode 'maybe'; expected one of raise, open, closed",
    ),
    "limits.ini": (None, "unsupported file type (extension '.ini')"),
    "unsafe_tag.yaml": (None, "could not determine a constructor for the tag"),
    "nan.json": (None, "JSON does not allow NaN"),
    "two_documents.yaml": (None, "expected a single document"),
}


# --- the corpus -----------------------------------------------------------------------------


def test_every_bad_file_has_an_expectation() -> None:
    assert sorted(path.name for path in BAD.iterdir()) == sorted(BAD_FILES)


@pytest.mark.parametrize(("name", "expected"), sorted(BAD_FILES.items()))
def test_bad_file_is_rejected_with_file_field_and_reason(
    name: str, expected: tuple[str | None, str]
) -> None:
    field, reason = expected
    path = BAD / name
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert error.source == str(path)
    assert error.field == field
    assert reason in error.reason
    assert str(path) in str(error)
    if field is not None:
        assert f": {field}: " in str(error)


def test_the_bad_corpus_mixes_formats() -> None:
    suffixes = {Path(name).suffix for name in BAD_FILES}
    assert {".json", ".yaml", ".toml", ".ini"} <= suffixes
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("name", ["seed.json", "seed.yaml", "seed.toml"])
def test_seed_config_loads_in_every_format(name: str) -> None:
    path = GOOD / name
    assert load_config(path) == Config(SEED, source=str(path))


def test_long_form_with_every_setting() -> None:
    path = GOOD / "long_form.yaml"
    config = load_config(path)
    assert config == Config(
        {
            "login": Policy(limit=5, window=60, failure_mode="open"),
            "search": Policy(limit=20, window=1, algorithm="sliding_window", failure_mode="open"),
            "export": Policy(limit=20, window=1, algorithm="sliding_log", failure_mode="closed"),
            "api": Policy(
                limit=100,
                window=60,
                algorithm="token_bucket",
                burst=150,
                failure_mode="open",
                lease=10,
            ),
            "upload": Policy(limit=10, window=3600, algorithm="gcra", failure_mode="raise"),
        },
        store="redis://127.0.0.1:6379/0",
        key_prefix="myapp:rl",
        local_cache_size=500,
        timeout=0.1,
        source=str(path),
    )
    assert list(config.policies) == ["login", "search", "export", "api", "upload"]


def test_long_form_toml_with_a_policy_named_like_a_setting() -> None:
    path = GOOD / "long_form.toml"
    assert load_config(path) == Config(
        {"login": Policy(limit=5, window=60), "store": Policy(limit=1, window=10)},
        store="memory://",
        timeout=0.25,
        source=str(path),
    )


def test_every_good_file_loads() -> None:
    for path in GOOD.iterdir():
        assert load_config(path).policies


# --- Config ---------------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config({"login": {"limit": 5, "window": 60}}, source="x.json")
    assert config.store is None
    assert config.key_prefix == DEFAULT_PREFIX
    assert config.local_cache_size == DEFAULT_LOCAL_CACHE_SIZE == 10_000
    assert config.timeout == DEFAULT_TIMEOUT == 0.05
    assert config.source == "x.json"
    assert config.policy("login") == Policy(limit=5, window=60)


def test_config_is_immutable() -> None:
    config = parse_config({"login": {"limit": 5, "window": 60}}, source="x.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.policies["signup"] = Policy(limit=1, window=1)  # type: ignore[index]


def test_config_copies_the_policies_it_is_given() -> None:
    policies = {"login": Policy(limit=5, window=60)}
    config = Config(policies)
    policies["signup"] = Policy(limit=1, window=1)
    assert list(config.policies) == ["login"]


def test_unknown_policy_raises_key_error_listing_known_names() -> None:
    config = parse_config(
        {"login": {"limit": 5, "window": 60}, "signup": {"limit": 2, "window": "1h"}},
        source="limits.json",
    )
    with pytest.raises(KeyError, match=r"unknown policy 'logn' in limits.json.*login, signup"):
        config.policy("logn")


def test_load_config_accepts_path_objects_and_str(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"login": {"limit": 5, "window": 60}}', encoding="utf-8")
    assert load_config(path) == load_config(str(path))


# --- forms and settings ---------------------------------------------------------------------


def test_short_and_long_form_give_the_same_policies() -> None:
    body = {"limit": 5, "window": "1m", "algorithm": "token_bucket", "burst": 8}
    short = parse_config({"login": body}, source="s")
    long = parse_config({"policies": {"login": body}}, source="s")
    assert short.policies == long.policies


def test_errors_name_policies_path_in_both_forms() -> None:
    for data in (
        {"login": {"limit": 0, "window": 1}},
        {"policies": {"login": {"limit": 0, "window": 1}}},
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config(data, source="s")
        assert caught.value.field == "policies.login.limit"


@pytest.mark.parametrize("setting", SETTINGS)
def test_short_form_policy_may_be_named_like_a_setting(setting: str) -> None:
    config = parse_config({setting: {"limit": 1, "window": 1}}, source="s")
    assert list(config.policies) == [setting]
    assert config.timeout == DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    ("setting", "value"),
    [("store", "memory://"), ("timeout", 0.1), ("key_prefix", "x"), ("failure_mode", "open")],
)
def test_short_form_rejects_settings(setting: str, value: object) -> None:
    with pytest.raises(ConfigError, match="long form") as caught:
        parse_config({"login": {"limit": 1, "window": 1}, setting: value}, source="s")
    assert caught.value.field == setting


def test_config_failure_mode_is_the_default_for_policies() -> None:
    config = parse_config(
        {
            "failure_mode": "closed",
            "policies": {
                "login": {"limit": 1, "window": 1},
                "search": {"limit": 1, "window": 1, "failure_mode": "open"},
                "upload": {"limit": 1, "window": 1, "failure_mode": "raise"},
            },
        },
        source="s",
    )
    assert {name: p.failure_mode for name, p in config.policies.items()} == {
        "login": "closed",
        "search": "open",
        "upload": "raise",
    }


def test_without_a_config_failure_mode_policies_raise() -> None:
    config = parse_config({"policies": {"login": {"limit": 1, "window": 1}}}, source="s")
    assert config.policy("login").failure_mode == "raise"


def test_policy_failure_mode_is_validated_at_its_path() -> None:
    data = {"policies": {"login": {"limit": 1, "window": 1, "failure_mode": "sometimes"}}}
    with pytest.raises(ConfigError, match="expected one of raise, open, closed") as caught:
        parse_config(data, source="s")
    assert caught.value.field == "policies.login.failure_mode"


@pytest.mark.parametrize("scheme", STORE_SCHEMES)
def test_store_schemes(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:6379/0"
    config = parse_config({"store": url, "policies": {"a": {"limit": 1, "window": 1}}}, source="s")
    assert config.store == url


@pytest.mark.parametrize("url", ["redis", "127.0.0.1:6379", "http://localhost", "Redis:/x", ""])
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported scheme") as caught:
        parse_config({"store": url, "policies": {"a": {"limit": 1, "window": 1}}}, source="s")
    assert caught.value.field == "store"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:notaport/0", "port 'notaport'"),
        ("redis://127.0.0.1:99999/0", "port '99999'"),
        ("valkey://h:0/0", "port '0'"),
        ("redis://h:6379/abc", "database 'abc'"),
        ("redis://h:6379/0?db=3", "names database 0 in its path and 3 in ?db="),
        ("redis://h:6379?db=1&db=2", "gives ?db= more than once"),
        ("rediss://h:6380/0?ssl_ciphers=x", "unknown parameter(s) ssl_ciphers"),
        ("unix://relative.sock", "needs an absolute socket path"),
        ("unix:///tmp/r.sock?db=x", "database 'x'"),
        ("redis+sentinel://h1:26379,h2:x/mymaster", "port 'x'"),
        ("redis+sentinel://h1/mymaster/x", "database 'x'"),
        ("redis+sentinel://h1/mymaster/0?password=x", "unknown parameter(s) password"),
    ],
)
def test_malformed_store_urls_are_config_errors_before_connecting(url: str, reason: str) -> None:
    data = {"store": url, "policies": {"a": {"limit": 1, "window": 1}}}
    with pytest.raises(ConfigError, match=re.escape(reason)) as caught:
        parse_config(data, source="limits.json")
    assert (caught.value.source, caught.value.field) == ("limits.json", "store")
    # The same check when the URL is given in code (nothing listens on these addresses).
    for limiter_class in (RateLimiter, AsyncRateLimiter):
        with pytest.raises(ConfigError, match=re.escape(reason)) as caught:
            limiter_class({"a": Policy(1, 1)}, store=url)
        assert caught.value.field == "store"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/3?db=3",
        "redis://:secret@localhost",
        "rediss://user:pass@[::1]:6380/15",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://10.0.0.1:7000",
        "redis+sentinel://:pw@h1:26379,h2/mymaster/1?sentinel_password=x",
    ],
)
def test_well_formed_store_urls_pass(url: str) -> None:
    data = {"store": url, "policies": {"a": {"limit": 1, "window": 1}}}
    assert parse_config(data, source="limits.json").store == url


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0.05, 0.05), (1, 1.0), (0.0001, 0.0001), ("50ms", 0.05), ("2s", 2.0), ("1m", 60.0)],
)
def test_timeout_accepts_seconds_and_durations(value: object, seconds: float) -> None:
    config = parse_config(
        {"timeout": value, "policies": {"a": {"limit": 1, "window": 1}}}, source="s"
    )
    assert config.timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [0, -1, 0.0, float("nan"), float("inf"), True, None, [], "fast", 10**400, "2h"]
)
def test_timeout_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"timeout": value, "policies": {"a": {"limit": 1, "window": 1}}}, source="s")
    assert caught.value.field == "timeout"


@pytest.mark.parametrize("value", [-1, True, 1.5, "10", None])
def test_local_cache_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match="integer >= 0") as caught:
        parse_config(
            {"local_cache_size": value, "policies": {"a": {"limit": 1, "window": 1}}}, source="s"
        )
    assert caught.value.field == "local_cache_size"


def test_local_cache_size_zero_turns_the_cache_off() -> None:
    config = parse_config(
        {"local_cache_size": 0, "policies": {"a": {"limit": 1, "window": 1}}}, source="s"
    )
    assert config.local_cache_size == 0


@pytest.mark.parametrize("prefix", ["", "a b", "x{y", "é", 5, None])
def test_key_prefix_rejects(prefix: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"key_prefix": prefix, "policies": {"a": {"limit": 1, "window": 1}}}, source="s"
        )
    assert caught.value.field == "key_prefix"


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "a{b}", 1, None])
def test_policy_names_are_validated(name: object) -> None:
    with pytest.raises(ConfigError, match="must be 1-64 characters") as caught:
        parse_config({"policies": {name: {"limit": 1, "window": 1}}}, source="s")
    assert caught.value.field == f"policies.{name}"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(None, "is empty"), ([], "got a list"), ("login", "got str 'login'"), (5, "got int 5")],
)
def test_top_level_must_be_a_mapping(data: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        parse_config(data, source="s")
    assert caught.value.field is None


@pytest.mark.parametrize("data", [{}, {"policies": {}}])
def test_no_policies(data: object) -> None:
    with pytest.raises(ConfigError, match="defines no policies") as caught:
        parse_config(data, source="s")
    assert caught.value.field == "policies"


def test_unknown_setting_lists_the_settings() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"policies": {"a": {"limit": 1, "window": 1}}, "redis": "x"}, source="s")
    assert caught.value.field == "redis"
    assert caught.value.reason == (
        "unknown setting 'redis'; expected one of policies, store, key_prefix, "
        "local_cache_size, timeout, failure_mode, shadow, routes, client_ip, metrics, domains, "
        "breaker, batching"
    )


def test_deeply_nested_value_is_a_config_error() -> None:
    value: object = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config({"login": {"limit": value, "window": 1}}, source="s")


# --- files ----------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_config(path)
    assert caught.value.source == str(path)


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(path)


def test_no_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "limits", "{}")
    with pytest.raises(ConfigError, match=r"unsupported file type \(no extension\)"):
        load_config(path)


@pytest.mark.parametrize("name", ["limits.JSON", "limits.Yml", "limits.yml"])
def test_extension_is_case_insensitive_and_yml_works(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '{"login": {"limit": 5, "window": 60}}')
    assert load_config(path).policies == SEED


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"login": {"limit": 5, "window": 60}}')
    assert load_config(path).policies == SEED


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_bytes(b"login:\n  limit: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_deeply_nested_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "limits.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply") as caught:
        load_config(path)
    assert caught.value.source == str(path)


def test_json_integer_with_too_many_digits(tmp_path: Path) -> None:
    path = write(tmp_path, "limits.json", '{"login": {"limit": ' + "9" * 5000 + ', "window": 1}}')
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(path)


def test_duplicate_key_in_long_form_json(tmp_path: Path) -> None:
    text = '{"store": "memory://", "policies": {"a": {"limit": 1, "window": 1}}, "store": "x"}'
    with pytest.raises(ConfigError, match="duplicate key 'store'") as caught:
        load_config(write(tmp_path, "limits.json", text))
    assert caught.value.field == "store"


def test_duplicate_key_in_long_form_yaml(tmp_path: Path) -> None:
    text = "policies:\n  a:\n    limit: 1\n    window: 1\n    window: 2\n"
    with pytest.raises(ConfigError, match="duplicate key 'window'") as caught:
        load_config(write(tmp_path, "limits.yaml", text))
    assert caught.value.field == "policies.a.window"


def test_yaml_keys_are_compared_as_values(tmp_path: Path) -> None:
    text = "policies:\n  a: {limit: 1, window: 1}\n  0x1: {limit: 1, window: 1}\n  1: {}\n"
    with pytest.raises(ConfigError, match="duplicate key 1") as caught:
        load_config(write(tmp_path, "limits.yaml", text))
    assert caught.value.field == "policies.1"


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = (
        "defaults: &defaults {limit: 5, window: 60}\n"
        "signup: *defaults\n"
        "login:\n  <<: *defaults\n  limit: 3\n"
    )
    config = load_config(write(tmp_path, "limits.yaml", text))
    assert config.policies == {
        "defaults": Policy(limit=5, window=60),
        "signup": Policy(limit=5, window=60),
        "login": Policy(limit=3, window=60),
    }


def test_yaml_recursive_alias_is_rejected_not_looped(tmp_path: Path) -> None:
    text = "login: &loop\n  limit: *loop\n  window: 60\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "limits.yaml", text))
    assert caught.value.field == "policies.login.limit"


def test_yaml_unhashable_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        load_config(write(tmp_path, "limits.yaml", "? [a, b]\n: {limit: 1, window: 1}\n"))


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "~\n"])
def test_empty_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, "limits.yaml", text))


def test_empty_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="defines no policies"):
        load_config(write(tmp_path, "limits.toml", ""))


def test_yaml_durations_and_toml_types(tmp_path: Path) -> None:
    yaml_path = write(tmp_path, "limits.yaml", "login: {limit: 5, window: 500ms}\n")
    assert load_config(yaml_path).policy("login").window == 0.5
    toml_path = write(tmp_path, "limits.toml", "[login]\nlimit = 5.0\nwindow = 1\n")
    with pytest.raises(ConfigError, match=r"positive integer, got 5\.0"):
        load_config(toml_path)


# --- fuzzing --------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["policies", "login", "limit", "window", "algorithm", "burst", *SETTINGS, "x y", ""]
) | st.text(max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["1m", "500ms", "memory://", "redis://h", "gcra", "token_bucket", "open"])
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)
_NUMBERS = (
    st.integers(min_value=1, max_value=1000)
    | st.integers(min_value=-2, max_value=2**54)
    | st.floats()
    | st.sampled_from([0, 1, 0.0001, 0.001, 2**51, 2**53, 1e305, 10**400, float("inf"), True])
    | st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,4})? ?(ms|s|m|h|d|x)?", fullmatch=True)
)
_POLICY_BODIES = st.fixed_dictionaries(
    {"limit": _NUMBERS, "window": _NUMBERS},
    optional={
        "algorithm": st.sampled_from([*ALGORITHMS, "leaky_bucket"]),
        "burst": _NUMBERS,
        "failure_mode": st.sampled_from([*FAILURE_MODES, "maybe"]),
    },
)
_POLICIES = st.dictionaries(
    st.sampled_from(["login", "api", "store", "timeout", "a.b@c-d", "x y"]) | st.text(max_size=4),
    _POLICY_BODIES,
    max_size=3,
)
# Mostly well-formed configs, so that examples get past the first check and reach the deep ones.
NEAR_VALID = _POLICIES | st.fixed_dictionaries(
    {"policies": _POLICIES},
    optional={
        "store": st.sampled_from(["memory://", "redis://h:6379/0", "http://h", ""]),
        "key_prefix": st.sampled_from(["rl", "a:b/c", "a{b}"]),
        "local_cache_size": st.integers(min_value=-1, max_value=10**20),
        "timeout": _NUMBERS,
        "failure_mode": st.sampled_from([*FAILURE_MODES, "maybe"]),
    },
)


def _only_config_errors(data: object) -> None:
    error: ConfigError | None = None
    try:
        config = parse_config(data, source="fuzz.json")
    except ConfigError as caught:
        error = caught
    else:
        assert config.policies
        for name, policy in config.policies.items():
            assert config.policy(name) is policy
    if error is not None:
        assert error.source == "fuzz.json"
        assert error.reason


@settings(max_examples=400, deadline=None, database=None)
@given(JSON_VALUES)
def test_random_json_values_raise_only_config_error(data: object) -> None:
    _only_config_errors(data)


@settings(max_examples=400, deadline=None, database=None)
@given(NEAR_VALID)
def test_near_valid_configs_raise_only_config_error(data: object) -> None:
    _only_config_errors(data)


@settings(max_examples=200, deadline=None, database=None)
@given(JSON_VALUES)
def test_random_json_files_raise_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: object
) -> None:
    # The same values through a file: the JSON decoder and the duplicate-key pass too.
    path = tmp_path_factory.mktemp("fuzz", numbered=True) / "limits.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    error: ConfigError | None = None
    try:
        load_config(path)
    except ConfigError as caught:
        error = caught
    if error is not None:
        assert error.source == str(path)


# --- every field of a long-form config, HTTP sections included ------------------------------

# Valid as it stands, and using every field: each mutation below reaches a real check.
LONG_FORM: dict[str, object] = {
    "policies": {
        "login": {"limit": 5, "window": "1m", "failure_mode": "closed"},
        "api": {"limit": 100, "window": 1, "algorithm": "token_bucket", "burst": 200, "lease": 5},
        "search": {"limit": 20, "window": "30s", "algorithm": "sliding_window"},
    },
    "store": "memory://",
    "key_prefix": "rl",
    "local_cache_size": 100,
    "timeout": "50ms",
    "failure_mode": "open",
    "client_ip": {
        "trusted_proxies": ["10.0.0.0/8", "2001:db8::/32", "unix"],
        "header": "forwarded",
        "ipv6_prefix": 56,
        "ipv4_prefix": 24,
    },
    "routes": [
        {
            "match": "POST /login",
            "identity": "header:X-User-ID",
            "on_missing_identity": "reject",
            "policies": [
                "login",
                {"policy": "api", "identity": "ip", "cost": 2, "on_missing_identity": "skip"},
            ],
        },
        {
            "match": "GET /users/{user_id}",
            "policies": [{"policy": "api", "identity": "path:user_id"}],
        },
        {"match": "* /api/*", "identity": "api_key:X-Token", "policies": ["api"]},
        {"match": "/health", "policies": []},
    ],
}


def _positions(value: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every position inside ``value`` (each mapping key, each list item), at every depth."""
    found: list[tuple[str | int, ...]] = []
    children: list[tuple[str | int, object]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    for key, child in children:
        found.append((*path, key))
        found.extend(_positions(child, (*path, key)))
    return found


POSITIONS = _positions(LONG_FORM)


def _mutated(position: tuple[str | int, ...], value: object, *, delete: bool) -> object:
    """A deep copy of :data:`LONG_FORM` with ``value`` at ``position`` (or nothing there)."""
    document = json.loads(json.dumps(LONG_FORM))  # JSON, so positions are JSON's own
    parent = document
    for step in position[:-1]:
        parent = parent[step]
    if delete:
        del parent[position[-1]]
    else:
        parent[position[-1]] = value
    return document


def _only_config_errors_or_routes(data: object) -> None:
    """Loading gives a ConfigError naming the source and a field, or a config whose routes
    compile: nothing else may come out of a bad file."""
    error: ConfigError | None = None
    try:
        config = parse_config(data, source="fuzz.json")
    except ConfigError as caught:
        error = caught
    else:
        if config.routes is not None:
            assert routes_from_config(config).routes is not None
    if error is not None:
        assert error.source == "fuzz.json"
        assert error.reason


def test_the_long_form_uses_every_section_and_is_valid() -> None:
    config = parse_config(LONG_FORM, source="fuzz.json")
    assert config.client_ip is not None
    assert config.routes is not None
    assert len(routes_from_config(config).routes) == 4


@settings(max_examples=600, deadline=None, database=None)
@given(st.sampled_from(POSITIONS), JSON_VALUES, st.booleans())
def test_any_value_in_any_field_raises_only_config_error(
    position: tuple[str | int, ...], value: object, delete: bool
) -> None:
    _only_config_errors_or_routes(_mutated(position, value, delete=delete))


@pytest.mark.parametrize(
    ("client_ip", "field", "reason"),
    [
        ({"trusted_proxies": [123]}, "client_ip.trusted_proxies[0]", "got int 123"),
        ({"trusted_proxies": [None]}, "client_ip.trusted_proxies[0]", "got null"),
        (
            {"trusted_proxies": ["10.0.0.0/8", None]},
            "client_ip.trusted_proxies[1]",
            "got null",
        ),
        ({"trusted_proxies": None}, "client_ip.trusted_proxies", "must be a list"),
        ({"trusted_proxies": [["10.0.0.0/8"]]}, "client_ip.trusted_proxies[0]", "got a list"),
        ({"header": None}, "client_ip.header", "must be 'x-forwarded-for' or 'forwarded'"),
        ({"ipv6_prefix": None}, "client_ip.ipv6_prefix", "must be an integer from 1 to 128"),
        ({"trusted_proxies": ["10.0.0.300"]}, "client_ip.trusted_proxies[0]", "'10.0.0.300'"),
    ],
)
def test_malformed_client_ip_sections_are_config_errors(
    tmp_path: Path, client_ip: dict[str, object], field: str, reason: str
) -> None:
    """These raised AttributeError from load_config and RateLimiter.from_config, and
    check-config died with a traceback (issue 19)."""
    path = write(
        tmp_path,
        "limits.json",
        json.dumps({"policies": {"login": {"limit": 5, "window": 60}}, "client_ip": client_ip}),
    )
    for load in (load_config, RateLimiter.from_config):
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert (caught.value.source, caught.value.field) == (str(path), field)
        assert reason in caught.value.reason
    assert main(["check-config", str(path)]) == 2


def test_a_window_of_bare_digits_in_a_string_gets_the_two_ways_to_write_it() -> None:
    expected = "'90' is not a duration; a string needs a unit ('90s'), or write the seconds as"
    with pytest.raises(ConfigError, match=re.escape(expected + " a number (90)")):
        Policy(5, "90")
