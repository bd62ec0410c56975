"""Store timeouts for tests on real server processes, sized for a loaded CI machine.

On a loaded two-core machine (load averages of 10 to 17 when several suites run at once)
the test process or the server can be descheduled for tens of milliseconds in the middle of
one round trip. Under the 50 ms default store timeout (``stores.base.DEFAULT_TIMEOUT``) that
turns a decision the store should have made into a failure-mode decision, and the test
fails for a reason that is not its subject. Hence two kinds of limiter in tests:

* a test whose subject is not the timeout (counts, replies, recovery from a flush or a
  restart, a dead server that refuses at once) gives its limiter ``STORE_TIMEOUT``: no
  scheduling hiccup comes near it;
* a test whose subject is the deadline (a frozen or silent server, a decision waiting on
  it) gives its limiter ``DEADLINE_TIMEOUT`` and asserts ``deadline_bound(timeout)``: the
  promise the docs make, the timeout plus at most 50 % slack. The timeout is long enough
  that a hiccup fits inside the slack, and short enough that the test stays quick; a
  decision that waited twice (issue 19, item 9) still exceeds the bound.

A deadline test times its decision with ``unloaded_time`` rather than ``time.perf_counter``:
the same clock, less the time the measuring thread spent runnable but waiting for a CPU.
Under load averages of 10 and more one such wait reached 0.55 s (20 async checks against a
frozen server took 1.05 s at a 0.5 s timeout), beyond any slack that still proves a bound;
it is time the code under test cannot control. Time the limiter spends blocked (waiting for
its deadline, a server, a lock) or computing still counts, so a decision that waits twice
the timeout, or a deadline per step, still fails the bound.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

# Generous: far beyond any round trip to a local server, however loaded the machine.
STORE_TIMEOUT: Final = 5.0
# For tests that wait on a frozen or silent server on purpose: each such wait costs this.
DEADLINE_TIMEOUT: Final = 0.5
# A decision is answered within the timeout plus this share of it (the stated slack).
DEADLINE_SLACK: Final = 0.5


def deadline_bound(timeout: float = DEADLINE_TIMEOUT) -> float:
    """The most a decision may take with store timeout ``timeout``: timeout + 50 %."""
    return timeout * (1 + DEADLINE_SLACK)


# Linux: "<ns on a CPU> <ns runnable, waiting for a CPU> <timeslices>" for this thread.
_SCHEDSTAT: Final = Path("/proc/thread-self/schedstat")


def _waiting_for_cpu() -> float:
    """Seconds this thread has spent runnable but not running, 0 where the kernel does not
    say (then ``unloaded_time`` is plain ``perf_counter``: no allowance for load)."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def unloaded_time() -> float:
    """``time.perf_counter()`` that stands still while this thread waits for a CPU: take
    both readings of one interval in the same thread (the thread making the decision)."""
    return time.perf_counter() - _waiting_for_cpu()
