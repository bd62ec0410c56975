"""The answer to one rate-limit question."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the limiter decided for one request.

    ``remaining`` is the whole units still available right after this decision;
    ``reset_after`` the seconds until the state is back to full (window end, bucket full);
    ``retry_after`` is ``None`` when allowed, else the seconds until the same request (same
    cost) could pass if nobody else consumed anything meanwhile.

    ``degraded`` is true when the store failed and the policy's ``failure_mode`` ("open" or
    "closed") produced this answer instead of the store.
    """

    allowed: bool
    policy: str
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None
    degraded: bool = False

    def __bool__(self) -> bool:
        return self.allowed


_FIELDS = ("allowed", "policy", "limit", "remaining", "reset_after", "retry_after", "degraded")
_SETTERS = tuple(Decision.__dict__[name].__set__ for name in _FIELDS)


def make_decision(
    allowed: bool,
    policy: str,
    limit: int,
    remaining: int,
    reset_after: float,
    retry_after: float | None,
) -> Decision:
    """A non-degraded :class:`Decision`, built twice as fast as through the frozen
    dataclass' ``__init__`` (the hot path makes one per request). Equal in every way."""
    decision = object.__new__(Decision)
    s_allowed, s_policy, s_limit, s_remaining, s_reset, s_retry, s_degraded = _SETTERS
    s_allowed(decision, allowed)
    s_policy(decision, policy)
    s_limit(decision, limit)
    s_remaining(decision, remaining)
    s_reset(decision, reset_after)
    s_retry(decision, retry_after)
    s_degraded(decision, False)
    return decision
