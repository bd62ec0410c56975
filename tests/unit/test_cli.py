"""The ``ratewall`` command line, called in-process (and once as ``python -m ratewall``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from ratewall.cli import main
from ratewall.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SEED = CONFIGS / "good" / "seed.json"


def test_check_config_prints_policies_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SEED)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"OK: {SEED} defines 1 policy",
        "login: 5 per 1m (fixed_window)",
        "store = (not set: the program chooses, memory:// by default)",
        "key_prefix = ratelimit",
        "local_cache_size = 10000",
        "timeout = 50ms",
    ]
    assert err == ""


def test_check_config_long_form(capsys: pytest.CaptureFixture[str]) -> None:
    path = CONFIGS / "good" / "long_form.yaml"
    assert main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"OK: {path} defines 5 policies"
    assert "login: 5 per 1m (fixed_window, fails open)" in lines
    assert "api: 100 per 1m (token_bucket, burst 150, fails open, leases of 10)" in lines
    assert "upload: 10 per 1h (gcra)" in lines
    assert "store = redis://127.0.0.1:6379/0" in lines
    assert "key_prefix = myapp:rl" in lines
    assert "local_cache_size = 500" in lines
    assert "timeout = 100ms" in lines


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("limit_zero.json", "policies.login.limit"),
        ("window_words.yaml", "policies.login.window"),
        ("failure_mode_maybe.toml", "failure_mode"),
        ("syntax_error.yaml", "invalid YAML at line 3"),
        ("limits.ini", "unsupported file type"),
    ],
)
def test_check_config_reports_errors_on_stderr(
    capsys: pytest.CaptureFixture[str], name: str, field: str
) -> None:
    path = CONFIGS / "bad" / name
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ratewall: error: {path}: {field}")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == f"ratewall: error: {path}: no such file; check the path\n"


def test_check_config_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 2
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ratewall")


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-everything"]) == 2
    assert "invalid choice: 'serve-everything'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ratewall {version('ratewall')}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "check-config" in out
    assert "demo" in out


# --- demo: the CLI only parses; ratewall.demo.run_demo does the work --------------------------


def install_demo(monkeypatch: pytest.MonkeyPatch, run_demo: Callable[..., int]) -> None:
    """Stand in for ratewall.demo (written separately): the CLI only parses and delegates."""
    module = types.ModuleType("ratewall.demo")
    module.run_demo = run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ratewall.demo", module)


@pytest.fixture
def demo_calls(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """The arguments each run_demo call received."""
    calls: list[argparse.Namespace] = []

    def run_demo(args: argparse.Namespace) -> int:
        calls.append(args)
        return 0

    install_demo(monkeypatch, run_demo)
    return calls


def test_demo_defaults(demo_calls: list[argparse.Namespace]) -> None:
    assert main(["demo"]) == 0
    (args,) = demo_calls
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 2)
    assert args.store is None
    assert args.config is None
    assert args.walkthrough is False


def test_demo_options(demo_calls: list[argparse.Namespace]) -> None:
    argv = [
        "demo",
        "--host=0.0.0.0",
        "--port=9000",
        "--workers=4",
        "--store=redis://127.0.0.1:6379/0",
        "--config=limits.yaml",
        "--walkthrough",
    ]
    assert main(argv) == 0
    (args,) = demo_calls
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9000, 4)
    assert args.store == "redis://127.0.0.1:6379/0"
    assert args.config == "limits.yaml"
    assert args.walkthrough is True


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--port=70000", "port must be 0-65535"),
        ("--port=http", "expected a whole number, got 'http'"),
        ("--workers=0", "need at least 1 worker"),
        ("--store=http://127.0.0.1", "unsupported scheme; expected one of memory://"),
    ],
)
def test_demo_rejects_bad_options(
    demo_calls: list[argparse.Namespace],
    capsys: pytest.CaptureFixture[str],
    option: str,
    message: str,
) -> None:
    assert main(["demo", option]) == 2
    assert message in capsys.readouterr().err
    assert demo_calls == []


def test_demo_exit_status_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    install_demo(monkeypatch, lambda args: 3)
    assert main(["demo"]) == 3


def test_demo_config_error_is_reported_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_demo(args: argparse.Namespace) -> int:
        raise ConfigError("must be a positive integer, got 0", source=args.config, field="x")

    install_demo(monkeypatch, run_demo)
    assert main(["demo", "--config", "limits.json"]) == 2
    err = capsys.readouterr().err
    assert err == "ratewall: error: limits.json: x: must be a positive integer, got 0\n"


def test_demo_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_demo(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    install_demo(monkeypatch, run_demo)
    assert main(["demo"]) == 130


# --- as a program -----------------------------------------------------------------------------


def test_python_dash_m_ratewall_check_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratewall", "check-config", str(SEED)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "login: 5 per 1m (fixed_window)" in result.stdout.splitlines()
    assert result.stderr == ""


@pytest.mark.parametrize("lines_read", [0, 1])
def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path: Path, lines_read: int) -> None:
    """``ratewall check-config big.json | head``: more output than a pipe holds (64 KiB), so
    the command is still writing when the reader closes its end."""
    config = tmp_path / "big.json"
    config.write_text(
        json.dumps({f"policy_{n:05d}": {"limit": n + 1, "window": 60} for n in range(4000)})
    )
    with subprocess.Popen(
        [sys.executable, "-m", "ratewall", "check-config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as command:
        assert command.stdout is not None
        assert command.stderr is not None
        for _ in range(lines_read):
            assert command.stdout.readline()
        command.stdout.close()  # as `head` does once it has its lines
        errors = command.stderr.read().decode()
        assert command.wait(timeout=60) == 141
    assert errors == ""
