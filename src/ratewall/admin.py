"""Operators' access to the store: read and decode one key's state, remove it, and find a
policy's keys with a bounded ``SCAN``.

The ``inspect``, ``reset`` and ``top`` commands use this module, and so can a service. It
talks to Redis/Valkey through redis-py and decides nothing: the values are decoded exactly as
the scripts read them (``lua/_main.lua``'s ``read_state``, ``lua/sliding_log.lua``), and what a
check would answer on a decoded state is :mod:`ratewall.algorithms`' pure function, which every
store's decisions equal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .algorithms import FUNCTIONS, Outcome, Rule
from .errors import StoreError
from .stores._values import decode_int, decode_value
from .stores.redis import make_client, parse_store_url

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "AdminStore",
    "KeyState",
    "ScanResult",
    "decode_state",
    "describe_state",
    "identity_in_key",
    "outcome_now",
    "policy_pattern",
    "rank",
    "redacted",
]

#: The letter that starts each algorithm's string value (``stores/_values.py``).
_TAGS: Final = {"fixed_window": "F", "sliding_window": "S", "token_bucket": "T", "gcra": "G"}
_STATE_SIZES: Final = {"fixed_window": 2, "sliding_window": 3, "token_bucket": 2, "gcra": 2}
#: Keys a ``top`` examines unless told otherwise.
DEFAULT_SCAN_LIMIT: Final = 10_000
_SCAN_COUNT: Final = 1000  # the COUNT hint of one SCAN call
_READ_BATCH: Final = 500  # keys read per pipelined round trip

_T = TypeVar("_T")


def redacted(url: str) -> str:
    """``url`` with any password (in the authority, or a ``sentinel_password`` parameter)
    shown as ``***``. A private stand-in until ``ratewall._urls`` has the shared helper."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: hide anything that could be credentials
        return re.sub(r"//[^/@]*@", "//***@", url)
    user, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        name, colon, _password = user.partition(":")
        netloc = f"{name}:***@{hosts}" if colon else f"***@{hosts}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide (and urlunsplit would drop unix://'s empty authority)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key as the store held it, read in one atomic step.

    ``state`` is the tuple :mod:`ratewall.algorithms` works on (``()``: no state, a full
    quota). ``now`` is the server's clock at the read, in µs (the clock the scripts decide
    by); ``ttl`` the seconds the key had left (``None``: no key, or a key without a TTL).
    ``redis_type`` is what ``TYPE`` answered (``"none"`` without a key); ``note`` says why a
    key that exists still counts as no state, or what else is odd about it.
    """

    key: str
    algorithm: str
    now: int
    redis_type: str
    ttl: float | None
    state: tuple[int, ...] = ()
    note: str | None = None

    @property
    def exists(self) -> bool:
        return self.redis_type != "none"


def decode_state(algorithm: str, redis_type: str, value: Any) -> tuple[tuple[int, ...], str | None]:
    """``(state, note)``: the state ``algorithm`` reads from a value of ``redis_type`` (a
    string's bytes, or a list's entries as bytes), and, when that is none although a value is
    there, why."""
    if redis_type == "none":
        return (), None
    if algorithm == "sliding_log":
        if redis_type != "list":
            return (), f"holds a Redis {redis_type}, not a sliding log's list: no state"
        state: list[int] = []
        for entry in value:
            try:
                time, cost, _total = entry.decode("ascii").split(":")
                state += (decode_int(time), decode_int(cost))
            except (ValueError, KeyError, UnicodeDecodeError):
                return (), f"holds a list entry {entry!r} that is not a sliding log's"
        return tuple(state), None
    if redis_type != "string":
        return (), f"holds a Redis {redis_type}, which {algorithm} reads as no state"
    tag = _TAGS[algorithm]
    # The scripts' test: longer than the 9-byte header, and this algorithm's letter first.
    if len(value) <= 9 or value[:1] != tag.encode():
        other = next((name for name, t in _TAGS.items() if value[:1] == t.encode()), None)
        if other == algorithm:
            return (), "holds a value that is not in ratewall's format"
        written = f"a {other} value (did the policy change?)" if other else "a foreign value"
        return (), f"holds {written}, which {algorithm} reads as no state"
    try:
        _, decoded = decode_value(value)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        return (), "holds a value that is not in ratewall's format"
    if len(decoded) != _STATE_SIZES[algorithm]:
        return (), "holds a value that is not in ratewall's format"
    return decoded, None


def outcome_now(state: KeyState, rule: Rule, cost: int = 1) -> Outcome:
    """What a check of ``cost`` would answer on ``state`` at its read time (nothing is
    written: the outcome's new state is only returned)."""
    return FUNCTIONS[rule.algorithm](state.state, state.now, cost, rule)


def _seconds(micros: float) -> float:
    return round(micros / 1_000_000, 6)


def describe_state(state: KeyState, rule: Rule) -> dict[str, Any]:
    """``state``'s decoded fields in natural units, for people and JSON: instants are the
    server's Unix time in seconds, durations are seconds, tokens are fractional. Always has
    ``exists``, ``type`` and ``ttl``; ``note`` when there is one."""
    fields: dict[str, Any] = {"exists": state.exists, "type": state.redis_type, "ttl": state.ttl}
    if state.note is not None:
        fields["note"] = state.note
    values, now, algorithm = state.state, state.now, state.algorithm
    if not values:
        return fields
    if algorithm == "fixed_window":
        count, end = values
        live = now < end
        fields.update(
            count=count,
            window_end=_seconds(end),
            window_ends_in=_seconds(max(0, end - now)),
            counted_now=count if live else 0,
        )
    elif algorithm == "sliding_window":
        previous, current, start = values
        fields.update(
            previous_count=previous,
            current_count=current,
            window_start=_seconds(start),
            weighted_count_now=_sliding_weighted(previous, current, start, now, rule.window),
        )
    elif algorithm == "sliding_log":
        entries = [
            {"at": _seconds(at), "cost": cost, "live": now < at + rule.window}
            for at, cost in zip(values[::2], values[1::2], strict=True)
        ]
        fields.update(entries=entries, counted_now=sum(e["cost"] for e in entries if e["live"]))
    elif algorithm == "token_bucket":
        level, last = values
        full = rule.capacity * rule.interval
        fields.update(
            tokens=round(level / rule.interval, 6),
            last_refill=_seconds(last),
            tokens_now=round(min(full, level + max(0, now - last) * rule.rate) / rule.interval, 6),
        )
    else:  # gcra: the theoretical arrival time is tat + remainder/rate µs
        tat, remainder = values
        ahead = max(0, (tat - now) * rule.rate + remainder)
        full = rule.capacity * rule.interval
        fields.update(
            tat=_seconds(tat + remainder / rule.rate),
            tat_ahead=_seconds(ahead / rule.rate),
            tokens_now=round(max(0, full - ahead) / rule.interval, 6),
        )
    return fields


def _sliding_weighted(previous: int, current: int, start: int, now: int, window: int) -> float:
    """The count :func:`ratewall.algorithms.sliding_window` weighs against the limit at
    ``now``: the previous window's count by its remaining overlap (ms), plus the current."""
    if now >= start + window:  # the windows moved on since the last admission
        if now >= start + 2 * window:
            return 0.0
        previous, current, start = current, 0, start + window
    w = window // 1000
    elapsed = max(0, now - start) // 1000
    return round(previous * (w - elapsed) / w + current, 3)


def policy_pattern(prefix: str, policy: str) -> str:
    """The ``SCAN MATCH`` pattern of ``policy``'s keys. Prefixes and policy names have no
    glob characters (:mod:`ratewall.keys`), so only the identity is a wildcard."""
    return f"{prefix}:{{*}}:{policy}"


def identity_in_key(key: str, prefix: str, policy: str) -> tuple[str, bool] | None:
    """``(identity as written, is it a digest)`` for a key of ``policy`` under ``prefix``,
    ``None`` for any other key. A digest (``~`` and 64 hex digits) cannot be reversed."""
    head, tail = f"{prefix}:{{", f"}}:{policy}"
    if not key.startswith(head) or not key.endswith(tail):
        return None
    written = key[len(head) : len(key) - len(tail)]
    if not written or "{" in written or "}" in written:
        return None
    return written, written.startswith("~")


def rank(states: Iterable[KeyState], rule: Rule) -> list[tuple[KeyState, Outcome]]:
    """Each state with what a check of 1 unit would answer now, closest to the limit first:
    refused ones, then fewest units left, then longest until full."""
    scored = [(state, outcome_now(state, rule)) for state in states]
    scored.sort(key=lambda pair: (pair[1].allowed, pair[1].remaining, -pair[1].reset))
    return scored


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a bounded SCAN found and cost: ``calls`` SCAN calls with ``COUNT count`` (a hint:
    each call looks at about that many keys, so about ``calls * count`` were examined, at
    most ``limit`` plus one call's worth); ``complete`` when the whole keyspace was walked
    (every cursor came back to 0). ``dbsize`` is the number of keys in the database(s)."""

    keys: tuple[str, ...]
    calls: int
    count: int
    limit: int
    complete: bool
    nodes: int
    dbsize: int | None


class AdminStore:
    """A redis-py connection to a limiter's store, to read, remove and find keys.

    Any failure of the store becomes a :class:`~ratewall.StoreError` naming the store with
    its password hidden. Cluster keys are read on the node that owns them; Sentinel URLs
    reach the current master.
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        kind, normalised = parse_store_url(url)
        if kind == "memory":
            raise ValueError("the memory store lives inside one process: nothing to read")
        self.url = url
        self.kind = kind
        self._timeout = timeout
        if kind == "redis":
            self._client: Any = redis.Redis.from_url(
                normalised,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                client_name="ratewall-admin",
            )
        else:
            self._client = self._guard(lambda: make_client(url, timeout))

    def _guard(self, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except (redis.RedisError, RedisClusterException, OSError) as error:
            raise StoreError(
                f"the store {redacted(self.url)} failed: {type(error).__name__}: "
                f"{redacted(str(error))}"
            ) from error

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _node_of(self, key: str) -> Any:
        """A plain client on the server that holds ``key``."""
        if self.kind != "cluster":
            return self._client
        return self._guard(lambda: self._client.get_node_from_key(key).redis_connection)

    def read(self, key: str, algorithm: str) -> KeyState:
        """``key``'s state as ``algorithm`` reads it, with the server's clock, atomically."""
        return self._snapshot(key, algorithm, remove=False)

    def take(self, key: str, algorithm: str) -> KeyState:
        """Remove ``key``, returning what it held: read and removal are one MULTI/EXEC, so
        what is returned is exactly what was removed."""
        return self._snapshot(key, algorithm, remove=True)

    def _snapshot(self, key: str, algorithm: str, *, remove: bool) -> KeyState:
        def run() -> list[Any]:
            pipe = self._node_of(key).pipeline(transaction=True)
            pipe.time().type(key).pttl(key)
            if algorithm == "sliding_log":
                pipe.lrange(key, 0, -1)
            else:
                pipe.get(key)
            if remove:
                pipe.delete(key)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            return replies

        (seconds, micros), redis_type, pttl, value = self._guard(run)[:4]
        redis_type = redis_type.decode() if isinstance(redis_type, bytes) else str(redis_type)
        if isinstance(value, Exception):  # WRONGTYPE: the other shape; TYPE says which
            value = None
        return _key_state(key, algorithm, seconds * 1_000_000 + micros, redis_type, pttl, value)

    def read_many(self, keys: Sequence[str], algorithm: str) -> tuple[list[KeyState], int]:
        """The states of ``keys`` and the round trips it took (pipelined, a batch at a time:
        each key is read atomically, but not all keys at one instant). A key that expired
        since it was found is read as no key."""
        states: list[KeyState] = []
        trips = 0
        for first in range(0, len(keys), _READ_BATCH):
            batch = keys[first : first + _READ_BATCH]
            for node, members in self._by_node(batch):

                def run(node: Any = node, members: Sequence[str] = members) -> list[Any]:
                    pipe = node.pipeline(transaction=False)
                    pipe.time()
                    for key in members:
                        pipe.type(key).pttl(key)
                        if algorithm == "sliding_log":
                            pipe.lrange(key, 0, -1)
                        else:
                            pipe.get(key)
                    replies: list[Any] = pipe.execute(raise_on_error=False)
                    return replies

                replies = self._guard(run)
                trips += 1
                seconds, micros = replies[0]
                now = seconds * 1_000_000 + micros
                for index, key in enumerate(members):
                    redis_type, pttl, value = replies[1 + 3 * index : 4 + 3 * index]
                    if isinstance(value, Exception):
                        value = None
                    redis_type = redis_type.decode() if isinstance(redis_type, bytes) else "none"
                    states.append(_key_state(key, algorithm, now, redis_type, pttl, value))
        return states, trips

    def _by_node(self, keys: Sequence[str]) -> list[tuple[Any, list[str]]]:
        if self.kind != "cluster":
            return [(self._client, list(keys))]
        groups: dict[str, tuple[Any, list[str]]] = {}
        for key in keys:
            node = self._guard(functools.partial(self._client.get_node_from_key, key))
            groups.setdefault(node.name, (node.redis_connection, []))[1].append(key)
        return list(groups.values())

    def scan(self, pattern: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> ScanResult:
        """The keys matching the glob ``pattern``, by SCAN (never KEYS), stopping once about
        ``limit`` keys were examined or the keyspace is covered. A cluster's primaries are
        walked one after another, sharing ``limit``."""
        count = max(1, min(_SCAN_COUNT, limit))
        nodes = self._nodes()
        found: dict[str, None] = {}  # SCAN may return a key twice
        calls = 0
        complete = True
        for node in nodes:
            cursor = 0
            while complete:
                if calls * count >= limit:
                    complete = False
                    break
                cursor, keys = self._guard(
                    functools.partial(node.scan, cursor, match=pattern, count=count)
                )
                calls += 1
                for key in keys:
                    found[key.decode() if isinstance(key, bytes) else key] = None
                if cursor == 0:
                    break
        return ScanResult(tuple(found), calls, count, limit, complete, len(nodes), self._dbsize())

    def _nodes(self) -> list[Any]:
        if self.kind != "cluster":
            return [self._client]
        primaries = self._guard(self._client.get_primaries)
        return [node.redis_connection for node in primaries]

    def _dbsize(self) -> int | None:
        try:
            return sum(int(node.dbsize()) for node in self._nodes())
        except (redis.RedisError, StoreError):  # only for scale: not worth a failure
            return None


def _key_state(
    key: str, algorithm: str, now: int, redis_type: str, pttl: Any, value: Any
) -> KeyState:
    if redis_type == "list" and algorithm != "sliding_log":
        value = None
    state, note = decode_state(algorithm, redis_type, value)
    ttl = pttl / 1000 if isinstance(pttl, int) and pttl >= 0 else None
    if redis_type != "none" and pttl == -1:
        missing = "the key has no TTL, which ratewall never writes"
        note = f"{note}; {missing}" if note else missing
    return KeyState(key, algorithm, now, redis_type, ttl, state, note)
