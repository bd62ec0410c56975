"""The observer hook: what a limiter tells about its own work, for metrics and logs.

Pass an object with these methods as ``observer=`` to :class:`~ratewall.RateLimiter` or
:class:`~ratewall.AsyncRateLimiter`. Every decision leaves through one exit, which calls
:meth:`Observer.on_decision` with it; the stores report each round trip, and the circuit
breaker its transitions. Without an observer (the default) none of this runs: the exit
is built without the call, so an unobserved limiter pays nothing for the hook.

Methods run on the deciding thread (or event loop), inside the decision: keep them short
and never let them raise (an error is logged and the decision stands). Subclass
:class:`BaseObserver` to implement only some of them.
"""

from __future__ import annotations

from typing import Protocol

from .decision import Decision

__all__ = ["BaseObserver", "Observer"]


class Observer(Protocol):
    def on_decision(self, decision: Decision) -> None:
        """A decision, whatever answered it (see :attr:`Decision.source`)."""

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        """One round trip to the store: how long it took, how many decisions it carried
        (a batch), and the error if it failed."""

    def on_breaker(self, opened: bool, error: BaseException | None) -> None:
        """The circuit breaker opened (the store failed repeatedly; ``error`` is the last
        failure) or closed again (the store answered)."""

    def on_error(self, policy: str, error: BaseException) -> None:
        """The store failed for ``policy``, whose failure mode is ``"raise"``: the caller
        gets a :class:`~ratewall.StoreError` instead of a decision."""

    def on_reload(self, error: BaseException | None) -> None:
        """``limiter.reload()`` swapped in a new config (``error`` is ``None``) or rejected
        one (``error`` is the :class:`~ratewall.ConfigError`; the old config stays)."""


class BaseObserver:
    """An :class:`Observer` that ignores everything: subclass it and override what you need."""

    def on_decision(self, decision: Decision) -> None:
        return None

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        return None

    def on_breaker(self, opened: bool, error: BaseException | None) -> None:
        return None

    def on_error(self, policy: str, error: BaseException) -> None:
        return None

    def on_reload(self, error: BaseException | None) -> None:
        return None
