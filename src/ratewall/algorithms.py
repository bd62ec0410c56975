"""The reference math of every algorithm, as pure functions.

Shared rules (every function here, and its Lua twin in ``lua/<name>.lua``, obeys them):

* **Integers only.** Time is integer microseconds; state is a tuple of integers (empty when
  the key does not exist). Redis' Lua has only doubles, exact below 2**53; :class:`Policy`
  rejects limits and windows whose products could leave that range. So Python and Lua
  compute the very same numbers, and the memory and Redis stores give identical decisions.
* **One call = one decision** over ``(state, now, cost, rule)``, returning an
  :class:`Outcome`: allowed, whole units remaining after the decision, microseconds until
  the state is back to full (``reset``), microseconds until the same request could pass
  (``retry``, ``-1`` when allowed), the state to write (``None``: write nothing) and its
  time to live.
* **A refused request consumes nothing** and writes nothing.
* **Time may stand still or step back** (a server clock adjusted by NTP); elapsed time is
  never negative.
* ``cost`` is at least 1 and at most the policy's capacity; callers check that.

Bucket algorithms (``token_bucket``, ``gcra``) count in exact fractions: with the refill rate
``limit / window_us`` reduced to ``rate / interval`` (lowest terms), a token is ``interval``
units and each microsecond refills ``rate`` units, so no rounding ever happens. The two are
the same bucket seen from two sides: ``token_bucket`` stores the level, ``gcra`` the
theoretical arrival time ``tat`` (as whole microseconds plus a remainder in ``1/rate`` µs),
with ``level == capacity*interval - (tat - now)*rate``. Their decisions are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from .policy import Policy, bucket_ratio

__all__ = [
    "ALGORITHM_CODES",
    "CONCURRENCY_CODE",
    "FUNCTIONS",
    "SLOT_ACQUIRE",
    "SLOT_PEEK",
    "SLOT_RELEASE",
    "SLOT_RENEW",
    "SLOT_RESET",
    "Outcome",
    "Rule",
    "SlotOutcome",
    "lease",
    "rule_for",
    "slots",
]

State = Sequence[int]


class Rule(NamedTuple):
    """A policy's numbers, as the algorithms (and the Lua scripts) take them."""

    algorithm: int  # index into ALGORITHM_CODES
    limit: int
    window: int  # microseconds
    capacity: int  # burst for buckets, else == limit
    rate: int  # bucket refill units per microsecond (reduced numerator)
    interval: int  # bucket units per token (reduced denominator)
    lease: int = 0  # the most units one lease takes (Policy.lease); 0: no leases


class Outcome(NamedTuple):
    allowed: bool
    remaining: int
    reset: int  # µs until the state is back to full
    retry: int  # µs until the same request could pass; -1 when allowed
    state: tuple[int, ...] | None  # what to store; None = leave the store untouched
    ttl: int  # µs the stored state stays meaningful


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def fixed_window(state: State, now: int, cost: int, rule: Rule) -> Outcome:
    """State ``(count, end)``. The window opens at the identity's first request."""
    if state and now < state[1]:
        count, end = state[0], state[1]
    else:
        count, end = 0, now + rule.window
    left = end - now
    if count + cost <= rule.limit:
        count += cost
        return Outcome(True, rule.limit - count, left, -1, (count, end), left)
    return Outcome(False, rule.limit - count, left, left, None, 0)


def sliding_window(state: State, now: int, cost: int, rule: Rule) -> Outcome:
    """State ``(previous, current, start)``: two windows' counts, the current one's start.

    The previous window's count is weighted by the part of it still inside the sliding
    window, at millisecond resolution: ``used = previous * (w - elapsed) / w + current``.
    Windows follow each other from the identity's first request.
    """
    window = rule.window
    if state:
        previous, current, start = state[0], state[1], state[2]
        if now >= start + window:
            # Two or more windows later nothing is left: start afresh, as if the key were gone.
            if now < start + 2 * window:
                previous, start = current, start + window
            else:
                previous, start = 0, now
            current = 0
    else:
        previous, current, start = 0, 0, now
    w = window // 1000
    elapsed = max(0, now - start) // 1000
    weighted = previous * (w - elapsed)  # previous' share, scaled by w
    capacity = rule.limit * w
    if weighted + (current + cost) * w <= capacity:
        current += cost
        remaining = (capacity - weighted - current * w) // w
        reset = start + 2 * window - now
        return Outcome(True, remaining, reset, -1, (previous, current, start), reset)
    remaining = max(0, (capacity - weighted - current * w) // w)
    reset = start + (2 if current > 0 else 1) * window - now
    return Outcome(
        False, remaining, reset, _sliding_retry(previous, current, start, now, cost, rule), None, 0
    )


def _sliding_retry(previous: int, current: int, start: int, now: int, cost: int, rule: Rule) -> int:
    window = rule.window
    w = window // 1000
    needed = current + cost
    if needed <= rule.limit and previous > 0:
        # Smallest elapsed (ms) with previous * (w - elapsed) <= (limit - needed) * w.
        elapsed = w - (rule.limit - needed) * w // previous
        if elapsed < w:
            return start + elapsed * 1000 - now
    # In the next window the current count becomes the previous one.
    if current == 0:
        return start + window - now
    elapsed = w - (rule.limit - cost) * w // current
    if elapsed < w:
        return start + window + elapsed * 1000 - now
    return start + 2 * window - now


def sliding_log(state: State, now: int, cost: int, rule: Rule) -> Outcome:
    """State ``(t1, c1, t2, c2, ...)``: admitted costs with their times, oldest first.

    Exact: a request is allowed when the cost admitted in the last ``window`` plus its own
    is at most ``limit``. An entry admitted at ``t`` counts while ``now < t + window``.
    """
    window = rule.window
    first = 0
    size = len(state)
    while first < size and state[first] + window <= now:
        first += 2
    used = sum(state[first + 1 : size : 2])
    if used + cost <= rule.limit:
        live = list(state[first:size])
        if live and live[-2] == now:
            live[-1] += cost
        else:
            live += (now, cost)
        return Outcome(True, rule.limit - used - cost, window, -1, tuple(live), window)
    reset = state[size - 2] + window - now
    freed = 0
    retry = reset
    for index in range(first, size, 2):
        freed += state[index + 1]
        if used - freed + cost <= rule.limit:
            retry = state[index] + window - now
            break
    return Outcome(False, rule.limit - used, reset, retry, None, 0)


def token_bucket(state: State, now: int, cost: int, rule: Rule) -> Outcome:
    """State ``(level, last)``: tokens in units of ``1/interval`` token, and when they were
    counted. Capacity ``burst`` tokens, refilled at ``limit / window``; starts full."""
    full = rule.capacity * rule.interval
    if state:
        level, last = state[0], state[1]
        if now > last:
            missing = full - level
            if now - last >= _ceil_div(missing, rule.rate):
                level = full
            else:
                level += (now - last) * rule.rate
            last = now
    else:
        level, last = full, now
    need = cost * rule.interval
    if level >= need:
        level -= need
        reset = _ceil_div(full - level, rule.rate)
        return Outcome(True, level // rule.interval, reset, -1, (level, last), reset)
    return Outcome(
        False,
        level // rule.interval,
        _ceil_div(full - level, rule.rate),
        _ceil_div(need - level, rule.rate),
        None,
        0,
    )


def gcra(state: State, now: int, cost: int, rule: Rule) -> Outcome:
    """State ``(tat, remainder)``: the theoretical arrival time, ``tat + remainder/rate`` µs.

    ``ahead`` is how far ``tat`` lies in the future, in ``1/rate`` µs; a request is allowed
    when ``ahead`` after it is at most ``burst`` emission intervals.
    """
    if state and (state[0] > now or (state[0] == now and state[1] > 0)):
        ahead = (state[0] - now) * rule.rate + state[1]
    else:
        ahead = 0
    full = rule.capacity * rule.interval
    after = ahead + cost * rule.interval
    if after <= full:
        tat = (now + after // rule.rate, after % rule.rate)
        reset = _ceil_div(after, rule.rate)
        return Outcome(True, (full - after) // rule.interval, reset, -1, tat, reset)
    return Outcome(
        False,
        (full - ahead) // rule.interval,
        _ceil_div(ahead, rule.rate),
        _ceil_div(after - full, rule.rate),
        None,
        0,
    )


Algorithm = Callable[[State, int, int, Rule], Outcome]


def lease(
    algorithm: Algorithm, state: State, now: int, cost: int, rule: Rule
) -> tuple[Outcome, int]:
    """A check that also takes a slice of what remains, for a node to spend locally.

    If ``cost`` is allowed, up to ``rule.lease - cost`` more units are taken with it, but at
    most half of what would remain after ``cost``: slices shrink as the limit nears, so the
    last units are spread over the nodes that ask. Every algorithm's ``remaining`` after
    ``cost`` is exactly what could still be taken, so taking ``cost`` plus a part of it is
    allowed. Returns the outcome of taking the granted units and their number (0: refused).
    """
    outcome = algorithm(state, now, cost, rule)
    if not outcome.allowed:
        return outcome, 0
    extra = min(rule.lease - cost, outcome.remaining // 2)
    if extra <= 0:
        return outcome, cost
    return algorithm(state, now, cost + extra, rule), cost + extra


# The order fixes the codes the Lua scripts receive.
ALGORITHM_CODES: tuple[str, ...] = (
    "fixed_window",
    "sliding_window",
    "sliding_log",
    "token_bucket",
    "gcra",
)
FUNCTIONS: tuple[Algorithm, ...] = (fixed_window, sliding_window, sliding_log, token_bucket, gcra)


#: The rule code of ``algorithm: "concurrency"``: not one of the decision script's algorithms
#: (slots have a script of their own, ``lua/concurrency.lua``).
CONCURRENCY_CODE = len(ALGORITHM_CODES)


def rule_for(policy: Policy) -> Rule:
    if policy.algorithm == "concurrency":
        return Rule(CONCURRENCY_CODE, policy.limit, policy.window_us, policy.limit, 1, 1, 0)
    rate, interval = bucket_ratio(policy.limit, policy.window_us)
    return Rule(
        ALGORITHM_CODES.index(policy.algorithm),
        policy.limit,
        policy.window_us,
        policy.capacity,
        rate,
        interval,
        policy.lease or 0,
    )


# -- concurrency slots ------------------------------------------------------------------------
#
# A concurrency policy's state is its holders: each a token (a random string the holder
# made) and the time its lease expires (µs). A holder whose expiry is at or before ``now`` is
# gone, exactly as if it had released. ``lua/concurrency.lua`` is this function's twin on a
# sorted set (member = token, score = expiry).

SLOT_ACQUIRE, SLOT_RENEW, SLOT_RELEASE, SLOT_PEEK, SLOT_RESET = range(5)


class SlotOutcome(NamedTuple):
    allowed: bool  # acquired, renewed, released (the token was held), or a peek that fits
    free: int  # slots free after the operation (>= 0)
    reset: int  # µs until every current lease has expired (0 when none is held)
    retry: int  # refused acquire or peek: µs until enough leases expire; else -1 (renew: 0)
    holders: dict[str, int] | None  # the holders to keep (expired ones pruned); None: unchanged


def slots(
    holders: Mapping[str, int], op: int, token: str, now: int, cost: int, rule: Rule
) -> SlotOutcome:
    """One slot operation over ``holders`` (token -> lease expiry, µs) at ``now``.

    ``SLOT_ACQUIRE`` takes a slot for ``token`` if fewer than ``limit`` are held (a token
    already holding one just renews it); ``SLOT_RENEW`` extends a held lease by ``window``
    from now, and fails for a token whose lease expired or was never granted: an expired
    holder is never brought back, since its slot may be someone else's by now;
    ``SLOT_RELEASE`` gives a slot back (idempotent: releasing twice, or after expiry, does
    nothing); ``SLOT_PEEK`` asks whether ``cost`` slots are free, changing nothing.
    """
    live = {t: e for t, e in holders.items() if e > now}
    limit = rule.limit
    expiry = now + rule.window
    retry = -1
    if op == SLOT_PEEK:
        count = len(live)
        allowed = count + cost <= limit
        if not allowed:
            retry = sorted(live.values())[count + cost - limit - 1] - now
        return SlotOutcome(allowed, max(0, limit - count), _last(live, now), retry, None)
    if op == SLOT_ACQUIRE:
        allowed = token in live or len(live) + 1 <= limit
        if allowed:
            live[token] = expiry
        else:
            retry = min(live.values()) - now
    elif op == SLOT_RENEW:
        allowed = token in live
        if allowed:
            live[token] = expiry
        else:
            retry = 0
    else:  # SLOT_RELEASE
        allowed = live.pop(token, None) is not None
    return SlotOutcome(allowed, max(0, limit - len(live)), _last(live, now), retry, live)


def _last(holders: Mapping[str, int], now: int) -> int:
    return max(holders.values()) - now if holders else 0
