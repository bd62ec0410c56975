"""ratewall: an exact distributed rate limiter for Python services, on Redis/Valkey or in
memory.

>>> import ratewall
>>> limiter = ratewall.RateLimiter({"login": ratewall.Policy(limit=5, window=60)})
>>> limiter.check("user_123", "login").allowed
True
"""

from __future__ import annotations

from .decision import Decision
from .errors import ConfigError, RateLimitExceeded, RatewallError, StoreError
from .limiter import AsyncRateLimiter, RateLimiter
from .policy import ALGORITHMS, CONCURRENCY, Policy
from .slots import AsyncSlot, Slot

__all__ = [
    "ALGORITHMS",
    "CONCURRENCY",
    "AsyncRateLimiter",
    "AsyncSlot",
    "ConfigError",
    "Decision",
    "Policy",
    "RateLimitExceeded",
    "RateLimiter",
    "RatewallError",
    "Slot",
    "StoreError",
]

__version__ = "0.1.0"
