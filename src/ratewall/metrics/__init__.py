"""Metrics kept by ratewall itself, exported through Prometheus or OpenTelemetry.

``RateLimiter(..., metrics="prometheus")`` (or the config setting ``"metrics":
"prometheus"``) counts into the process's shared :class:`Metrics` and registers its
collector with prometheus-client's default registry, once per process however many limiters
ask; ``"otel"`` does the same through opentelemetry-api's global meter provider. See
docs/metrics.md for the names, the ``/metrics`` apps and multi-process servers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Final

from ..decision import Decision
from ..observer import Observer
from ._counters import (
    BATCH_BUCKETS,
    BREAKER_STATES,
    ERROR_KINDS,
    LATENCY_BUCKETS,
    OUTCOMES,
    RELOAD_RESULTS,
    Histogram,
    Metrics,
    PolicyCounters,
    Snapshot,
)

__all__ = [
    "BACKENDS",
    "BATCH_BUCKETS",
    "BREAKER_STATES",
    "ERROR_KINDS",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "RELOAD_RESULTS",
    "FanOut",
    "Histogram",
    "Metrics",
    "PolicyCounters",
    "Snapshot",
    "default_metrics",
    "enable",
    "observer_for",
]

#: The values ``metrics=`` (and the config setting) accepts.
BACKENDS: Final = ("prometheus", "otel")

_log = logging.getLogger("ratewall")
_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process's shared :class:`Metrics`: what ``metrics="prometheus"`` and
    ``metrics="otel"`` count into, and what the exporters read by default."""
    global _default  # noqa: PLW0603 - one instance per process, made on first use
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Metrics()
    return _default


def enable(backend: str) -> Metrics:
    """Export the shared :class:`Metrics` through ``backend`` (``"prometheus"`` or
    ``"otel"``), once per process: calling it again does nothing more. Returns them."""
    if backend == "prometheus":
        from .prometheus import register

        register()
    elif backend == "otel":
        from .otel import instrument

        instrument()
    else:
        raise ValueError(
            f"metrics must be one of {', '.join(map(repr, BACKENDS))} or None, got {backend!r}"
        )
    return default_metrics()


class FanOut:
    """An :class:`~ratewall.observer.Observer` that tells each of ``observers`` every event,
    in order; one that raises is logged and the others still hear the event."""

    __slots__ = ("observers",)

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def _failed(self, observer: Observer) -> None:
        _log.exception("ratewall observer %r failed", observer)

    def on_decision(self, decision: Decision) -> None:
        for observer in self.observers:
            try:
                observer.on_decision(decision)
            except Exception:  # noqa: BLE001 - one observer's bug must not hide the event
                self._failed(observer)

    def on_store_call(self, seconds: float, calls: int, error: BaseException | None) -> None:
        for observer in self.observers:
            try:
                observer.on_store_call(seconds, calls, error)
            except Exception:  # noqa: BLE001 - as in on_decision
                self._failed(observer)

    def on_breaker(self, opened: bool, error: BaseException | None) -> None:
        for observer in self.observers:
            try:
                observer.on_breaker(opened, error)
            except Exception:  # noqa: BLE001 - as in on_decision
                self._failed(observer)

    def on_error(self, policy: str, error: BaseException) -> None:
        for observer in self.observers:
            try:
                observer.on_error(policy, error)
            except Exception:  # noqa: BLE001 - as in on_decision
                self._failed(observer)

    def on_reload(self, error: BaseException | None) -> None:
        for observer in self.observers:
            try:
                observer.on_reload(error)
            except Exception:  # noqa: BLE001 - as in on_decision
                self._failed(observer)


def observer_for(
    metrics: str | None, observer: Observer | None
) -> tuple[Observer | None, Metrics | None]:
    """What a limiter built with ``metrics=`` and ``observer=`` observes with, and the
    :class:`Metrics` it counts into (``None`` without ``metrics``)."""
    if metrics is None:
        return observer, None
    counters = enable(metrics)
    if observer is None:
        return counters, counters
    return FanOut((counters, observer)), counters
