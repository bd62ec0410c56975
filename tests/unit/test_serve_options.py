"""``ratewall serve``'s event-loop and batch-window options are checked before anything
listens: a bad value is a clear error naming the option."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ratewall.cli import main
from ratewall.errors import ConfigError
from ratewall.service.runner import ServiceOptions, _loop_factory, serve

LIMITS = "policies:\n  p: {limit: 5, window: 60}\n"


@pytest.mark.parametrize("value", ["-1", "1001", "soon"])
def test_a_bad_batch_window_is_a_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "limits.yaml"
    config.write_text(LIMITS)
    assert main(["serve", "--config", str(config), f"--batch-window={value}"]) == 2
    assert "--batch-window" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "source"),
    [({"loop": "trio"}, "--loop"), ({"batch_window": 2.0}, "--batch-window")],
)
def test_bad_options_from_code_are_config_errors(
    options: dict[str, object], source: str, tmp_path: Path
) -> None:
    config = tmp_path / "limits.yaml"
    config.write_text(LIMITS)
    with pytest.raises(ConfigError) as caught:
        serve(ServiceOptions(config=str(config), **options))  # type: ignore[arg-type]
    assert caught.value.source == source


def test_the_asyncio_loop_is_asyncio_and_auto_takes_uvloop_when_installed() -> None:
    assert _loop_factory("asyncio") is None
    try:
        import uvloop
    except ImportError:
        assert _loop_factory("auto") is None
        with pytest.raises(ConfigError, match="pip install uvloop"):
            _loop_factory("uvloop")
    else:
        factory = _loop_factory("auto")
        assert factory is uvloop.new_event_loop
        loop = factory()
        try:
            assert isinstance(loop, asyncio.AbstractEventLoop)
        finally:
            loop.close()
