"""The README's framework examples are the files the end-to-end tests run, verbatim."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*_app.py"))


def test_there_are_framework_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {"fastapi_app.py", "flask_app.py", "django_app.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_readme_shows_the_example_verbatim(example: Path) -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    code = example.read_text("utf-8").strip()
    assert f"```python\n{code}\n```" in readme, f"README.md no longer shows {example.name}"
