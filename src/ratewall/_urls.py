"""The store URL schemes ratewall understands (one list for the config and the stores)."""

from __future__ import annotations

from typing import Final

__all__ = ["STORE_SCHEMES"]

STORE_SCHEMES: Final = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "valkey",
    "valkeys",
    "redis+cluster",
    "redis+sentinel",
)
