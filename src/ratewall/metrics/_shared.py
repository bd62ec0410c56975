"""Totals across the worker processes of one server (gunicorn, uvicorn ``--workers``).

A scrape reaches one worker, but each worker counts its own decisions. With
``PROMETHEUS_MULTIPROC_DIR`` set (the variable prometheus-client's own multi-process mode
uses; ratewall's files sit beside its ``*.db`` files and neither reads the other's), every
process that exports ratewall's metrics writes its counters to ``ratewall_<pid>.json`` in
that directory every :data:`PUBLISH_EVERY` seconds and when it exits, and a scrape sums all
the files (the scraped worker writes its own first, so its part is exact). Counters of
workers that exited stay in the sum, as counters must; empty the directory when the server
starts, as prometheus-client asks. A worker killed with SIGKILL loses at most its last
:data:`PUBLISH_EVERY` seconds of counts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Final

from ._counters import Metrics, Snapshot

__all__ = ["ENVIRONMENT", "PUBLISH_EVERY", "directory", "publish", "start_publishing", "totals"]

ENVIRONMENT: Final = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY: Final = 1.0
_PREFIX: Final = "ratewall_"
_log = logging.getLogger("ratewall")


def directory() -> Path | None:
    """Where worker processes share their counters, or ``None`` in single-process mode."""
    value = os.environ.get(ENVIRONMENT)
    return Path(value) if value else None


def publish(metrics: Metrics, where: Path) -> None:
    """Write this process's counters to its file in ``where``, atomically (a reader sees the
    old file or the new one, never half of one)."""
    target = where / f"{_PREFIX}{os.getpid()}.json"
    scratch = where / f".{_PREFIX}{os.getpid()}.json.tmp"
    scratch.write_text(json.dumps(metrics.snapshot().to_json()))
    os.replace(scratch, target)


def totals(metrics: Metrics) -> Snapshot:
    """``metrics``' counts, summed over every process of the server in multi-process mode."""
    where = directory()
    if where is None:
        return metrics.snapshot()
    publish(metrics, where)
    total = Snapshot()
    for path in sorted(where.glob(f"{_PREFIX}*.json")):
        try:
            total.add(Snapshot.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as error:
            _log.warning("ratewall: skipping unreadable metrics file %s: %s", path, error)
    return total


class _Publisher:
    """A daemon thread that publishes one process's counters every ``every`` seconds."""

    def __init__(self, metrics: Metrics, where: Path, every: float) -> None:
        self.metrics = metrics
        self.where = where
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ratewall-metrics", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.publish()

    def publish(self) -> None:
        try:
            publish(self.metrics, self.where)
        except OSError as error:
            _log.warning("ratewall: cannot publish metrics to %s: %s", self.where, error)


_publisher: _Publisher | None = None
_lock = threading.Lock()


def start_publishing(metrics: Metrics, every: float = PUBLISH_EVERY) -> bool:
    """Publish ``metrics`` from this process (and from every child it forks) in
    multi-process mode; ``False``, doing nothing, in single-process mode."""
    global _publisher  # noqa: PLW0603 - one publisher per process
    where = directory()
    if where is None:
        return False
    with _lock:
        if _publisher is None or _publisher.metrics is not metrics:
            if _publisher is not None:
                _publisher.stop.set()
            _publisher = _Publisher(metrics, where, every)
            _publisher.publish()
    return True


def _at_exit() -> None:
    if _publisher is not None:
        _publisher.stop.set()
        _publisher.publish()


def _restart_in_child() -> None:
    """A forked child has no publisher thread (threads do not survive fork) and a pid of
    its own: it starts its own publisher, for counters that start from zero (see
    :class:`Metrics`)."""
    global _publisher, _lock  # noqa: PLW0603 - the child's own
    _lock = threading.Lock()
    parent = _publisher
    _publisher = None
    if parent is not None:
        with contextlib.suppress(OSError):
            start_publishing(parent.metrics, parent.every)


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_restart_in_child)
