"""The code blocks of the documentation site (docs/**/*.md), with their test markers: see
tests/docs/test_blocks.py for what each marker means."""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass
from functools import cache

from ._configs import ROOT

DOCS = ROOT / "docs"
CONFIG_LANGUAGES = ("yaml", "json", "toml")
SHOWN_ONLY = ("console", "sh", "bash", "text", "ini", "")
MARKERS = ("compile", "continue", "not-config", "snippet")
SEED_URL = "redis://127.0.0.1:6379/0"

FENCE = re.compile(
    r"^(?P<indent> *)```(?P<language>[\w+-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)
MARKER = re.compile(r"<!-- test: ([\w-]+)[^>]*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to docs/
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


@cache
def all_blocks() -> tuple[Block, ...]:
    found: list[Block] = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text("utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            kind = marker[1] if marker else None
            indent = len(match["indent"])
            code = "\n".join(row[indent:] for row in match["code"].split("\n"))
            found.append(
                Block(
                    str(page.relative_to(DOCS)),
                    line,
                    match["language"].lower(),
                    code,
                    "snippet" if code.lstrip().startswith("--8<--") else kind,
                )
            )
    return tuple(found)


def python_blocks() -> list[Block]:
    """Python blocks written in the page (included snippets are docs/examples/*.py, which the
    end-to-end tests run)."""
    return [
        block
        for block in all_blocks()
        if block.language in ("python", "py") and block.marker != "snippet"
    ]


def config_blocks() -> list[Block]:
    return [
        block
        for block in all_blocks()
        if block.language in CONFIG_LANGUAGES and block.marker != "not-config"
    ]


def unbound_names(code: str, where: str) -> set[str]:
    """Names the code reads and never binds, imports or gets from builtins."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, where, "exec", flags=flags)
    bound: set[str] = set(dir(builtins))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound
