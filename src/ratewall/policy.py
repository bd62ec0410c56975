"""A policy: how many units an identity may spend over what time, and by which algorithm."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from ._suggest import did_you_mean
from .errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "CONCURRENCY",
    "FAILURE_MODES",
    "Algorithm",
    "FailureMode",
    "Policy",
    "local_share",
    "parse_duration",
]

RateAlgorithm = Literal["fixed_window", "sliding_window", "sliding_log", "token_bucket", "gcra"]
Algorithm = RateAlgorithm | Literal["concurrency"]
FailureMode = Literal["raise", "open", "closed", "local"]
#: The rate algorithms: those :meth:`~ratewall.RateLimiter.check` decides.
ALGORITHMS: Final[tuple[str, ...]] = get_args(RateAlgorithm)
#: The one algorithm that is not a rate: at most ``limit`` slots held at once, each a lease
#: of ``window`` seconds (see :meth:`~ratewall.RateLimiter.slot`).
CONCURRENCY: Final = "concurrency"
_KNOWN_ALGORITHMS: Final = (*ALGORITHMS, CONCURRENCY)
FAILURE_MODES: Final[tuple[str, ...]] = get_args(FailureMode)

# Every algorithm's arithmetic runs on integers both in Python and in Redis' Lua, whose numbers
# are doubles: products must stay below 2**53 to be exact. These bounds keep a safety factor.
_EXACT: Final = 2**53
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SOURCE: Final = "<policy>"
_MAX_WINDOW_SECONDS: Final = 10 * 366 * 86400.0


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def parse_duration(value: object, *, source: str = _SOURCE, field: str = "window") -> float:
    """Seconds from a number of seconds or a string such as ``"500ms"``, ``"10s"``, ``"1m"``."""
    if isinstance(value, bool):
        raise ConfigError(
            f"expected seconds or a duration like '1m', got {value!r}", source=source, field=field
        )
    if isinstance(value, int | float):
        # A huge int would overflow float(); any value past the maximum is reported below.
        too_big = isinstance(value, int) and value > _MAX_WINDOW_SECONDS
        seconds = float("inf") if too_big else float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            bare = value.strip()
            hint = (
                f"a string needs a unit ('{bare}s'), or write the seconds as a number ({bare})"
                if _is_number(bare)
                else "write seconds as a number, or a number with one of the units ms, s, m, "
                "h, d (for example '500ms', '10s', '1m')"
            )
            raise ConfigError(f"{value!r} is not a duration; {hint}", source=source, field=field)
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise ConfigError(
            f"expected seconds or a duration like '1m', got {type(value).__name__}",
            source=source,
            field=field,
        )
    if math.isnan(seconds) or seconds <= 0:
        raise ConfigError(f"must be a positive duration, got {value!r}", source=source, field=field)
    if seconds > _MAX_WINDOW_SECONDS:
        raise ConfigError(
            f"is too large; at most {_MAX_WINDOW_SECONDS:.0f} seconds (10 years)",
            source=source,
            field=field,
        )
    micros = seconds * 1_000_000
    if micros < 1000 or abs(micros / 1000 - round(micros / 1000)) > 1e-6:
        raise ConfigError(
            f"must be a whole number of milliseconds (at least 1ms), got {value!r}",
            source=source,
            field=field,
        )
    return seconds


def _positive_int(value: object, *, source: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be a positive integer, got {value!r}", source=source, field=field)
    if value < 1:
        raise ConfigError(f"must be a positive integer, got {value!r}", source=source, field=field)
    if value >= _EXACT // 4:
        raise ConfigError(
            f"is too large ({value}); at most {_EXACT // 4 - 1}", source=source, field=field
        )
    return value


@dataclass(frozen=True, slots=True)
class Policy:
    """``limit`` units per ``window`` (seconds, or a duration string such as ``"1m"``).

    ``algorithm`` is one of :data:`ALGORITHMS`, or :data:`CONCURRENCY` (``"concurrency"``):
    at most ``limit`` slots held at once per identity, ``window`` being each slot's lease
    (see :meth:`~ratewall.RateLimiter.slot`). ``burst`` is the bucket capacity of
    ``token_bucket`` and ``gcra`` (default: ``limit``); the other algorithms reject it.
    ``failure_mode`` says what a decision does when the store fails: ``"raise"`` raises
    :class:`~ratewall.StoreError`, ``"open"`` allows, ``"closed"`` refuses, and ``"local"``
    enforces this process's share of the limit in memory: ``ceil(limit / local_nodes)`` (and
    of ``burst``) per window, with the policy's algorithm, counted per identity in a table
    that outlives one failed call and is dropped only as its entries expire (at most
    ``local_cache_size`` identities per policy; beyond, the oldest entry is forgotten).
    Set ``local_nodes`` (default 1) to the number of limiter processes that share the
    policy (every worker of every machine): with N processes, **an outage admits at most
    ``N × ceil(limit / local_nodes)`` units per window**, plus what the store had admitted
    in the window the outage began (the store does not learn of local admissions when it
    returns). The three modes other than ``"raise"`` mark the decision ``degraded``; a
    ``"local"`` one also has ``source == "local"``.

    ``lease`` (off by default) trades exactness for throughput on very hot keys: a node takes
    up to ``lease`` units from the store in one call and spends them locally, without a round
    trip, until they run out or its window ends. Slices shrink near the limit (at most half
    of what remains). **Worst case: up to ``nodes × lease`` units more than ``limit`` are
    admitted in a window** (units a node leased before the window ended, spent after it), and
    units leased but never spent are lost for that window. Without ``lease`` the limit is exact.
    Limiters on the memory store ignore it (they are the store).

    ``shadow`` deploys a limit without enforcing it: decisions are computed and state is
    consumed exactly as if it were enforced, but a refused request is allowed, with
    :attr:`Decision.shadowed` set, so that a team can watch what it would refuse.

    ``exempt`` identities are always allowed and nothing is stored for them.
    ``overrides`` gives identities limits of their own (``{"partner_1": {"limit": 1000}}``:
    any of ``limit``, ``window`` and ``burst``, the rest inherited); ``tiers`` names sets of
    limits chosen per call (``check(identity, policy, tier="pro")``). An override wins over
    a tier. Overrides and tiers keep the policy's algorithm, key and state: an identity that
    moves to another tier keeps what it consumed, measured against its new limit.
    """

    limit: int
    window: float | str  # normalised to float seconds on construction
    algorithm: Algorithm | str = "fixed_window"  # validated: ALGORITHMS or CONCURRENCY
    burst: int | None = None
    failure_mode: FailureMode | str = "raise"  # validated: one of FAILURE_MODES
    lease: int | None = None
    shadow: bool = False
    exempt: frozenset[str] | Any = field(default=frozenset(), hash=False)
    overrides: Mapping[str, Policy] | Any = field(default_factory=dict, hash=False)
    tiers: Mapping[str, Policy] | Any = field(default_factory=dict, hash=False)
    local_nodes: int = 1  # validated: a positive int (see failure_mode "local")
    # Derived once, used on every decision.
    window_us: int = field(init=False, repr=False, compare=False)
    capacity: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate(_SOURCE, "")

    def _validate(self, source: str, prefix: str) -> None:
        def at(name: str) -> str:
            return f"{prefix}{name}"

        limit = _positive_int(self.limit, source=source, field=at("limit"))
        window = parse_duration(self.window, source=source, field=at("window"))
        if self.algorithm not in _KNOWN_ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {self.algorithm!r}; expected one of "
                f"{', '.join(_KNOWN_ALGORITHMS)}",
                source=source,
                field=at("algorithm"),
            )
        if self.failure_mode not in FAILURE_MODES:
            raise ConfigError(
                f"unknown failure mode {self.failure_mode!r}; "
                f"expected one of {', '.join(FAILURE_MODES)}",
                source=source,
                field=at("failure_mode"),
            )
        if self.burst is not None and self.algorithm not in ("token_bucket", "gcra"):
            raise ConfigError(
                f"burst applies only to token_bucket and gcra, not {self.algorithm}",
                source=source,
                field=at("burst"),
            )
        capacity = (
            limit
            if self.burst is None
            else _positive_int(self.burst, source=source, field=at("burst"))
        )
        if self.failure_mode == "local" and self.algorithm == CONCURRENCY:
            raise ConfigError(
                "failure_mode 'local' (a share of the rate in each process) applies to rate "
                "algorithms; give this concurrency policy its own failure_mode: raise, open or "
                "closed",
                source=source,
                field=at("failure_mode"),
            )
        if self.lease is not None and self.algorithm == CONCURRENCY:
            raise ConfigError(
                "lease (units taken ahead for local spending) applies to rate algorithms; a "
                "concurrency policy's window is already the lease each slot holder gets",
                source=source,
                field=at("lease"),
            )
        if self.lease is not None:
            lease = _positive_int(self.lease, source=source, field=at("lease"))
            if lease > capacity:
                raise ConfigError(
                    f"lease ({lease}) must be at most the policy's "
                    f"{'burst' if self.burst is not None else 'limit'} ({capacity})",
                    source=source,
                    field=at("lease"),
                )
        _positive_int(self.local_nodes, source=source, field=at("local_nodes"))
        window_us = round(window * 1_000_000)
        if self.algorithm == "sliding_window" and 4 * limit * (window_us // 1000) >= _EXACT:
            raise ConfigError(
                "limit × window is too large for exact sliding-window arithmetic; "
                "use a shorter window or fixed_window",
                source=source,
                field=at("limit"),
            )
        if self.algorithm in ("token_bucket", "gcra"):
            _, interval_units = bucket_ratio(limit, window_us)
            if 4 * capacity * interval_units >= _EXACT:
                raise ConfigError(
                    "burst is too large for this limit and window to be computed exactly",
                    source=source,
                    field=at("burst" if self.burst is not None else "limit"),
                )
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "window_us", window_us)
        object.__setattr__(self, "capacity", capacity)
        if not isinstance(self.shadow, bool):
            raise ConfigError(
                f"must be true or false, got {self.shadow!r}", source=source, field=at("shadow")
            )
        object.__setattr__(self, "exempt", _identities(self.exempt, source, at("exempt")))
        for kind in ("overrides", "tiers"):
            variants = _variants(self, getattr(self, kind), source, at(kind))
            object.__setattr__(self, kind, variants)

    def _variant(self, changes: object, source: str, field: str) -> Policy:
        """This policy with some of limit, window and burst changed (an override or a tier)."""
        if isinstance(changes, Policy):
            changes = {name: getattr(changes, name) for name in _VARIANT_FIELDS}
        if not isinstance(changes, Mapping) or not changes:
            raise ConfigError(
                f"must be a mapping of at least one of {', '.join(_VARIANT_FIELDS)}",
                source=source,
                field=field,
            )
        for key in changes:
            if key not in _VARIANT_FIELDS:
                raise ConfigError(
                    f"unknown field {key!r}; an override or tier sets any of "
                    f"{', '.join(_VARIANT_FIELDS)} (the rest is the policy's)"
                    + did_you_mean(key, _VARIANT_FIELDS),
                    source=source,
                    field=f"{field}.{key}",
                )
        variant = object.__new__(Policy)
        for name in _FIELDS:
            value = changes.get(name, getattr(self, name)) if name in _VARIANT_FIELDS else None
            object.__setattr__(variant, name, value)
        for name in ("algorithm", "failure_mode", "lease", "shadow", "local_nodes"):
            object.__setattr__(variant, name, getattr(self, name))
        object.__setattr__(variant, "exempt", frozenset())
        object.__setattr__(variant, "overrides", {})
        object.__setattr__(variant, "tiers", {})
        variant._validate(source, f"{field}.")
        return variant

    @classmethod
    def from_mapping(cls, data: object, *, source: str, field: str) -> Policy:
        """Build a policy from config data, naming ``source`` and ``field`` in any error."""
        if not isinstance(data, dict):
            raise ConfigError(
                "must be a mapping with at least 'limit' and 'window'", source=source, field=field
            )
        allowed = _FIELDS
        for key in data:
            if key not in allowed:
                raise ConfigError(
                    f"unknown field {key!r}; expected one of {', '.join(allowed)}"
                    + did_you_mean(key, allowed),
                    source=source,
                    field=f"{field}.{key}",
                )
        for required in ("limit", "window"):
            if required not in data:
                raise ConfigError("is required", source=source, field=f"{field}.{required}")
        policy = object.__new__(cls)
        defaults: dict[str, object] = {
            "algorithm": "fixed_window",
            "failure_mode": "raise",
            "shadow": False,
            "local_nodes": 1,
            "exempt": frozenset(),
            "overrides": {},
            "tiers": {},
        }
        for name in allowed:
            object.__setattr__(policy, name, data.get(name, defaults.get(name)))
        policy._validate(source, f"{field}.")
        return policy

    def describe(self) -> str:
        """A one-line human summary, e.g. ``5 per 1m (fixed_window)``."""
        window = format_duration(self.window_us / 1_000_000)
        if self.algorithm == CONCURRENCY:
            text = f"{self.limit} at once, leases of {window} ({self.algorithm}"
        else:
            text = f"{self.limit} per {window} ({self.algorithm}"
        if self.burst is not None:
            text += f", burst {self.burst}"
        if self.failure_mode != "raise":
            text += f", fails {self.failure_mode}"
            if self.failure_mode == "local" and self.local_nodes > 1:
                text += f" (1/{self.local_nodes} per process)"
        if self.lease is not None:
            text += f", leases of {self.lease}"
        if self.shadow:
            text += ", shadow"
        if self.exempt:
            text += f", {len(self.exempt)} exempt"
        if self.overrides:
            text += f", {len(self.overrides)} overrides"
        if self.tiers:
            text += f", tiers {', '.join(sorted(self.tiers))}"
        return text + ")"


_FIELDS: Final = (
    "limit",
    "window",
    "algorithm",
    "burst",
    "failure_mode",
    "lease",
    "shadow",
    "exempt",
    "overrides",
    "tiers",
    "local_nodes",
)
_VARIANT_FIELDS: Final = ("limit", "window", "burst")


def _identities(value: object, source: str, field: str) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(
            f"must be a list of identities, got {type(value).__name__}", source=source, field=field
        )
    for index, identity in enumerate(value):
        if not isinstance(identity, str):
            raise ConfigError(
                f"must be an identity (a string), got {identity!r}",
                source=source,
                field=f"{field}[{index}]",
            )
    return frozenset(value)


def _variants(policy: Policy, value: object, source: str, field: str) -> Mapping[str, Policy]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"must be a mapping of names to limits, got {type(value).__name__}",
            source=source,
            field=field,
        )
    variants: dict[str, Policy] = {}
    for name, changes in value.items():
        # Any string is an identity (the empty one too); a tier needs a name.
        if not isinstance(name, str) or (not name and field.endswith("tiers")):
            what = "identities" if field.endswith("overrides") else "tier names"
            raise ConfigError(
                f"{what} must be {'strings' if what == 'identities' else 'non-empty strings'}, "
                f"got {name!r}",
                source=source,
                field=field,
            )
        variants[name] = policy._variant(changes, source, f"{field}.{name}")
    return MappingProxyType(variants)


def local_share(policy: Policy) -> Policy:
    """The policy one process enforces on its own while the store fails and the policy's
    failure mode is ``"local"``: its limit (and burst) divided by ``local_nodes``, rounded
    up, so that a share is never zero; the window and algorithm are the policy's."""
    nodes = policy.local_nodes
    if nodes == 1:
        return policy
    share = object.__new__(Policy)
    for name in _FIELDS:
        object.__setattr__(share, name, getattr(policy, name))
    object.__setattr__(share, "limit", -(-policy.limit // nodes))
    if policy.burst is not None:
        object.__setattr__(share, "burst", -(-policy.burst // nodes))
    object.__setattr__(share, "lease", None)
    object.__setattr__(share, "exempt", frozenset())
    object.__setattr__(share, "overrides", {})
    object.__setattr__(share, "tiers", {})
    share._validate(_SOURCE, "")
    return share


def bucket_ratio(limit: int, window_us: int) -> tuple[int, int]:
    """The refill rate as a reduced fraction: ``limit / window_us = rate_units / interval_units``.

    Bucket algorithms count tokens in units of ``1 / interval_units`` of a token, so refilling
    ``elapsed`` microseconds adds exactly ``elapsed * rate_units`` units: no rounding, ever.
    """
    divisor = math.gcd(limit, window_us)
    return limit // divisor, window_us // divisor


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"
