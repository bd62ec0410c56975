"""``from_config(path, watch=True)``: reload a limiter when its config file changes.

A daemon thread watches the file's directory with ``watchfiles`` (the ``ratewall[watch]``
extra) rather than the file itself: editors and deployment tools replace a file by writing a
new one and renaming it over the old (a Kubernetes ConfigMap swaps a symlink), which ends a
watch on the file. Any event in the directory, and a timeout every :data:`RECHECK_SECONDS`
(which also covers an edit made before the watch was in place), leads to one read of the
config (a few kilobytes); the limiter reloads only when its bytes changed.

A reload goes through ``limiter.reload``: a file that fails to parse or validate is logged
(``ConfigError`` text: file, field, reason) and counted as a failed reload, and the old
config stays. The thread never raises. ``close()`` stops it. A forked child (gunicorn
``--preload`` workers) starts a watcher of its own: threads do not survive ``fork()``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ._fork import reset_in_child
from .errors import ConfigError

__all__ = ["RECHECK_SECONDS", "ConfigWatcher"]

#: How often the file is looked at even when no event came (seconds).
RECHECK_SECONDS: Final = 1.0
# Events within this many milliseconds are one change (an editor's write, rename and chmod).
_DEBOUNCE_MS: Final = 100
_log = logging.getLogger("ratewall")


def _content(path: Path) -> bytes | None:
    """The file's bytes (through symlinks: a swapped ConfigMap link counts), ``None`` while
    it is missing or unreadable (mid-replace). Bytes, not a modification time: two edits
    within the file system's timestamp granularity (a few ms) would look like one."""
    try:
        return path.read_bytes()
    except OSError:
        return None


class ConfigWatcher:
    """Calls ``reload(path)`` on a thread of its own each time the file at ``path`` changes,
    until :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], reload: Callable[[Path], None]) -> None:
        try:
            import watchfiles  # noqa: F401 - checked here, where the user asked for it
        except ImportError:
            raise ImportError(
                "watch=True needs the watchfiles package: pip install 'ratewall[watch]'"
            ) from None
        self.path = Path(path).absolute()
        self._reload = reload
        self._closed = False
        self._start(_content(self.path))
        reset_in_child(self)

    def _start(self, seen: bytes | None) -> None:
        """Watch on a new thread, for changes from ``seen``."""
        self._stop = threading.Event()
        self._seen = seen
        self._thread = threading.Thread(
            target=self._run,
            args=(self._stop,),
            name=f"ratewall config watcher ({self.path.name})",
            daemon=True,
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        from watchfiles import watch

        try:
            for _ in watch(
                self.path.parent,
                debounce=_DEBOUNCE_MS,
                stop_event=stop,
                rust_timeout=int(RECHECK_SECONDS * 1000),
                yield_on_timeout=True,
                recursive=False,
                raise_interrupt=False,
            ):
                if stop.is_set():
                    return
                self._check()
        except Exception:  # noqa: BLE001 - a watcher's failure must not reach the application
            if not stop.is_set():
                _log.exception("ratewall: stopped watching %s for changes", self.path)

    def _check(self) -> None:
        seen = _content(self.path)
        if seen is None or seen == self._seen:  # missing mid-replace, or unchanged
            return
        self._seen = seen
        try:
            self._reload(self.path)
        except ConfigError:
            return  # reload() logged it and counted it; the old config stays
        except Exception:  # noqa: BLE001 - same: log, keep the old config, keep watching
            _log.exception("ratewall: reloading %s failed; the old config stays", self.path)

    def close(self) -> None:
        """Stop watching (within a step of watchfiles' loop, 50 ms)."""
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _after_fork_in_child(self) -> None:
        if not self._closed:  # from what the parent last loaded: an edit since then counts
            self._start(self._seen)
