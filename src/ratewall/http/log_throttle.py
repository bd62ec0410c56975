"""Failure logging that a flood of bad requests cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Final

__all__ = ["LogThrottle", "logger"]

logger = logging.getLogger("ratewall.http")


class LogThrottle:
    """Logs each kind of message at most once per ``interval`` seconds; the next message of
    that kind says how many were suppressed meanwhile. Thread-safe; never raises."""

    _MAX_KINDS: Final = 1024

    def __init__(
        self,
        log: logging.Logger = logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = log
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def log(
        self,
        level: int,
        kind: Hashable,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` unless a message of ``kind`` was logged within the
        interval; returns whether it was logged."""
        try:
            now = self._clock()
            with self._lock:
                last = self._seen.get(kind)
                if last is not None and now - last[0] < self.interval:
                    self._seen[kind] = (last[0], last[1] + 1)
                    return False
                if len(self._seen) >= self._MAX_KINDS:
                    self._seen.clear()
                self._seen[kind] = (now, 0)
            suppressed = last[1] if last is not None else 0
            if suppressed:
                message += " (%d similar messages suppressed in the last %.0f s)"
                args = (*args, suppressed, self.interval)
            self.logger.log(level, message, *args, exc_info=exc_info)
        except Exception:  # noqa: BLE001 - logging must never be what breaks a request
            return False
        return True
