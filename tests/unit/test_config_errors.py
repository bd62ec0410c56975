"""A config file is checked whole: every error reported (sorted by field path, bounded),
near misses of field names get a suggestion, and a misspelt ``policies`` is named as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ratewall.cli import main
from ratewall.config import MAX_REPORTED, load_config, parse_config
from ratewall.errors import ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MANY_MISTAKES = """\
policies:
  login: {limit: 0, window: 60}
  search: {limit: 5, windwo: 60}
  api: {limit: 100, window: 60}
store: "postgres://db"
timeout: fast
client_ip: {trusted: ["10.0.0.0/8"]}
routes:
  - {match: "POST /login", policies: [login]}
  - {match: "GET /search", policies: [serach]}
  - {match: "GET /api", policies: [{policy: api, cost: 1000}], identity: cookie}
"""


def test_check_config_prints_every_error_sorted_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "limits.yaml", MANY_MISTAKES)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    fields = [line.removeprefix(f"ratewall: error: {path}: ").split(":")[0] for line in lines[:-1]]
    assert fields == [
        "client_ip.trusted",
        "policies.login.limit",
        "policies.search.windwo",
        "routes[1].policies[0]",
        "routes[2].identity",
        "routes[2].policies[0].cost",
        "store",
        "timeout",
    ]
    assert all(line.startswith(f"ratewall: error: {path}: ") for line in lines[:-1])
    assert lines[-1] == f"ratewall: 8 errors in {path}"
    # routes[0] names login, which failed to parse: that is reported once, at the policy
    assert "routes[0]" not in err
    assert "Traceback" not in err


def test_the_library_raises_the_first_error_and_carries_them_all(tmp_path: Path) -> None:
    path = write(tmp_path, "limits.yaml", MANY_MISTAKES)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    # the first found, which is the one raised before files were checked whole
    assert (error.source, error.field) == (str(path), "store")
    assert "unsupported scheme" in error.reason
    assert len(error.errors) == 8
    assert error in error.errors
    assert all(each.source == str(path) for each in error.errors)


def test_a_file_with_one_error_still_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "limits.json", json.dumps({"login": {"limit": 5}}))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"ratewall: error: {path}: policies.login.window: is required\n"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == (caught.value,)


def test_list_positions_sort_by_number(tmp_path: Path) -> None:
    routes = [{"match": "/ok", "policies": ["login"]} for _ in range(12)]
    routes[2]["policies"] = ["nope"]
    routes[10]["policies"] = ["nope"]
    data = {"policies": {"login": {"limit": 5, "window": 60}}, "routes": routes}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="x")
    assert [each.field for each in caught.value.errors] == [
        "routes[2].policies[0]",
        "routes[10].policies[0]",
    ]


def test_check_config_bounds_what_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = MAX_REPORTED + 10
    policies = {f"p{index:03}": {"limit": -1, "window": 60} for index in range(count)}
    path = write(tmp_path, "limits.json", json.dumps(policies))
    assert main(["check-config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == MAX_REPORTED + 1
    assert lines[0].startswith(f"ratewall: error: {path}: policies.p000.limit: ")
    assert lines[MAX_REPORTED - 1].startswith(f"ratewall: error: {path}: policies.p049.limit: ")
    assert lines[-1] == f"ratewall: {count} errors in {path} (the first {MAX_REPORTED} shown)"


def test_every_duplicate_key_is_reported(tmp_path: Path) -> None:
    text = '{"login": {"limit": 5, "limit": 6, "window": 60, "window": 1}}'
    path = write(tmp_path, "limits.json", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [(each.field, each.reason.split(";")[0]) for each in caught.value.errors] == [
        ("policies.login.limit", "duplicate key 'limit'"),
        ("policies.login.window", "duplicate key 'window'"),
    ]


# --- a misspelt 'policies' ------------------------------------------------------------------


@pytest.mark.parametrize("typo", ["polices", "policy", "Policies", "poilcies"])
def test_a_misspelt_policies_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typo: str
) -> None:
    text = f"{typo}:\n  login: {{limit: 5, window: 60}}\nstore: 'memory://'\n"
    path = write(tmp_path, "limits.yaml", text)
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"ratewall: error: {path}: {typo}: "
        f"unknown top-level field {typo!r} (did you mean 'policies'?)\n"
    )


def test_a_misspelt_policies_does_not_hide_the_settings_errors(tmp_path: Path) -> None:
    text = "polices:\n  login: {limit: 5, window: 60}\ntimeout: fast\nstroe: 'memory://'\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "limits.yaml", text))
    assert [each.field for each in caught.value.errors] == ["polices", "stroe", "timeout"]
    assert caught.value.errors[1].reason.endswith("(did you mean 'store'?)")


def test_routes_may_name_the_policies_under_a_misspelt_key(tmp_path: Path) -> None:
    text = (
        "polices:\n  login: {limit: 5, window: 60}\n"
        "routes:\n  - {match: 'POST /login', policies: [login]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "limits.yaml", text))
    assert [each.field for each in caught.value.errors] == ["polices"]


def test_a_policy_may_still_be_called_like_a_near_miss(tmp_path: Path) -> None:
    """Short form: a key whose value is a policy is a policy, whatever its name."""
    path = write(tmp_path, "limits.json", json.dumps({"polices": {"limit": 5, "window": 60}}))
    assert list(load_config(path).policies) == ["polices"]
    broken = write(tmp_path, "broken.json", json.dumps({"policy": {"limit": 0, "window": 60}}))
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert caught.value.field == "policies.policy.limit"


# --- suggestions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "suggestion"),
    [
        (
            {"policies": {"login": {"limit": 5, "window": 60}}, "stroe": "memory://"},
            "stroe",
            "store",
        ),
        (
            {"policies": {"login": {"limit": 5, "window": 60}}, "timout": 1},
            "timout",
            "timeout",
        ),
        ({"login": {"limit": 5, "windwo": 60}}, "policies.login.windwo", "window"),
        ({"login": {"limit": 5, "window": 60, "Burst": 2}}, "policies.login.Burst", "burst"),
        (
            {"login": {"limit": 5, "window": 60, "tiers": {"pro": {"limt": 50}}}},
            "policies.login.tiers.pro.limt",
            "limit",
        ),
        (
            {
                "policies": {"login": {"limit": 5, "window": 60}},
                "client_ip": {"trusted_proxy": ["10.0.0.0/8"]},
            },
            "client_ip.trusted_proxy",
            "trusted_proxies",
        ),
        (
            {
                "policies": {"login": {"limit": 5, "window": 60}},
                "routes": [{"match": "/x", "polices": ["login"]}],
            },
            "routes[0].polices",
            "policies",
        ),
        (
            {
                "policies": {"login": {"limit": 5, "window": 60}},
                "routes": [{"match": "/x", "policies": [{"policy": "login", "cots": 1}]}],
            },
            "routes[0].policies[0].cots",
            "cost",
        ),
        (
            {
                "policies": {"login": {"limit": 5, "window": 60}},
                "routes": [{"match": "/x", "policies": ["logni"]}],
            },
            "routes[0].policies[0]",
            "login",
        ),
    ],
)
def test_near_misses_get_a_suggestion(data: object, field: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="limits.json")
    fields = {each.field: each.reason for each in caught.value.errors}
    assert fields[field].endswith(f"(did you mean {suggestion!r}?)")


def test_no_suggestion_for_a_name_nothing_resembles() -> None:
    data = {"policies": {"login": {"limit": 5, "window": 60}}, "colour": "blue"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="limits.json")
    assert "did you mean" not in caught.value.reason


def test_a_misspelt_setting_in_the_short_form_is_named_as_such() -> None:
    data = {"login": {"limit": 5, "window": 60}, "timout": "50ms"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="limits.json")
    assert caught.value.field == "timout"
    assert caught.value.reason.startswith(
        "unknown top-level field 'timout' (did you mean 'timeout'?); settings need the long form"
    )
