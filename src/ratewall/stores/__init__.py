"""Where counts live: Redis/Valkey (:class:`RedisStore`, :class:`AsyncRedisStore`), or this
process (:class:`MemoryStore`). The protocols a store implements are in :mod:`.base`."""

from __future__ import annotations

from .base import DEFAULT_TIMEOUT, AsyncStore, LocalStore, Store
from .batching import AsyncRedisStore
from .memory import MemoryStore
from .redis import RedisStore, parse_store_url

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncRedisStore",
    "AsyncStore",
    "LocalStore",
    "MemoryStore",
    "RedisStore",
    "Store",
    "parse_store_url",
]
