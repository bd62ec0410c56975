"""The exceptions ratewall raises on purpose.

Unknown policy names raise the built-in :class:`KeyError`; a cost that no policy could ever
admit raises :class:`ValueError`. Everything else a user should catch is defined here.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RatewallError", "StoreError"]


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
