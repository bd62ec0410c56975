"""``ratewall explain`` on real servers: routes, identities behind trusted proxies, keys and
peeked decisions, and its exit statuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ratewall import RateLimiter
from ratewall.cli import main
from ratewall.embedded import LocalServer
from ratewall.keys import encode_identity

from .._timing import STORE_TIMEOUT

ROUTES: list[dict[str, Any]] = [
    {
        "match": "POST /login",
        "identity": "header:X-User-ID",
        "policies": ["login", {"policy": "login_ip", "identity": "ip"}],
    },
    {"match": "GET /health", "policies": []},
    {"match": "GET /users/{user_id}", "policies": [{"policy": "user", "identity": "path:user_id"}]},
    {
        "match": "* /api/*",
        "policies": [
            "login",
            {"policy": "api", "identity": "api_key", "on_missing_identity": "reject"},
        ],
    },
    {
        "match": "GET /feed",
        "policies": [{"policy": "user", "identity": "user", "on_missing_identity": "skip"}],
    },
]


def write_config(tmp_path: Path, store: str | None, **extra: Any) -> Path:
    config: dict[str, Any] = {
        "policies": {
            "login": {"limit": 5, "window": 60},
            "login_ip": {"limit": 20, "window": 60, "algorithm": "sliding_window"},
            "user": {"limit": 10, "window": 60, "algorithm": "gcra"},
            "api": {"limit": 100, "window": 60, "algorithm": "token_bucket"},
        },
        "client_ip": {"trusted_proxies": ["10.0.0.0/8"]},
        "routes": ROUTES,
        **extra,
    }
    if store is not None:
        config["store"] = store
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(config))
    return path


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["explain", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def explain_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    status, out, err = explain(capsys, *argv, "--json")
    assert status == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def by_policy(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["policy"]: entry for entry in report["policies"]}


def test_a_request_behind_a_trusted_proxy(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    report = explain_json(
        capsys,
        "POST",
        "/login",
        "-H",
        "X-User-ID: user_123",
        "-H",
        "X-Forwarded-For: 203.0.113.7, 10.0.0.3",
        "--client-ip",
        "10.0.0.2",
        "--config",
        str(config),
    )
    assert report["route"] == {"index": 0, "match": "POST /login"}
    assert report["outcome"] == "checked"
    assert report["allowed"] is True
    assert report["store"] == redis_url
    login, login_ip = by_policy(report)["login"], by_policy(report)["login_ip"]
    assert (login["identity"], login["derived"]) == ("user_123", "source")
    assert login["key"] == "ratelimit:{user_123}:login"
    assert (login["allowed"], login["remaining"], login["retry_after"]) == (True, 4, None)
    # 10.0.0.3 is a trusted hop too: the client is the first untrusted address from the right.
    assert (login_ip["identity"], login_ip["derived"]) == ("203.0.113.7", "source")
    assert login_ip["key"] == "ratelimit:{203.0.113.7}:login_ip"
    assert "trusted proxy 10.0.0.2" in login_ip["client_address"]
    assert login_ip["remaining"] == 19


def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    status, out, _ = explain(
        capsys,
        "POST",
        "/login",
        "-H",
        "X-User-ID: user_123",
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        "--client-ip",
        "198.51.100.9",
        "--config",
        str(config),
    )
    assert status == 0
    assert "identity  198.51.100.9 (from the client address)" in out
    assert "the socket peer 198.51.100.9, not a trusted proxy; X-Forwarded-For ignored" in out
    assert "key       ratelimit:{198.51.100.9}:login_ip" in out


def test_a_missing_identity_falls_back_to_the_client_address_whose_key_may_be_a_digest(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    report = explain_json(
        capsys, "post", "/login", "--client-ip", "2001:db8::1", "--config", str(config)
    )
    login = by_policy(report)["login"]
    assert login["derived"] == "client_address_fallback"
    assert login["identity"] == "2001:db8::/64"  # IPv6 clients are grouped by /64
    assert login["key"] == f"ratelimit:{{{encode_identity('2001:db8::/64')}}}:login"
    assert login["digest"] is True


def test_a_client_over_its_limit_is_shown_refused_and_nothing_is_consumed(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    with RateLimiter.from_config(config, timeout=STORE_TIMEOUT) as limiter:
        for _ in range(5):
            assert limiter.check("user_123", "login").allowed
        argv = ["POST", "/login", "-H", "X-User-ID: user_123", "--client-ip", "10.1.2.3"]
        status, out, _ = explain(capsys, *argv, "--config", str(config))
        assert status == 0
        assert "would be REFUSED" in out
        assert "verdict   429 Too Many Requests, refused by login" in out
        report = explain_json(capsys, *argv, "--config", str(config))
        assert report["allowed"] is False
        assert report["refused_by"] == ["login"]
        login = by_policy(report)["login"]
        assert (login["allowed"], login["remaining"]) == (False, 0)
        assert 0 < login["retry_after"] <= 60
        # Peeks only: the client address's policy consumed nothing either.
        assert limiter.peek("10.1.2.3", "login_ip").remaining == 19


def test_path_parameters_and_skipped_identities(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    user = by_policy(explain_json(capsys, "GET", "/users/bob?x=1", "--config", str(config)))
    assert (user["user"]["identity"], user["user"]["key"]) == ("bob", "ratelimit:{bob}:user")
    feed = explain_json(capsys, "GET", "/feed", "--client-ip", "10.9.9.9", "--config", str(config))
    assert feed["outcome"] == "all_skipped"
    assert by_policy(feed)["user"]["derived"] == "skipped"
    assert by_policy(feed)["user"]["key"] is None


def test_a_required_identity_missing_is_a_400_before_any_check(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    report = explain_json(
        capsys, "GET", "/api/items", "--client-ip", "10.9.9.9", "--config", str(config)
    )
    assert report["outcome"] == "rejected_400"
    assert report["allowed"] is False
    policies = by_policy(report)
    assert policies["api"]["derived"] == "missing_reject"
    assert "allowed" not in policies["login"]
    with_key = explain_json(
        capsys,
        "GET",
        "/api/items",
        "-H",
        "X-API-Key: k",
        "--client-ip",
        "10.9.9.9",
        "--config",
        str(config),
    )
    api = by_policy(with_key)["api"]
    assert api["identity"].startswith("apikey.")  # a digest of the key, never the key
    assert "X-API-Key: k" not in json.dumps(with_key)


def test_unrouted_and_exempt_requests(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    nothing = explain_json(capsys, "GET", "/nowhere", "--config", str(config))
    assert (nothing["route"], nothing["outcome"], nothing["policies"]) == (None, "not_limited", [])
    status, out, _ = explain(capsys, "GET", "/health", "--config", str(config))
    assert status == 0
    assert "route     #1 GET /health" in out
    assert "exempts the request" in out


def test_without_a_shared_store_decisions_are_left_out(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, None)
    report = explain_json(
        capsys,
        "POST",
        "/login",
        "-H",
        "X-User-ID: u",
        "--client-ip",
        "10.9.9.9",
        "--config",
        str(config),
    )
    assert report["store"] is None
    assert by_policy(report)["login"]["key"] == "ratelimit:{u}:login"
    assert "allowed" not in by_policy(report)["login"]
    assert any("no shared store, so no decisions" in note for note in report["notes"])
    # --store names the application's store: the decisions are back.
    argv = ["POST", "/login", "-H", "X-User-ID: u", "--config", str(config)]
    with_store = explain_json(capsys, *argv, "--store", redis_url)
    assert with_store["store"] == redis_url
    assert by_policy(with_store)["login"]["remaining"] == 4


def test_an_unreachable_store_exits_1_without_its_password(
    fresh_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{fresh_server.port}/0"
    fresh_server.stop()
    config = write_config(tmp_path, url)
    status, out, err = explain(
        capsys, "POST", "/login", "-H", "X-User-ID: u", "--config", str(config), "--timeout", "1"
    )
    assert status == 1
    assert out == ""
    assert "s3cret" not in err
    assert "ratewall: error:" in err
    # Even with nothing to peek (no route matches), the store must answer.
    status, _, err = explain(capsys, "GET", "/nowhere", "--config", str(config))
    assert status == 1
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["GET", "login"], "PATH must start with '/'"),
        (["GET", "/login", "-H", "no colon"], 'a header is "Name: value"'),
        (["GET", "/login", "--client-ip", "not-an-ip"], "expected an IP address"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = explain(capsys, *argv, "--config", str(write_config(tmp_path, None)))
    assert status == 2
    assert message in err


def test_a_config_without_routes_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"login": {"limit": 5, "window": 60}}))
    status, _, err = explain(capsys, "GET", "/", "--config", str(path))
    assert status == 2
    assert "no 'routes' section" in err
    status, _, err = explain(capsys, "GET", "/", "--config", str(tmp_path / "missing.json"))
    assert status == 2
    assert "no such file" in err
