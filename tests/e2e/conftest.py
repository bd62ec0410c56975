"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One HTTP client for the test (creating one costs tens of milliseconds)."""
    with httpx.Client(timeout=10.0) as client:
        yield client
