"""The answer to one rate-limit question."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Decision", "Source"]

#: Where an answer came from (:attr:`Decision.source`): the store (Redis/Valkey's script,
#: or the memory store), this node's deny cache (a refusal the store already gave), units
#: this node leased from the store earlier (``Policy.lease``), the policy's failure mode, the
#: policy's ``exempt`` list (always allowed, nothing stored), or this process's share of the
#: limit while the store fails (``failure_mode="local"``).
Source = Literal["store", "cache", "lease", "failure", "exempt", "local"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the limiter decided for one request.

    ``remaining`` is the whole units still available right after this decision;
    ``reset_after`` the seconds until the state is back to full (window end, bucket full);
    ``retry_after`` is ``None`` when allowed, else the seconds until the same request (same
    cost) could pass if nobody else consumed anything meanwhile.

    ``degraded`` is true when the store failed and the policy's ``failure_mode`` ("open",
    "closed" or "local") produced this answer instead of the store.

    ``shadowed`` is true exactly when the request passed only because its policy is in
    shadow mode (``Policy(shadow=True)``): the policy would have refused it, and counted it
    as refused, but lets it through.

    ``source`` says where the answer came from: ``"store"``, ``"cache"`` (this node already
    knew the store refuses), ``"lease"`` (units this node leased earlier), ``"failure"``
    (the failure mode "open" or "closed"), ``"local"`` (this process's share of the limit,
    failure mode "local"; ``limit`` is then the share) or ``"exempt"`` (an exempt
    identity). It describes the path, not the answer, so it takes no part in comparisons:
    the same decision reached two ways is equal.
    """

    allowed: bool
    policy: str
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None
    degraded: bool = False
    shadowed: bool = False
    source: Source = field(default="store", compare=False)

    def __bool__(self) -> bool:
        return self.allowed
