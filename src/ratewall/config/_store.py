"""The settings that say how the store is reached and guarded: its URL, the timeout of one
call, the circuit breaker (``breaker``) and the asyncio store's batching (``batching``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .._urls import STORE_SCHEMES, redacted, store_url_problem
from ..core import DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD
from ..errors import ConfigError
from ..policy import parse_duration
from ..stores.base import DEFAULT_TIMEOUT
from ..stores.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_IN_FLIGHT, MAX_BATCH
from ._fields import Problems, kind_of, unknown_fields

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "NO_BATCHING_SETTINGS",
    "NO_BREAKER_SETTINGS",
    "Batching",
    "Breaker",
    "batching_section",
    "breaker_section",
    "timeout_setting",
    "validate_store_url",
]

# A store call that may block for longer than this is a misconfiguration, not a timeout (and
# much larger values overflow the socket layer).
MAX_TIMEOUT: Final = 3600.0
#: More store calls in flight than this is no longer batching but a connection pool.
MAX_IN_FLIGHT: Final = 64
#: More consecutive failures than this before failing fast is no breaker at all.
MAX_BREAKER_THRESHOLD: Final = 1_000_000
_BREAKER_FIELDS: Final = ("threshold", "cooldown")
_BATCHING_FIELDS: Final = ("max_in_flight", "max_batch")


@dataclass(frozen=True, slots=True)
class Breaker:
    """The ``breaker`` section: after ``threshold`` consecutive store failures, calls fail
    fast (as the policy's failure mode says) for ``cooldown`` seconds, then one probes."""

    threshold: int = DEFAULT_BREAKER_THRESHOLD
    cooldown: float = DEFAULT_BREAKER_COOLDOWN


@dataclass(frozen=True, slots=True)
class Batching:
    """The ``batching`` section (asyncio limiters on Redis/Valkey): at most ``max_in_flight``
    script calls in flight at once, each carrying at most ``max_batch`` decisions."""

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_batch: int = DEFAULT_MAX_BATCH


#: The settings a config without a ``breaker`` or ``batching`` section gets (the defaults).
NO_BREAKER_SETTINGS: Final = Breaker()
NO_BATCHING_SETTINGS: Final = Batching()


def validate_store_url(value: object, *, source: str, field: str) -> str:
    """``value`` if it is a URL string with one of :data:`STORE_SCHEMES` and well-formed parts
    (port, database, socket path, parameters: ``ratewall._urls.store_url_problem``), else
    ConfigError."""
    examples = "such as 'redis://127.0.0.1:6379/0' or 'memory://'"
    if not isinstance(value, str):
        raise ConfigError(
            f"must be a store URL string {examples}, got {kind_of(value)}",
            source=source,
            field=field,
        )
    scheme, separator, _ = value.partition("://")
    if not separator or scheme not in STORE_SCHEMES:
        expected = ", ".join(f"{name}://" for name in STORE_SCHEMES)
        raise ConfigError(
            f"store URL {redacted(value)!r} has an unsupported scheme; expected one of {expected}",
            source=source,
            field=field,
        )
    problem = store_url_problem(value)
    if problem is not None:
        raise ConfigError(problem, source=source, field=field)
    return value


def timeout_setting(value: object, *, source: str) -> float:
    """The ``timeout`` setting: the most one decision may wait for the store."""
    return _seconds(value, source=source, field="timeout", example=("0.05", "50ms"))


def breaker_section(section: object, *, source: str) -> Breaker:
    """The ``breaker`` section, checked: ``{threshold: 3, cooldown: 1s}`` (each optional)."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"must be a mapping such as {{threshold: 3, cooldown: 1s}}, got {kind_of(section)}",
            source=source,
            field="breaker",
        )
    problems = Problems()
    for error in unknown_fields(section, _BREAKER_FIELDS, "breaker", source):
        problems.add(error)
    breaker = Breaker(
        threshold=problems.attempt(
            lambda: _count(
                section.get("threshold", DEFAULT_BREAKER_THRESHOLD),
                MAX_BREAKER_THRESHOLD,
                "consecutive store failures that open the breaker",
                source=source,
                field="breaker.threshold",
            ),
            DEFAULT_BREAKER_THRESHOLD,
        ),
        cooldown=problems.attempt(
            lambda: _seconds(
                section.get("cooldown", DEFAULT_BREAKER_COOLDOWN),
                source=source,
                field="breaker.cooldown",
                example=("1", "1s"),
            ),
            DEFAULT_BREAKER_COOLDOWN,
        ),
    )
    problems.raise_first()
    return breaker


def batching_section(section: object, *, source: str) -> Batching:
    """The ``batching`` section, checked: ``{max_in_flight: 2, max_batch: 512}`` (each
    optional)."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            "must be a mapping such as {max_in_flight: 2, max_batch: 512}, "
            f"got {kind_of(section)}",
            source=source,
            field="batching",
        )
    problems = Problems()
    for error in unknown_fields(section, _BATCHING_FIELDS, "batching", source):
        problems.add(error)
    batching = Batching(
        max_in_flight=problems.attempt(
            lambda: _count(
                section.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT),
                MAX_IN_FLIGHT,
                "script calls in flight at once",
                source=source,
                field="batching.max_in_flight",
            ),
            DEFAULT_MAX_IN_FLIGHT,
        ),
        max_batch=problems.attempt(
            lambda: _count(
                section.get("max_batch", DEFAULT_MAX_BATCH),
                MAX_BATCH,
                "decisions one script call carries",
                source=source,
                field="batching.max_batch",
            ),
            DEFAULT_MAX_BATCH,
        ),
    )
    problems.raise_first()
    return batching


def _count(value: object, top: int, what: str, *, source: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ConfigError(
            f"must be an integer from 1 to {top} ({what}), got {value!r}",
            source=source,
            field=field,
        )
    return value


def _seconds(value: object, *, source: str, field: str, example: tuple[str, str]) -> float:
    """A positive number of seconds or a duration string, at most :data:`MAX_TIMEOUT`."""
    number, duration = example
    if isinstance(value, str):
        seconds = parse_duration(value, source=source, field=field)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(
                f"must be a positive number of seconds, got {value!r}; "
                f"write seconds ({number}) or a duration such as '{duration}'",
                source=source,
                field=field,
            )
    else:
        raise ConfigError(
            f"expected seconds ({number}) or a duration such as '{duration}', got {kind_of(value)}",
            source=source,
            field=field,
        )
    if seconds > MAX_TIMEOUT:
        what = "a store timeout" if field == "timeout" else "it"
        raise ConfigError(
            f"is {seconds:g} seconds; {what} is at most {MAX_TIMEOUT:g} seconds",
            source=source,
            field=field,
        )
    return seconds
