"""How long a waiter sleeps before it asks again: waiting mode's arithmetic, with no I/O.

Waiters are not queued anywhere: each one asks the store, and when refused sleeps for the
decision's ``retry_after`` (the time until its request could pass if nobody else took
anything), plus a little random *jitter* so that waiters on many nodes, refused together,
do not all ask again at the same instant. Whoever asks first after that wins; the others
are refused again and sleep again. So waiters are not served in arrival order (not FIFO,
within a process or across nodes); what bounds a waiter's wait is its timeout.

Concurrency slots free when a holder releases, which no ``retry_after`` can foresee (it is
only the time until the earliest lease would expire): slot waiters poll, starting at 5 ms
and backing off to 250 ms, never later than that expiry.
"""

from __future__ import annotations

import random
from typing import Final

__all__ = ["MIN_WAIT", "check_timeout", "rate_wait", "slot_wait"]

#: The shortest sleep between two tries, so that a tiny ``retry_after`` is no busy loop.
MIN_WAIT: Final = 0.001
#: The jitter added to ``retry_after``: up to this fraction of it...
JITTER_FRACTION: Final = 0.1
#: ...and at most this many seconds.
MAX_JITTER: Final = 0.05
_SLOT_FIRST_POLL: Final = 0.005
_SLOT_MAX_POLL: Final = 0.25


def check_timeout(timeout: object) -> float | None:
    """``timeout`` checked: ``None`` (wait as long as it takes) or seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
    return float(timeout)


def rate_wait(retry_after: float | None, left: float | None) -> float | None:
    """Seconds to sleep before asking again after a refusal with ``retry_after``, when
    ``left`` seconds remain before the timeout (``None``: no timeout). ``None``: give up
    now, because the request cannot pass before the timeout."""
    retry = max(retry_after or 0.0, MIN_WAIT)
    if left is not None and retry > left:
        return None
    wait = retry + random.uniform(0.0, min(retry * JITTER_FRACTION, MAX_JITTER))  # noqa: S311 - jitter, not secrecy
    return wait if left is None else min(wait, left)


def slot_wait(retry_after: float | None, attempt: int, left: float | None) -> float | None:
    """Seconds a refused slot waiter sleeps before its ``attempt``-th retry (0-based), or
    ``None`` when no time is left."""
    if left is not None and left <= 0:
        return None
    poll: float = min(_SLOT_MAX_POLL, _SLOT_FIRST_POLL * 2.0 ** min(attempt, 16))
    wait = poll * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy
    if retry_after is not None:
        wait = min(wait, max(retry_after, MIN_WAIT))
    return wait if left is None else min(wait, left)
