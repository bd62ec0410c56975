"""`ratewall demo` without any server binary: it says so and serves the memory store."""

from __future__ import annotations

import argparse

import pytest

from ratewall import demo


def test_without_a_server_binary_it_runs_on_memory_with_one_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[tuple[str, int]] = []

    def serve(store: str, workers: int, host: str, port: int, config: str | None) -> int:
        served.append((store, workers))
        return 0

    monkeypatch.setattr(demo, "find_server", lambda: None)
    monkeypatch.setattr(demo, "_serve", serve)
    args = argparse.Namespace(
        store=None, workers=2, host="127.0.0.1", port=8000, config=None, walkthrough=False
    )
    assert demo.run_demo(args) == 0
    assert served == [("memory://", 1)]
    error = capsys.readouterr().err
    assert "no redis-server or valkey-server found" in error
    assert "ONE worker" in error


def test_a_memory_store_url_also_means_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[str, int]] = []

    def serve(store: str, workers: int, host: str, port: int, config: str | None) -> int:
        served.append((store, workers))
        return 0

    monkeypatch.setattr(demo, "_serve", serve)
    args = argparse.Namespace(
        store="memory://", workers=4, host="127.0.0.1", port=8000, config=None, walkthrough=False
    )
    assert demo.run_demo(args) == 0
    assert served == [("memory://", 1)]
