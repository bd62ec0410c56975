"""Every code block of the documentation site is executed, compiled or loaded by a test.

How a block is tested is decided by its language, and can be changed by an HTML comment on
the line just before its fence (invisible on the site):

- ``python``: run, in a fresh namespace inside an event loop (top-level ``await`` works),
  in a directory holding the ``limits.yaml`` and ``limits.json`` the docs refer to. A block
  that names ``redis://127.0.0.1:6379/0`` runs against a real Redis/Valkey server started
  by the test session (the URL is swapped for the server's). Limiters left in the namespace
  are closed. ``<!-- test: compile -->`` instead only compiles it and checks that it binds
  every name it reads (for snippets that need a whole project, such as Django settings);
  ``<!-- test: continue -->`` runs it after the page's previous python block, in the same
  namespace.
- Every ``python`` block, run or not, is also type-checked by mypy (not strict), so a wrong
  argument to a ratewall API fails even in a block no test can run.
- ``yaml``, ``json``, ``toml``: a config file, which must pass the JSON Schema and the loader
  (tests/docs/test_schema.py). ``<!-- test: not-config -->`` marks other files (Envoy's,
  an editor's settings), which must still parse.
- ``console``, ``sh``, ``bash``, ``text``, ``ini``: shown, not run.
- Snippets included with ``--8<-- "examples/..."`` are docs/examples/*.py, which the
  end-to-end tests run under real servers.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ratewall import AsyncRateLimiter, RateLimiter

from ._blocks import (
    CONFIG_LANGUAGES,
    MARKERS,
    SEED_URL,
    SHOWN_ONLY,
    Block,
    all_blocks,
    config_blocks,
    python_blocks,
    unbound_names,
)
from ._configs import decode

# The files the docs' Python examples open, as a reader following them would have written.
LIMITS_YAML = """\
policies:
  login: {limit: 5, window: 1m}
  login_ip: {limit: 20, window: 1m, algorithm: sliding_window}
  api: {limit: 100, window: 1s, algorithm: gcra, burst: 200, failure_mode: open}
  search: {limit: 30, window: 1m, shadow: true}
routes:
  - match: POST /login
    identity: header:X-User-ID
    policies: [login, {policy: login_ip, identity: ip}]
"""
LIMITS_JSON = {"login": {"limit": 5, "window": 60}, "api": {"limit": 100, "window": 60}}


def test_every_block_has_a_known_language_and_marker() -> None:
    known = ("python", "py", "pycon", *CONFIG_LANGUAGES, *SHOWN_ONLY)
    for block in all_blocks():
        assert block.language in known, f"{block}: no test knows how to check {block.language!r}"
        assert block.marker in (None, *MARKERS), f"{block}: unknown marker {block.marker!r}"


def test_the_docs_have_blocks_of_every_kind() -> None:
    assert len(python_blocks()) >= 20
    assert len(config_blocks()) >= 5


@pytest.mark.parametrize(
    "block",
    [block for block in all_blocks() if block.marker == "not-config"],
    ids=str,
)
def test_other_files_parse(block: Block) -> None:
    decode(block.code, block.language)


def runs(block: Block) -> bool:
    return block.marker != "compile"


def programs() -> list[list[Block]]:
    """The python blocks to run, each with the blocks it continues (in order)."""
    result: list[list[Block]] = []
    previous: dict[str, list[Block]] = {}
    for block in python_blocks():
        if not runs(block):
            continue
        chain = [*previous.get(block.page, []), block] if block.marker == "continue" else [block]
        previous[block.page] = chain
        result.append(chain)
    return result


@pytest.mark.parametrize("block", python_blocks(), ids=str)
def test_every_python_block_compiles_and_binds_what_it_reads(block: Block) -> None:
    chain = next((chain for chain in programs() if chain[-1] == block), [block])
    code = "\n".join(part.code for part in chain)
    assert unbound_names(code, str(block)) == set(), str(block)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "limits.yaml").write_text(LIMITS_YAML, "utf-8")
    (tmp_path / "limits.json").write_text(json.dumps(LIMITS_JSON), "utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def execute(chain: list[Block], store_url: str | None) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_block"}

    async def main() -> None:
        try:
            for block in chain:
                code = block.code if store_url is None else block.code.replace(SEED_URL, store_url)
                compiled = compile(code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(compiled, namespace)
                if asyncio.iscoroutine(result):
                    await result
        finally:
            for value in list(namespace.values()):
                if isinstance(value, AsyncRateLimiter):
                    await value.aclose()
                elif isinstance(value, RateLimiter):
                    value.close()

    asyncio.run(main())


def needs_redis(chain: list[Block]) -> bool:
    return any(SEED_URL in block.code for block in chain)


@pytest.mark.parametrize(
    "chain",
    [chain for chain in programs() if not needs_redis(chain)],
    ids=lambda chain: str(chain[-1]),
)
@pytest.mark.usefixtures("workdir")
def test_python_block_runs(chain: list[Block]) -> None:
    execute(chain, None)


@pytest.mark.parametrize(
    "chain", [chain for chain in programs() if needs_redis(chain)], ids=lambda chain: str(chain[-1])
)
@pytest.mark.usefixtures("workdir")
def test_python_block_runs_against_a_real_server(chain: list[Block], redis_url: str) -> None:
    execute(chain, redis_url)


def as_module(chain: list[Block]) -> str:
    """A chain of blocks as one module mypy can check: code that awaits at top level (as
    ``python -m asyncio`` allows) goes into an async function."""
    code = "\n".join(block.code for block in chain)
    try:
        compile(code, str(chain[-1]), "exec")
    except SyntaxError:  # top-level await or async with
        body = "\n".join(f"    {line}" if line else "" for line in code.splitlines())
        return f"async def _block() -> None:\n{body}\n"
    return code


@pytest.mark.timeout(300)
def test_every_python_block_type_checks(tmp_path: Path) -> None:
    """mypy (not strict: snippets need not annotate everything) over every python block, run
    or compile-only, so a wrong argument to a ratewall API fails here even in a block that
    cannot run in a test (a Django project, a running service, your certificates)."""
    chains = programs() + [[block] for block in python_blocks() if not runs(block)]
    for index, chain in enumerate(chains):
        (tmp_path / f"block_{index}.py").write_text(as_module(chain), "utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\ncheck_untyped_defs = True\n")
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".cache"),
            *sorted(map(str, tmp_path.glob("block_*.py"))),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    names = {f"block_{index}.py": str(chain[-1]) for index, chain in enumerate(chains)}
    report = re.sub(r"[\w/.-]*(block_\d+\.py)", lambda found: names[found[1]], checked.stdout)
    assert checked.returncode == 0, report
