"""The synchronous Redis/Valkey store: one atomic Lua call decides a list of requests (each
a group of calls decided all or nothing). Its asyncio twin, with automatic batching, is
:mod:`.batching`; both share the script (:mod:`._lua`), its arguments (:mod:`._arguments`)
and the cluster's slot routing (:mod:`._slots`).

The script is ``lua/_prelude.lua``, the five ``lua/<algorithm>.lua`` files and
``lua/_main.lua`` concatenated. Standalone servers are reached through ratewall's own
connections (:mod:`._resp`), which load it as a function library (FUNCTION LOAD once per
server, then FCALL: its definitions are not re-run at every call), falling back to EVALSHA
(re-sent as EVAL on NOSCRIPT) on servers without functions or for users denied them; a
library or script lost to a flush, a restart or a failover is loaded again by the call that
finds it missing. Cluster and Sentinel are reached through redis-py clients and their
``Script`` objects (EVALSHA), with batches split per hash slot.

Clients are built for a rate limiter, not for a cache: connect and read timeouts default to
50 ms and nothing is retried (redis-py's defaults wait seconds and retry with backoff; a
limiter must answer or fail fast and let the policy's failure mode decide).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._calls import Call, Reply, Request, SlotCall
from ..metrics._counters import Metrics
from ..observer import Observer
from ._arguments import Arguments, flatten, regroup
from ._connection import ConnectionPool
from ._lua import SCRIPT, SLOT_SCRIPT
from ._redispy import close_client, decision_deadline, make_client, parse_store_url
from ._resp import Endpoint, Script
from ._slots import key_slot, per_slot
from .base import DEFAULT_TIMEOUT, report_store_call, timed

perf_counter = time.perf_counter
_log = logging.getLogger("ratewall")

__all__ = ["SCRIPT", "RedisStore", "key_slot", "make_client", "parse_store_url"]


class RedisStore:
    """Synchronous store on Redis/Valkey: one script call per :meth:`run`.

    Standalone servers (``redis://``, ``rediss://``, ``unix://``, ``valkey://``) are reached
    through ratewall's lean connection (:mod:`._connection`); Cluster and Sentinel through
    redis-py. ``clock`` (µs) replaces the server's ``TIME``: only tests should pass one.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT, clock: Callable[[], int] | None = None
    ) -> None:
        self.url = url
        kind, normalised = parse_store_url(url)
        self._arguments = Arguments(clock)
        self._close: Callable[[], None]
        self._pool: ConnectionPool | None = None
        self._script: Any = None
        self._client: Any = None
        self._observer: Observer | None = None
        self._metrics: Metrics | None = None
        self.slot_of: Callable[[str], int] | None = None
        self._slot_script: Any = None
        if kind == "redis":
            self._pool = ConnectionPool(Endpoint.from_url(normalised, timeout), Script(SCRIPT))
            self._slot_script = Script(SLOT_SCRIPT)
            self._close = self._pool.close
        else:
            self._url = url
            self._timeout = timeout
            self._lock = threading.Lock()
            self._close = self._close_client
            if kind == "cluster":
                # A cluster client asks the nodes for the slot map when built: built on
                # first use, so that a limiter constructs while the cluster is down and
                # its calls answer per the failure mode until it is back.
                self.slot_of = key_slot
            else:
                self._connect()

    def _connect(self) -> Any:
        """The redis-py client, built (and its script registered) on first use."""
        with self._lock:
            if self._client is None:
                client = make_client(self._url, self._timeout)
                self._script = client.register_script(SCRIPT)
                self._slot_script = client.register_script(SLOT_SCRIPT)
                self._client = client
            return self._client

    def _close_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            close_client(client)

    def run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        """Decide each request (all or nothing) in order, in one atomic script call (one
        per hash slot on a cluster)."""
        if self._observer is not None:
            return timed(self._observer, sum(map(len, requests)), self._run_slots, requests)
        return self._run_slots(requests)

    def _run_slots(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self.slot_of is not None:
            return per_slot(self.slot_of, requests, self._run)
        return self._run(requests)

    def _run(self, requests: Sequence[Request]) -> list[list[Reply]]:
        if self._pool is not None:
            argc, body = self._arguments.pack(*flatten(requests))
            return regroup(requests, self._pool.run_script(argc, body))
        if self._client is None:
            self._connect()
        keys, args = self._arguments.build(requests)
        with decision_deadline(self._timeout):  # a Sentinel discovery inside keeps it
            return regroup(requests, self._script(keys=keys, args=args))

    def run_one(self, call: Call) -> Reply:
        observer = self._observer
        if observer is None:
            pool = self._pool
            if pool is not None:  # _run_one's usual case, written out: one call less
                argc, body = self._arguments.pack_one(call)
                reply: Reply = pool.run_script(argc, body)[0]
                return reply
            return self._run_one(call)
        metrics = self._metrics
        if metrics is not None:
            # ratewall's own metrics time one call in their sample (Metrics.latency_sample):
            # the others read no clock, the metrics budget's largest item on this path.
            how = metrics.counting_store_call()
            if not how:
                try:
                    return self._run_one(call)
                except BaseException as error:
                    metrics.counted_store_call(0, 0.0, error)
                    raise
            started = perf_counter()
            try:
                reply = self._run_one(call)
            except BaseException as error:
                metrics.counted_store_call(how, perf_counter() - started, error)
                raise
            metrics.counted_store_call(how, perf_counter() - started, None)
            return reply
        # timed() inlined: the one round trip of a sync decision is the metrics budget's
        # case, and two Python calls less are a third of what observing it costs.
        started = perf_counter()
        try:
            reply = self._run_one(call)
        except BaseException as error:
            report_store_call(observer, perf_counter() - started, 1, error)
            raise
        try:
            observer.on_store_call(perf_counter() - started, 1, None)
        except Exception:  # noqa: BLE001 - an observer's bug must not fail the decision
            _log.exception("ratewall observer failed on a store call")
        return reply

    def _run_one(self, call: Call) -> Reply:
        if self._pool is not None:
            argc, body = self._arguments.pack_one(call)
            reply: Reply = self._pool.run_script(argc, body)[0]
            return reply
        return self._run_slots(((call,),))[0][0]

    def run_slot(self, call: SlotCall) -> Reply:
        """The reply of ``lua/concurrency.lua`` to one slot operation."""
        if self._observer is not None:
            return timed(self._observer, 1, self._run_slot, call)
        return self._run_slot(call)

    def _run_slot(self, call: SlotCall) -> Reply:
        if self._pool is not None:
            argc, body = self._arguments.pack_slot(call)
            reply: Reply = self._pool.run_script(argc, body, self._slot_script)
            return reply
        if self._client is None:
            self._connect()
        with decision_deadline(self._timeout):
            result: Reply = self._slot_script(keys=[call.key], args=self._arguments.slot_args(call))
        return result

    def ping(self) -> float:
        """The round trip of a ``PING`` in seconds, within the store timeout; raises the
        store's error if it does not answer."""
        started = time.perf_counter()
        if self._pool is not None:
            self._pool.command("PING")
        else:
            client = self._connect()
            with decision_deadline(self._timeout):
                client.ping()
        seconds: float = time.perf_counter() - started
        return seconds

    def observe(self, observer: Observer | None) -> None:
        self._observer = observer
        # Exactly ratewall's Metrics (a subclass may override on_store_call): see run_one.
        self._metrics = observer if type(observer) is Metrics else None

    def close(self) -> None:
        self._close()
