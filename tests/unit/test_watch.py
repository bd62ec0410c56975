"""``from_config(path, watch=True)``: real edits of a real file reload the limiter; a bad
edit is logged and changes nothing; ``close()`` stops the watcher; a forked child watches on
its own. Each test waits for the reload with a bounded poll on its condition."""

from __future__ import annotations

import asyncio
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from ratewall import AsyncRateLimiter, ConfigError, RateLimiter
from ratewall.config import load_config
from ratewall.testing import DecisionCapture

DEADLINE = 20.0  # seconds: inotify answers in milliseconds, the fallback recheck in 1 s


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE} s: {what}")
        time.sleep(0.02)


def _write(path: Path, limit: object) -> None:
    """Replace the file as editors do: a new file renamed over the old one."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"api": {"limit": limit, "window": 60}}))
    os.replace(scratch, path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "limits.json"
    _write(path, 2)
    return path


def test_an_edit_reloads_the_policies(config: Path) -> None:
    with RateLimiter.from_config(config, watch=True) as limiter:
        assert [limiter.check("u", "api").allowed for _ in range(3)] == [True, True, False]
        _write(config, 5)
        _wait_for(lambda: limiter.policies["api"].limit == 5, "the new limit in force")
        # State carried over: two of five used, three left.
        assert [limiter.check("u", "api").allowed for _ in range(4)] == [True] * 3 + [False]


def test_an_in_place_edit_reloads_too(config: Path) -> None:
    with RateLimiter.from_config(config, watch=True) as limiter:
        config.write_text(json.dumps({"api": {"limit": 7, "window": 60}}))
        _wait_for(lambda: limiter.policies["api"].limit == 7, "the new limit in force")


def test_a_bad_edit_is_logged_and_the_old_config_stays(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capture = DecisionCapture()
    with RateLimiter.from_config(config, watch=True, observer=capture) as limiter:
        _write(config, "lots")
        _wait_for(lambda: len(capture.reloads) == 1, "the failed reload")
        error = capture.reloads[0]
        assert isinstance(error, ConfigError)
        assert str(config) in str(error)
        assert "limit" in str(error)
        assert str(config) in caplog.text
        assert "the old one stays" in caplog.text
        assert limiter.policies["api"].limit == 2
        _write(config, 3)  # the next good edit still applies
        _wait_for(lambda: limiter.policies["api"].limit == 3, "the fixed config in force")
        assert capture.reloads[1:] == [None]


def test_close_stops_the_watcher(config: Path) -> None:
    limiter = RateLimiter.from_config(config, watch=True)
    watcher = limiter._watcher
    assert watcher is not None
    thread = watcher._thread
    assert thread.is_alive()
    limiter.close()
    assert not thread.is_alive()
    assert limiter._watcher is None


def test_the_async_limiter_reloads_and_stops_on_aclose(config: Path) -> None:
    async def scenario() -> None:
        limiter = AsyncRateLimiter.from_config(config, watch=True)
        assert limiter._watcher is not None
        thread = limiter._watcher._thread
        _write(config, 9)
        deadline = time.monotonic() + DEADLINE
        while limiter.policies["api"].limit != 9:
            assert time.monotonic() < deadline, "the new limit in force"
            await asyncio.sleep(0.02)
        assert (await limiter.check("u", "api")).limit == 9
        await limiter.aclose()
        assert not thread.is_alive()

    asyncio.run(scenario())


def test_watching_needs_a_path(config: Path) -> None:
    with pytest.raises(TypeError, match="watch=True needs the config file's path"):
        RateLimiter.from_config(load_config(config), watch=True)


def test_a_forked_child_watches_on_its_own(config: Path) -> None:
    limiter = RateLimiter.from_config(config, watch=True)
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads: what is tested here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: wait for the edit its parent makes, report, leave
        try:
            deadline = time.monotonic() + DEADLINE
            while limiter.policies["api"].limit != 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            alive = limiter._watcher is not None and limiter._watcher._thread.is_alive()
            os.write(write, f"{limiter.policies['api'].limit} {alive}".encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        _write(config, 4)
        with os.fdopen(read) as reply:
            assert reply.read() == "4 True"
        _wait_for(lambda: limiter.policies["api"].limit == 4, "the parent's reload")
    finally:
        os.waitpid(pid, 0)
        limiter.close()
