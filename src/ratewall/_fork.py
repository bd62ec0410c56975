"""Fork safety, in one place: what a child process must not inherit from its parent.

gunicorn ``--preload``, Celery prefork and ``multiprocessing`` fork a process whose limiter
may already hold connections, a deny cache, leases, a breaker and locks. In the child, each
of those must behave as in a fresh process:

* connections: two processes writing on one socket get each other's replies. The child
  lets go of every inherited socket (the parent keeps using its own) and connects anew;
* leases: units the store granted once would be spent by both processes;
* locks: one held by another thread at the moment of the fork is never released in the
  child;
* queued asyncio calls and futures belong to the parent's event loop.

Objects that hold such things register here (:func:`reset_in_child`) and get their
``_after_fork_in_child()`` called in the child, right after ``os.fork()``, before anything
else runs there. Nothing is checked per call: the hot path pays nothing for this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import weakref
from typing import Any, Protocol

__all__ = ["ForkAware", "abandon", "disown_socket", "disown_transport", "reset_in_child"]


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_REGISTERED: weakref.WeakSet[Any] = weakref.WeakSet()

# Inherited objects the child must neither use nor let the garbage collector finalize (a
# transport's finalizer closes "its" descriptor number, which by then may be another file).
_ORPHANS: list[object] = []


def reset_in_child(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` called in every child forked from now on (for as
    long as ``obj`` lives)."""
    _REGISTERED.add(obj)


def disown_socket(sock: socket.socket) -> None:
    """In a child: stop holding an inherited socket without disturbing the parent's use of
    it. Closing this process's descriptor leaves the parent's open and sends nothing."""
    with contextlib.suppress(OSError):
        sock.close()


def disown_transport(transport: object) -> None:
    """In a child: the same for an asyncio transport of the parent's event loop.

    The transport must not be closed here: that would unregister its socket from the
    parent's epoll instance, which the child shares. Its descriptor is pointed at
    ``/dev/null`` instead (so the server sees the connection end when the parent closes it),
    and the transport is kept from the garbage collector."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            fd = sock.fileno()
            if fd >= 0:
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
    abandon(transport)


def abandon(*objects: object) -> None:
    """In a child: never use ``objects`` (tasks, clients of the parent's event loop) again,
    and keep them from finalizers that would act on the parent's loop or log about it."""
    _ORPHANS.extend(obj for obj in objects if obj is not None)


def _after_fork_in_child() -> None:
    for obj in list(_REGISTERED):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
