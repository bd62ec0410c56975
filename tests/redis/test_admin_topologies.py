"""inspect, reset and top through ``redis+cluster://`` and ``redis+sentinel://`` URLs, on the
real three-primary cluster and sentinel of test_topologies (its fixtures, started once per
module and server kind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ratewall import RateLimiter
from ratewall.cli import main
from ratewall.embedded import LocalServer

from .test_topologies import (  # noqa: F401 - fixtures, found by pytest under their names
    _collect_dropped_connections,
    cluster,
    cluster_url,
    sentinel_master,
    sentinel_url,
)

IDENTITIES = [f"user_{number}" for number in range(12)]  # spread over the three shards


def _config(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "limits.json"
    policies = {
        "login": {"limit": 5, "window": 60},
        "api": {"limit": 3, "window": 60, "algorithm": "sliding_log"},
    }
    path.write_text(json.dumps({"store": store, "policies": policies}))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


@pytest.mark.parametrize("url_fixture", ["cluster_url", "sentinel_url"])
def test_inspect_reset_and_top(
    url_fixture: str,
    redis_server: LocalServer,  # the server kind the cluster and the sentinel are made of
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _config(tmp_path, request.getfixturevalue(url_fixture))
    with RateLimiter.from_config(path, timeout=2.0) as limiter:
        for number, identity in enumerate(IDENTITIES):
            for _ in range(number % 6 + 1):
                limiter.check(identity, "login")
            limiter.check(identity, "api")

    status, out = _run(capsys, "inspect", "user_5", "login", "--config", str(path), "--json")
    assert status == 0
    shown = json.loads(out)
    assert (shown["state"]["count"], shown["allowed"]) == (5, False)

    status, out = _run(capsys, "top", "--policy", "login", "--config", str(path), "--json")
    assert status == 0
    shown = json.loads(out)
    assert shown["scan"]["complete"] is True
    assert shown["scan"]["keys_found"] == len(IDENTITIES)
    at_limit = {row["identity"] for row in shown["entries"][:4]}  # 5 checks or more: count 5
    assert at_limit == {"user_4", "user_5", "user_10", "user_11"}
    assert [row["available"] for row in shown["entries"]] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    if url_fixture == "cluster_url":
        assert shown["scan"]["nodes"] == 3

    status, out = _run(capsys, "reset", "user_5", "--all-policies", "--config", str(path))
    assert status == 0
    assert "2 of 2 keys removed" in out
    status, out = _run(capsys, "inspect", "user_5", "api", "--config", str(path), "--json")
    assert json.loads(out)["state"]["exists"] is False
