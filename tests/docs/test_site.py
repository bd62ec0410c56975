"""The documentation site builds in strict mode: a broken link, an unknown anchor, a missing
snippet, an unresolved API reference or any other MkDocs warning fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._configs import ROOT


@pytest.mark.timeout(300)
def test_the_site_builds_without_warnings(tmp_path: Path) -> None:
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert "WARNING" not in built.stderr, built.stderr[-4000:]
    reference = (site / "configuration" / "reference" / "index.html").read_text("utf-8")
    # Generated from the schema at build time, not copied by hand.
    assert "local_cache_size" in reference
    assert "sliding_log" in reference
    assert (site / "config.schema.json").is_file()
    assert "RateLimiter" in (site / "reference" / "api" / "index.html").read_text("utf-8")
