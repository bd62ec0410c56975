"""Concurrency slots and waiting mode across real processes on a real server.

* 8 processes × 4 threads take slots and hold them for random short times: an independent
  counter (a plain Redis INCR when a slot is granted, DECR before it is released, through
  redis-py, not ratewall) never exceeds the limit;
* a holder killed with SIGKILL frees its slot within its lease (while it lived, its
  background renewals kept the slot past the lease);
* 8 processes waiting with ``acquire`` never get more than the rate allows.

Each test is bounded in time (a few seconds of real time: what is measured is real
processes and a real server's clock, which no fake clock can stand in for); the achieved
share of the rate is measured by ``benchmarks/waiting.py``, not asserted here.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

import pytest
import redis

from ratewall import Policy, RateLimiter

pytestmark = pytest.mark.slow

PROCESSES = 8
THREADS = 4
SLOTS = 3
COUNTER = "independent:in-flight"
HOLD_SECONDS = 2.0  # how long each thread keeps taking slots
# Forked, as gunicorn and Celery fork their workers (ratewall must cope: see _fork.py), and
# much faster to start than spawned interpreters on a loaded machine.
FORK = multiprocessing.get_context("fork")


def _hold_slots(url: str, go: Event, out: Connection) -> None:
    """Child process: once ``go`` is set, THREADS threads take slots of one identity for
    HOLD_SECONDS; reports (the most in flight the counter showed, slots held, refusals)."""
    policies = {"exports": Policy(SLOTS, 5, algorithm="concurrency", failure_mode="closed")}
    results: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    limiter = RateLimiter(policies, url, timeout=2.0)
    limiter.peek("customer", "exports")  # connected before the start

    def worker(until: float) -> None:
        counter = redis.Redis.from_url(url, socket_timeout=5.0)
        most = held = refused = 0
        while time.monotonic() < until:
            with limiter.slot("customer", "exports", timeout=0.2) as decision:
                if not decision.allowed:
                    refused += 1
                    continue
                in_flight = int(counter.incr(COUNTER))
                most = max(most, in_flight)
                held += 1
                time.sleep(random.uniform(0.0, 0.01))
                counter.decr(COUNTER)
        counter.close()
        with lock:
            results.append((most, held, refused))

    out.send("ready")
    go.wait(60)
    until = time.monotonic() + HOLD_SECONDS
    threads = [threading.Thread(target=worker, args=(until,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    limiter.close()
    out.send((max(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results)))


def _start(child: BaseProcess) -> None:
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads (pytest's, here).
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()


def _run_children(target: Callable[..., None], url: str) -> list[tuple[float, ...]]:
    """Start PROCESSES children running ``target(url, go, pipe)``; once every one says it
    is ready, set ``go`` so that they start together; their reports."""
    go = FORK.Event()
    pipes = []
    children = []
    for _ in range(PROCESSES):
        receiver, sender = FORK.Pipe(duplex=False)
        child = FORK.Process(target=target, args=(url, go, sender), daemon=True)
        _start(child)
        pipes.append(receiver)
        children.append(child)
    try:
        for receiver in pipes:  # spawned interpreters import ratewall first: a loaded machine
            if not receiver.poll(60) or receiver.recv() != "ready":
                pytest.fail("a child process did not start in time")
        go.set()
        reports = []
        for receiver in pipes:
            if not receiver.poll(60):
                pytest.fail("a child process did not report in time")
            reports.append(receiver.recv())
        return reports
    finally:
        go.set()
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()


def test_processes_never_hold_more_slots_than_the_limit(redis_url: str) -> None:
    reports = _run_children(_hold_slots, redis_url)
    most = max(r[0] for r in reports)
    held = sum(r[1] for r in reports)
    refused = sum(r[2] for r in reports)
    assert most <= SLOTS, f"{most} slots in flight at once; the limit is {SLOTS}"
    assert held >= 30  # the test did exercise the limit: many holds...
    assert refused > 0  # ...and contention (32 threads for 3 slots)


def _hold_until_killed(url: str, held: Event) -> None:
    policies = {"exports": Policy(1, 1, algorithm="concurrency")}
    limiter = RateLimiter(policies, url, timeout=2.0)
    slot = limiter.acquire_slot("customer", "exports", timeout=5)
    if slot.allowed:
        held.set()
    time.sleep(60)  # killed long before


def test_a_killed_holder_frees_its_slot_within_the_lease(redis_url: str) -> None:
    policies = {"exports": Policy(1, 1, algorithm="concurrency")}
    held = FORK.Event()
    child = FORK.Process(target=_hold_until_killed, args=(redis_url, held), daemon=True)
    _start(child)
    try:
        assert held.wait(30), "the child never got its slot"
        with RateLimiter(policies, redis_url, timeout=2.0) as limiter:
            time.sleep(1.6)  # past one lease: only the child's renewals keep its slot
            assert not limiter.acquire_slot("customer", "exports").allowed
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join(5)
            killed = time.monotonic()
            slot = limiter.acquire_slot("customer", "exports", timeout=3)
            freed_after = time.monotonic() - killed
            assert slot.allowed
            slot.release()
        # Within one lease (1 s) of the kill, plus the last poll's interval and slack for a
        # loaded machine; never the 3 s timeout.
        assert freed_after < 1.6
    finally:
        if child.is_alive():
            child.kill()


RATE = 20  # per second, a token bucket of burst 20
WAIT_SECONDS = 2.0


def _wait_and_take(url: str, go: Event, out: Connection) -> None:
    """Child: once ``go`` is set, acquire() in a loop for WAIT_SECONDS; reports (admitted,
    when it started, its last admission), wall-clock times (the server's TIME is the same
    machine's clock)."""
    policies = {"partner": Policy(RATE, 1, algorithm="token_bucket")}
    limiter = RateLimiter(policies, url, timeout=2.0)
    limiter.peek("all-workers", "partner")  # connected before the start
    out.send("ready")
    go.wait(60)
    admitted = 0
    start = last = time.time()
    while True:
        left = start + WAIT_SECONDS - time.time()
        if left <= 0:
            break
        decision = limiter.acquire("all-workers", "partner", timeout=left)
        if decision.allowed:
            admitted += 1
            last = time.time()
    limiter.close()
    out.send((admitted, start, last))


def test_waiting_processes_never_get_more_than_the_rate(redis_url: str) -> None:
    reports = _run_children(_wait_and_take, redis_url)
    admitted = sum(r[0] for r in reports)
    start = min(r[1] for r in reports)
    last = max(r[2] for r in reports)
    # A bucket of RATE tokens, full at the start, refilled at RATE per second: at most
    # RATE + RATE × elapsed admissions by the last one (a little slack for clock reads).
    allowed_most = RATE + RATE * (last - start + 0.01)
    assert admitted <= allowed_most, f"{admitted} admitted, at most {allowed_most:.1f} allowed"
    assert admitted >= RATE  # the waiters did get through
