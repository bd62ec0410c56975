"""The exceptions ratewall raises on purpose.

Unknown policy names raise the built-in :class:`KeyError`; a cost that no policy could ever
admit raises :class:`ValueError`. Everything else a user should catch is defined here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .decision import Decision

__all__ = ["ConfigError", "RateLimitExceeded", "RatewallError", "StoreError"]


class RatewallError(Exception):
    """Base class of every error ratewall defines."""


class ConfigError(RatewallError, ValueError):
    """A configuration is invalid.

    ``source`` is the file (or ``"<policy>"`` for values given in code), ``field`` the dotted
    path of the offending field (``policies.login.limit``), ``reason`` what is wrong with it.

    A config file is checked whole: the error raised is the first problem found, and
    ``errors`` holds every problem found (itself included), sorted by field path.
    """

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        self.errors: tuple[ConfigError, ...] = (self,)
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class StoreError(RatewallError):
    """The store (Redis/Valkey) could not answer in time or answered with an error.

    Raised only for policies whose ``failure_mode`` is ``"raise"``; the original exception is
    chained as ``__cause__``.
    """


class RateLimitExceeded(RatewallError):  # noqa: N818 - the name users know from other limiters
    """A call decorated with ``limiter.limited(...)`` was refused (after waiting, if it was
    told to wait); the function was not called. ``decision`` is the refusing
    :class:`~ratewall.Decision` (its ``retry_after`` says when to try again)."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        wait = decision.retry_after
        super().__init__(
            f"rate limit of policy {decision.policy!r} exceeded"
            + (f"; retry in {wait:.3f}s" if wait is not None else "")
        )
