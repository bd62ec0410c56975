"""`ratewall demo`'s decisions before it serves: without any server binary it says so and
serves the memory store; a bad config or a port it cannot listen on stops it before it
starts anything."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from ratewall import demo
from ratewall.cli import main

Served = list[tuple[str, int, int]]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    """What ``_serve`` is asked to serve (store, workers, port), instead of serving it; and
    no embedded server: the demo then runs on the memory store."""
    calls: Served = []

    def serve(store: str, workers: int, host: str, port: int, config: str | None) -> int:
        calls.append((store, workers, port))
        return 0

    monkeypatch.setattr(demo, "_serve", serve)
    monkeypatch.setattr(demo, "find_server", lambda: None)
    return calls


def test_without_a_server_binary_it_runs_on_memory_with_one_worker(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(
        store=None, workers=2, host="127.0.0.1", port=0, config=None, walkthrough=False
    )
    assert demo.run_demo(args) == 0
    assert [(store, workers) for store, workers, _ in served] == [("memory://", 1)]
    error = capsys.readouterr().err
    assert "no redis-server or valkey-server found" in error
    assert "ONE worker" in error


def test_a_memory_store_url_also_means_one_worker(served: Served) -> None:
    args = argparse.Namespace(
        store="memory://", workers=4, host="127.0.0.1", port=0, config=None, walkthrough=False
    )
    assert demo.run_demo(args) == 0
    assert [(store, workers) for store, workers, _ in served] == [("memory://", 1)]


def test_a_bad_config_ends_the_command_before_anything_starts(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"login": {"limit": 0, "window": 60}}')
    assert main(["demo", "--config", str(path), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert f"ratewall: error: {path}: policies.login.limit: must be a positive integer" in error
    assert served == []


def test_a_config_without_the_login_policy_ends_the_command_before_anything_starts(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo's route needs "login": without it every worker would fail and be restarted.
    path = tmp_path / "limits.json"
    path.write_text('{"search": {"limit": 2, "window": 60}}')
    assert main(["demo", "--config", str(path), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert f"{path}: policies.login: the demo serves POST /login" in error
    assert "(it has: search)" in error
    assert served == []


def test_the_config_store_it_does_not_use_is_named(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "limits.json"
    path.write_text(
        '{"store": "redis://10.0.0.9:6379/5", "policies": {"login": {"limit": 2, "window": 60}}}'
    )
    assert main(["demo", "--config", str(path), "--port", "0"]) == 0
    assert "not using the store of" in capsys.readouterr().err
    assert [store for store, _, _ in served] == ["memory://"]


def test_port_0_is_resolved_to_the_port_it_serves(served: Served) -> None:
    assert main(["demo", "--port", "0"]) == 0
    [(_, _, port)] = served
    assert 0 < port <= 65535


def test_a_port_in_use_ends_the_command_before_anything_starts(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    assert f"ratewall demo: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert served == []


def test_a_store_it_cannot_reach_is_said_before_it_serves(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    store = f"redis://127.0.0.1:{port}/0"  # nothing listens there any more
    assert main(["demo", "--port", "0", "--store", store]) == 0
    error = capsys.readouterr().err
    assert f"ratewall demo: cannot reach {store} (" in error
    assert "fails open" in error
    assert [s for s, _, _ in served] == [store]
