"""The pytest plugin, used as a user would: pytest runs of a project of their own (pytester)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ratewall import embedded

from .._timing import STORE_TIMEOUT

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"

CLOCK_AND_LIMITERS = """
from ratewall import Policy

def test_clock_moves_the_limiter(ratewall_limiter, ratewall_clock):
    limiter = ratewall_limiter({"login": (2, 60), "api": Policy(1, "1s", algorithm="gcra")})
    assert [limiter.check("u", "login").allowed for _ in range(3)] == [True, True, False]
    ratewall_clock.advance(60)
    assert limiter.check("u", "login").allowed
    assert limiter.check("u", "api").allowed and not limiter.check("u", "api").allowed

async def test_async_limiter(ratewall_async_limiter, ratewall_clock):
    limiter = ratewall_async_limiter({"login": (1, 10)})
    assert (await limiter.check("u", "login")).allowed
    assert not (await limiter.check("u", "login")).allowed
    ratewall_clock.advance(10)
    assert (await limiter.check("u", "login")).allowed

def test_failing_store(ratewall_failing_store):
    from ratewall import RateLimiter
    closed = RateLimiter({"login": Policy(5, 60, failure_mode="closed")}, ratewall_failing_store)
    opened = RateLimiter({"login": Policy(5, 60, failure_mode="open")}, ratewall_failing_store)
    assert not closed.check("u", "login").allowed
    assert opened.check("u", "login").allowed
    assert ratewall_failing_store.calls == 2
"""

# The limiters take a generous store timeout: on a loaded machine a round trip can exceed
# the 50 ms default, and these tests are about the fixtures, not latency.
SERVER = f"""
from ratewall import Policy, RateLimiter

def test_first(ratewall_store_url, ratewall_server):
    assert ratewall_store_url == ratewall_server.url
    with RateLimiter(
        {{"login": Policy(2, 60)}}, store=ratewall_store_url, timeout={STORE_TIMEOUT}
    ) as limiter:
        assert [limiter.check("u", "login").allowed for _ in range(3)] == [True, True, False]

def test_second_starts_empty(ratewall_store_url):
    with RateLimiter(
        {{"login": Policy(2, 60)}}, store=ratewall_store_url, timeout={STORE_TIMEOUT}
    ) as limiter:
        assert limiter.check("u", "login").remaining == 1
"""


def project(pytester: pytest.Pytester, settings: str = "") -> None:
    """A user's project: pytest-asyncio (installed here) set up as it asks, plus ``settings``."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n" + settings
    )


def test_the_fixtures_are_absent_unless_enabled(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makepyfile(CLOCK_AND_LIMITERS)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*fixture 'ratewall_*' not found*"])


@pytest.mark.parametrize(
    "enable",
    [["-p", "ratewall.pytest_plugin"], ["--ratewall-fixtures"], "ini", "conftest"],
)
def test_each_way_of_enabling_gives_working_fixtures(
    pytester: pytest.Pytester, enable: list[str] | str
) -> None:
    arguments: list[str] = []
    project(pytester, "ratewall_fixtures = true\n" if enable == "ini" else "")
    if enable == "conftest":
        pytester.makeconftest('pytest_plugins = ["ratewall.pytest_plugin"]\n')
    elif isinstance(enable, list):
        arguments += enable
    pytester.makepyfile(CLOCK_AND_LIMITERS)
    result = pytester.runpytest_inprocess(*arguments)
    result.assert_outcomes(passed=3)


@pytest.mark.redis
def test_the_session_server_serves_every_test_an_empty_store(pytester: pytest.Pytester) -> None:
    project(pytester)
    pytester.makepyfile(SERVER)
    result = pytester.runpytest_inprocess("-p", "ratewall.pytest_plugin")
    result.assert_outcomes(passed=2)


def test_without_a_server_binary_the_tests_are_skipped_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "find_server", lambda: None)
    project(pytester)
    pytester.makepyfile(SERVER)
    result = pytester.runpytest_inprocess("-p", "ratewall.pytest_plugin", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no Valkey/Redis server binary found*"])

    required = pytester.runpytest_inprocess(
        "-p", "ratewall.pytest_plugin", "-o", "ratewall_require_server=true"
    )
    required.assert_outcomes(errors=2)
    required.stdout.fnmatch_lines(["*ratewall_require_server is set*"])


@pytest.mark.redis
def test_the_documented_fastapi_example_runs_as_written(pytester: pytest.Pytester) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if "def test_" in block)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_login=example)
    result = pytester.runpytest_inprocess("-p", "ratewall.pytest_plugin")
    result.assert_outcomes(passed=3)
