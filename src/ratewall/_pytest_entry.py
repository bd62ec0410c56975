"""ratewall's ``pytest11`` entry point: declares the settings that turn the fixtures of
:mod:`ratewall.pytest_plugin` on, and nothing else. Installing ratewall must not change
anybody's test run, so the fixtures stay out until a project asks for them."""

from __future__ import annotations

import pytest

PLUGIN = "ratewall.pytest_plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ratewall")
    group.addoption(
        "--ratewall-fixtures",
        action="store_true",
        default=False,
        help=f"enable ratewall's fixtures ({PLUGIN}) for this run",
    )
    parser.addini(
        "ratewall_fixtures",
        type="bool",
        default=False,
        help=f"enable ratewall's fixtures ({PLUGIN})",
    )
    parser.addini(
        "ratewall_require_server",
        type="bool",
        default=False,
        help="fail, instead of skip, tests using ratewall_server when no binary is found",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("ratewall_fixtures") or config.getini("ratewall_fixtures"):
        config.pluginmanager.import_plugin(PLUGIN)
