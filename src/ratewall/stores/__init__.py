"""Stores execute :class:`~ratewall.core.Call` lists: in this process, or in Redis/Valkey."""

from __future__ import annotations

from .memory import MemoryStore
from .redis import AsyncRedisStore, RedisStore, parse_store_url

__all__ = ["AsyncRedisStore", "MemoryStore", "RedisStore", "parse_store_url"]
