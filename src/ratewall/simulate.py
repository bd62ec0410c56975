"""Replay a traffic pattern through every algorithm, for comparing them (``ratewall simulate``).

Each algorithm gets the same policy (limit, window, burst) and the same requests, decided by
a :class:`~ratewall.RateLimiter` on the memory store whose clock is a
:class:`~ratewall.testing.FakeClock` set to each request's time: the production decision
code, with no second implementation of any algorithm, and no waiting (a minute of traffic
replays in milliseconds).

>>> events = steady(rate=1.0, duration=30.0)
>>> result = simulate(events, limit=5, window=10.0, algorithms=("fixed_window",))
>>> summary = result.runs[0].summary
>>> (summary.admitted, summary.refused, summary.max_in_window)
(15, 15, 5)

Traffic comes from :func:`steady`, :func:`bursty` or :func:`read_trace` (a CSV file of
``timestamp,identity,cost`` rows). :func:`plot` draws admitted and refused requests over
time per algorithm (needs matplotlib: ``pip install 'ratewall[simulate]'``).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .limiter import RateLimiter
from .policy import ALGORITHMS, Policy, format_duration
from .testing import FakeClock

__all__ = [
    "ALGORITHMS",
    "Event",
    "Run",
    "Simulation",
    "Summary",
    "bursty",
    "plot",
    "read_trace",
    "simulate",
    "steady",
]

_POLICY = "simulated"
# Where the simulated clock starts: any fixed point; times in results are relative to it.
_EPOCH = 1_700_000_000.0


@dataclass(frozen=True, slots=True)
class Event:
    """One request: ``time`` in seconds from the start of the pattern, the ``identity``
    asking, and its ``cost`` in units. ``line`` is its line in a trace file, if any."""

    time: float
    identity: str = "client"
    cost: int = 1
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """What one algorithm did with the pattern.

    ``admitted`` and ``refused`` count requests. ``max_in_window`` is the most units
    admitted in any span of one window's length (for all identities together);
    ``burstiness`` is ``max_in_window / limit``: 1.0 means no span of a window's length
    ever admitted more than the limit, 2.0 that some span admitted twice the limit.
    """

    admitted: int
    refused: int
    admitted_units: int
    max_in_window: int
    burstiness: float


@dataclass(frozen=True, slots=True)
class Run:
    """One algorithm's decisions, in event order (``allowed[i]`` for ``events[i]``)."""

    algorithm: str
    allowed: tuple[bool, ...]
    summary: Summary


@dataclass(frozen=True, slots=True)
class Simulation:
    events: tuple[Event, ...]
    limit: int
    window: float
    burst: int | None
    runs: tuple[Run, ...] = field(default=())

    @property
    def duration(self) -> float:
        return self.events[-1].time - self.events[0].time if self.events else 0.0


def steady(rate: float, duration: float, identity: str = "client") -> list[Event]:
    """``rate`` requests per second, evenly spaced, for ``duration`` seconds from 0."""
    _require_positive(rate, "rate")
    _require_positive(duration, "duration")
    count = math.floor(rate * duration + 1e-9)
    return [Event(index / rate, identity) for index in range(count)]


def bursty(rate: float, duration: float, burst_size: int, identity: str = "client") -> list[Event]:
    """``rate`` requests per second on average, arriving ``burst_size`` at a time: a burst
    at 0, then one every ``burst_size / rate`` seconds, while within ``duration``."""
    _require_positive(rate, "rate")
    _require_positive(duration, "duration")
    if burst_size < 1:
        raise ConfigError(f"must be at least 1, got {burst_size}", field="burst_size")
    period = burst_size / rate
    events: list[Event] = []
    index = 0
    while index * period < duration - 1e-9:
        events.extend(Event(index * period, identity) for _ in range(burst_size))
        index += 1
    return events


def read_trace(path: str | Path) -> list[Event]:
    """The requests of a CSV trace: one ``timestamp,identity[,cost]`` row per request
    (an optional first row naming those columns). Timestamps are seconds (epoch or any
    origin: the first request's time becomes 0) and may come in any order; ``cost``
    defaults to 1. Raises :class:`~ratewall.ConfigError` naming the file, the line and the
    reason for the first bad row."""
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except OSError as error:
        raise ConfigError(
            f"cannot read the trace: {error.strerror or error}", source=source
        ) from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"not a CSV text file: {error}", source=source) from None
    events: list[Event] = []
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if number == 1 and cells[0].lower() in {"timestamp", "time"}:
            continue  # the header row
        where = f"line {number}"
        if len(cells) not in (2, 3):
            raise ConfigError(
                f"expected 2 or 3 fields (timestamp,identity[,cost]), got {len(cells)}",
                source=source,
                field=where,
            )
        try:
            time = float(cells[0])
        except ValueError:
            time = math.nan
        if not math.isfinite(time):
            raise ConfigError(
                f"timestamp must be a number of seconds, got {cells[0]!r}",
                source=source,
                field=where,
            )
        if not cells[1]:
            raise ConfigError("identity is empty", source=source, field=where)
        cost = 1
        if len(cells) == 3:
            try:
                cost = int(cells[2])
            except ValueError:
                cost = 0
            if cost < 1:
                raise ConfigError(
                    f"cost must be a whole number >= 1, got {cells[2]!r}",
                    source=source,
                    field=where,
                )
        events.append(Event(time, cells[1], cost, number))
    if not events:
        raise ConfigError("the trace holds no request", source=source)
    events.sort(key=lambda event: event.time)  # stable: rows of one instant keep their order
    start = events[0].time
    return [Event(e.time - start, e.identity, e.cost, e.line) for e in events]


def simulate(
    events: Sequence[Event],
    *,
    limit: int,
    window: float | str,
    burst: int | None = None,
    algorithms: Iterable[str] = ALGORITHMS,
    source: str = "the pattern",
) -> Simulation:
    """Replay ``events`` (in time order) through each algorithm with the same policy."""
    ordered = tuple(events)
    if any(later.time < earlier.time for earlier, later in itertools.pairwise(ordered)):
        raise ConfigError("events must be in time order", source=source)
    policies = {
        algorithm: Policy(limit, window, algorithm, burst=burst if _bucket(algorithm) else None)
        for algorithm in algorithms
    }
    for algorithm, policy in policies.items():
        for event in ordered:
            if event.cost > policy.capacity:
                raise ConfigError(
                    f"cost {event.cost} exceeds the capacity {policy.capacity} of the simulated "
                    f"policy ({algorithm}), so that request could never pass: raise --limit "
                    "or --burst",
                    source=source,
                    field=f"line {event.line}" if event.line is not None else None,
                )
    window_seconds = next(iter(policies.values())).window_us / 1_000_000 if policies else 0.0
    runs = tuple(
        _run(algorithm, policy, ordered, window_seconds) for algorithm, policy in policies.items()
    )
    return Simulation(ordered, limit, window_seconds, burst, runs)


def _bucket(algorithm: str) -> bool:
    return algorithm in ("token_bucket", "gcra")


def _run(algorithm: str, policy: Policy, events: Sequence[Event], window: float) -> Run:
    clock = FakeClock(_EPOCH)
    allowed: list[bool] = []
    with RateLimiter({_POLICY: policy}, "memory://", clock=clock) as limiter:
        check = limiter.check
        for event in events:
            clock.set(_EPOCH + event.time)
            allowed.append(check(event.identity, _POLICY, event.cost).allowed)
    admitted = [event for event, passed in zip(events, allowed, strict=True) if passed]
    most = _max_in_span(admitted, window)
    summary = Summary(
        admitted=len(admitted),
        refused=len(events) - len(admitted),
        admitted_units=sum(event.cost for event in admitted),
        max_in_window=most,
        burstiness=most / policy.limit,
    )
    return Run(algorithm, tuple(allowed), summary)


def _max_in_span(admitted: Sequence[Event], span: float) -> int:
    """The most units admitted within any half-open span ``[t, t + span)``: the best span
    starts at an admitted request, so two pointers over them find it."""
    best = total = 0
    first = 0
    for event in admitted:
        total += event.cost
        while admitted[first].time <= event.time - span:
            total -= admitted[first].cost
            first += 1
        best = max(best, total)
    return best


def summary_table(result: Simulation) -> str:
    """The text summary: one row per algorithm."""
    span = format_duration(result.window)
    header = ("algorithm", "admitted", "refused", f"max in any {span}", "burstiness")
    rows = [
        (
            run.algorithm,
            str(run.summary.admitted),
            str(run.summary.refused),
            str(run.summary.max_in_window),
            f"{run.summary.burstiness:.2f}",
        )
        for run in result.runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def describe(result: Simulation, pattern: str, duration: float | None = None) -> str:
    """One line on the traffic (over ``duration`` seconds, default the first to the last
    request) and the policy, above the table."""
    identities = len({event.identity for event in result.events})
    count = len(result.events)
    span = duration if duration is not None else result.duration
    rate = count / span if span > 0 else math.inf
    burst = f", burst {result.burst} (bucket algorithms)" if result.burst is not None else ""
    return (
        f"{pattern}: {count} requests over {span:g} s ({rate:.3g}/s), "
        f"{identities} {'identity' if identities == 1 else 'identities'}; "
        f"policy: {result.limit} per {format_duration(result.window)}{burst}"
    )


def plot(
    result: Simulation,
    outputs: Sequence[str | Path],
    *,
    title: str,
    bucket: float | None = None,
) -> None:
    """Draw admitted and refused requests over time, one panel per algorithm, into each of
    ``outputs`` (the format from the extension: ``.png``, ``.svg``). ``bucket`` is the
    bar width in seconds (default: a tenth of the window, widened to keep at most 400
    bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install 'ratewall[simulate]' (or pass --no-plot)",
            source="ratewall simulate",
        ) from None
    matplotlib.rcParams["svg.hashsalt"] = "ratewall"  # the same input draws the same file
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    end = max(result.duration, result.window)
    width = bucket if bucket is not None else result.window / 10
    width = max(width, end / 400)
    count = math.floor(end / width) + 1
    edges = [index * width for index in range(count)]
    figure, axes = plt.subplots(
        len(result.runs), 1, sharex=True, figsize=(10, 1.6 * len(result.runs) + 1.2), squeeze=False
    )
    for axis, run in zip(axes[:, 0], result.runs, strict=True):
        admitted = [0] * count
        refused = [0] * count
        for event, passed in zip(result.events, run.allowed, strict=True):
            slot = min(math.floor(event.time / width), count - 1)
            (admitted if passed else refused)[slot] += 1
        axis.bar(edges, admitted, width=width, align="edge", color="#2a9d8f", label="admitted")
        axis.bar(
            edges,
            refused,
            width=width,
            align="edge",
            bottom=admitted,
            color="#e76f51",
            label="refused",
        )
        summary = run.summary
        axis.set_title(
            f"{run.algorithm}: {summary.admitted} admitted, {summary.refused} refused, "
            f"at most {summary.max_in_window} in any {format_duration(result.window)}",
            fontsize=9,
            loc="left",
        )
        axis.set_ylabel("requests", fontsize=8)
        axis.tick_params(labelsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel(f"seconds (bars of {width:g} s)", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    for output in outputs:
        path = Path(output)
        metadata = {"Date": None} if path.suffix == ".svg" else {"Software": None}
        figure.savefig(path, dpi=100, metadata=metadata)
    plt.close(figure)


def _require_positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a positive number, got {value!r}", field=name)
