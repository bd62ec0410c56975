"""The README's code blocks, and the claims in it that are cheap to check: its framework
examples are the files the end-to-end tests run, verbatim; its Python blocks compile and
define every name they use; its config examples load; the defaults it states are the code's.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ratewall import Policy, RateLimiter
from ratewall.config import DEFAULT_TIMEOUT, parse_config

from ..docs._blocks import unbound_names

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*_app.py"))


def readme() -> str:
    return README.read_text("utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", readme(), re.MULTILINE | re.DOTALL)


def test_there_are_framework_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {"fastapi_app.py", "flask_app.py", "django_app.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_readme_shows_the_example_verbatim(example: Path) -> None:
    code = example.read_text("utf-8").strip()
    assert f"```python\n{code}\n```" in readme(), f"README.md no longer shows {example.name}"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_python_block_compiles_and_defines_what_it_uses(index: int) -> None:
    code = blocks("python")[index]
    # The ASGI quickstart wraps the reader's own `app`: the one name a block may take as given.
    assert unbound_names(code, "README.md") <= {"app"}, code


def test_the_config_examples_load_together() -> None:
    """The long-form example and the routes example form one valid config file: every
    policy a route names is defined."""
    merged: dict[str, Any] = {}
    for block in blocks("yaml"):
        merged.update(yaml.safe_load(block))
    assert {"policies", "routes"} <= set(merged)
    config = parse_config(merged, source="README.md")
    assert config.routes


def test_the_readme_cites_no_document_users_do_not_have() -> None:
    assert not re.search(r"\bSPEC\b|§", readme())


def test_the_defaults_the_readme_states_are_the_codes() -> None:
    text = readme()
    assert "**The store is `memory://` unless you name one**" in text
    assert inspect.signature(RateLimiter).parameters["store"].default == "memory://"
    assert "**A policy's failure mode is `raise` unless you set one.**" in text
    assert Policy(limit=1, window=1).failure_mode == "raise"
    assert "no answer within the 50 ms timeout" in text
    assert DEFAULT_TIMEOUT == 0.05
