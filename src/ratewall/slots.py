"""Concurrency slots: what a holder of a slot of an ``algorithm: "concurrency"`` policy has.

A slot is a *lease* in the store: the holder's random token with an expiry, ``window``
seconds from its last renewal, in the identity's sorted set (``lua/concurrency.lua``; the
memory store keeps the same in a dict). So a holder that dies without releasing frees its
slot when its lease expires, and a live holder keeps its slot by renewing it in the
background, every third of the lease:

* sync (:class:`Slot`): one daemon thread per limiter renews every slot the limiter's
  callers hold, and exits a few seconds after none is held;
* asyncio (:class:`AsyncSlot`): one task per held slot.

A renewal that finds the lease gone (it expired: the process stalled longer than the lease,
or the store lost it) fails and is never retried: the slot may belong to someone else by
then. The holder's :attr:`Slot.held` turns false and a warning is logged. Releasing is
idempotent, stops the renewals first, and never raises: a release the store does not get
(it is down) frees the slot when the lease expires.

A slot acquired in one process is never renewed or released by a forked child (the child
inherits the Python object, not the slot): only the process that acquired it acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

from ._calls import Reply, SlotCall
from ._fork import reset_in_child
from .algorithms import SLOT_RELEASE, SLOT_RENEW
from .decision import Decision

__all__ = ["AsyncSlot", "Slot", "new_token"]

_log = logging.getLogger("ratewall")

#: Renewals per lease: a holder renews after a third of its lease, so two renewals in a row
#: can fail (a store hiccup, a stalled process) before the slot is lost.
RENEWALS_PER_LEASE: Final = 3


#: How long the renewal thread waits for a new slot once none is held, before it exits.
_IDLE_SECONDS: Final = 5.0


def new_token() -> str:
    """A holder's token: 96 random bits, so two holders never share one."""
    return secrets.token_hex(12)


def _lost(call: SlotCall, why: str) -> None:
    _log.warning(
        "ratewall: a slot of %s was lost (%s); its holder runs on without it, and the slot "
        "may already be someone else's",
        call.key,
        why,
    )


def _interval(call: SlotCall) -> float:
    return call.rule.window / 1_000_000 / RENEWALS_PER_LEASE


class _Holder:
    """What both kinds of slot share: the decision, the call that names the slot, state."""

    __slots__ = ("__weakref__", "_call", "_clock", "_held", "_pid", "_renewed_at", "decision")

    def __init__(
        self, call: SlotCall, decision: Decision, held: bool, clock: Callable[[], int]
    ) -> None:
        #: The answer to the acquisition: a :class:`~ratewall.Decision` like any other
        #: (``remaining`` = free slots after it, ``retry_after`` = see the README).
        self.decision = decision
        self._call = call
        self._held = held
        self._pid = os.getpid()
        self._clock = clock  # the limiter's, in µs
        self._renewed_at = clock()  # the lease's start, as far as this process knows

    @property
    def allowed(self) -> bool:
        """Whether the acquisition was allowed (``decision.allowed``)."""
        return self.decision.allowed

    @property
    def held(self) -> bool:
        """Whether this process holds the slot in the store now: acquired there, neither
        released nor lost. False for an allowed decision the store did not make (an exempt
        identity, the failure mode, a shadow policy's refusal): there is nothing to hold."""
        return self._held and self._pid == os.getpid()

    def _renewed(self, reply: Reply) -> bool:
        if reply[0] == 1:
            self._renewed_at = self._clock()
            return True
        if self._held:
            self._held = False
            _lost(self._call, "its lease expired before it was renewed")
        return False

    def _renewal_failed(self, error: Exception) -> bool:
        """A renewal the store did not answer: try again next time, unless the lease has
        run out meanwhile (then the slot is lost, and renewing stops)."""
        if self._clock() - self._renewed_at < self._call.rule.window:
            _log.warning("ratewall: renewing a slot of %s failed: %r", self._call.key, error)
            return True
        if self._held:
            self._held = False
            _lost(self._call, f"the store did not answer renewals for a whole lease: {error!r}")
        return False

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return f"<{type(self).__name__} {self._call.key} {state}: {self.decision!r}>"


class Slot(_Holder):
    """A slot from :meth:`RateLimiter.acquire_slot`. Release it when done (or use it as a
    context manager: ``with limiter.acquire_slot(...) as decision:``)."""

    __slots__ = ("_keeper",)

    def __init__(
        self,
        keeper: SlotKeeper,
        call: SlotCall,
        decision: Decision,
        held: bool,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(call, decision, held, clock)
        self._keeper = keeper
        if self._held:
            keeper.renew_in_background(self)

    def renew(self) -> bool:
        """Extend the lease now (the background renewal does it on its own); whether the
        slot is still held. A store failure leaves the slot as it was (True) for the next
        renewal to try again, until a whole lease has passed without a renewal: then the
        slot counts as lost."""
        if not self.held:
            return False
        try:
            reply = self._keeper.run(self._call._replace(op=SLOT_RENEW))
        except Exception as error:  # noqa: BLE001 - the next renewal tries again
            return self._renewal_failed(error)
        return self._renewed(reply)

    def release(self) -> None:
        """Give the slot back. Idempotent; never raises (if the store does not answer, the
        slot frees itself when its lease expires)."""
        if not self.held:
            self._held = False
            return
        self._held = False
        self._keeper.stop_renewing(self)
        try:
            self._keeper.run(self._call._replace(op=SLOT_RELEASE))
        except Exception as error:  # noqa: BLE001 - the lease runs out on its own
            _log.warning(
                "ratewall: releasing a slot of %s failed (%r); it frees itself when its lease "
                "expires",
                self._call.key,
                error,
            )

    def __enter__(self) -> Decision:
        return self.decision

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AsyncSlot(_Holder):
    """A slot from :meth:`AsyncRateLimiter.acquire_slot`: ``await slot.release()`` when
    done, or ``async with await limiter.acquire_slot(...) as decision:``."""

    __slots__ = ("_renewal", "_run")

    def __init__(
        self,
        run: Callable[[SlotCall], Awaitable[Reply]],
        call: SlotCall,
        decision: Decision,
        held: bool,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(call, decision, held, clock)
        self._run = run
        self._renewal: asyncio.Task[None] | None = None
        if self._held:
            self._renewal = asyncio.get_running_loop().create_task(
                _keep_renewing(weakref.ref(self), _interval(call))
            )

    async def renew(self) -> bool:
        """As :meth:`Slot.renew`."""
        if not self.held:
            return False
        try:
            reply = await self._run(self._call._replace(op=SLOT_RENEW))
        except Exception as error:  # noqa: BLE001 - the next renewal tries again
            return self._renewal_failed(error)
        return self._renewed(reply)

    async def release(self) -> None:
        """As :meth:`Slot.release`."""
        if not self.held:
            self._held = False
            return
        self._held = False
        renewal, self._renewal = self._renewal, None
        if renewal is not None and renewal is not asyncio.current_task():
            renewal.cancel()
        try:
            await self._run(self._call._replace(op=SLOT_RELEASE))
        except Exception as error:  # noqa: BLE001 - the lease runs out on its own
            _log.warning(
                "ratewall: releasing a slot of %s failed (%r); it frees itself when its lease "
                "expires",
                self._call.key,
                error,
            )

    async def __aenter__(self) -> Decision:
        return self.decision

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


async def _keep_renewing(ref: weakref.ref[AsyncSlot], interval: float) -> None:
    """An async slot's renewals. The task holds the slot weakly: a slot its holder dropped
    without releasing stops being renewed, and its lease frees it."""
    while True:
        await asyncio.sleep(interval)
        slot = ref()
        if slot is None or not slot.held or not await slot.renew():
            return
        del slot


class SlotKeeper:
    """A sync limiter's slot operations and its renewal thread (one for every slot its
    callers hold; it exits a few seconds after the last one is released)."""

    def __init__(self, run: Callable[[SlotCall], Reply]) -> None:
        self.run = run
        self._condition = threading.Condition()
        # Slots held weakly: one its holder dropped without releasing stops being renewed,
        # and its lease frees it (a forgotten slot must not be held for ever).
        self._due: weakref.WeakKeyDictionary[Slot, float] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None
        self._wake_at = 0.0  # when the thread means to wake next (monotonic seconds)
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The parent's slots are the parent's: the child neither renews nor releases them.
        self._condition = threading.Condition()
        self._due = weakref.WeakKeyDictionary()
        self._thread = None

    def renew_in_background(self, slot: Slot) -> None:
        with self._condition:
            due = self._due[slot] = time.monotonic() + _interval(slot._call)
            if self._thread is None:
                self._wake_at = due
                self._thread = threading.Thread(
                    target=self._renew_loop, name="ratewall-slot-renewal", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                # Only a slot due before the thread means to wake is worth waking it for
                # (a thread switch per acquisition would double a slot's cost).
                self._wake_at = due
                self._condition.notify()

    def stop_renewing(self, slot: Slot) -> None:
        with self._condition:
            self._due.pop(slot, None)

    def held(self) -> int:
        """How many slots this limiter's callers hold (renewed in the background)."""
        with self._condition:
            return len(self._due)

    def _renew_loop(self) -> None:
        condition = self._condition
        while True:
            with condition:
                while True:
                    if not self._due:
                        # Linger a while: callers that take slot after slot would otherwise
                        # start a thread for each one.
                        self._wake_at = time.monotonic() + _IDLE_SECONDS
                        condition.wait(_IDLE_SECONDS)
                        if not self._due:
                            self._thread = None
                            return
                    now = time.monotonic()
                    first = min(self._due.values())
                    if first <= now:
                        break
                    self._wake_at = first
                    condition.wait(first - now)
                ready = [slot for slot, due in self._due.items() if due <= now]
                for slot in ready:
                    self._due[slot] = now + _interval(slot._call)
            self._renew(ready)
            del ready, slot  # no strong reference while waiting (see _due)

    def _renew(self, ready: list[Slot]) -> None:
        for slot in ready:
            with contextlib.suppress(Exception):  # renew() logs its own failures
                if not slot.renew():
                    self.stop_renewing(slot)
