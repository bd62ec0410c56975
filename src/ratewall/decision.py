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
