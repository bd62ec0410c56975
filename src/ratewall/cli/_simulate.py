"""``ratewall simulate``: replay a traffic pattern through every algorithm with one limit,
print what each admitted and refused, and plot it (see :mod:`ratewall.simulate`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..policy import ALGORITHMS, parse_duration
from ..simulate import Event, bursty, describe, plot, read_trace, simulate, steady, summary_table
from ._common import EXIT_OK, integer

__all__ = ["register"]


def register(commands: Any) -> None:
    command = commands.add_parser(
        "simulate",
        help="replay a traffic pattern through every algorithm and plot what each admits",
        description="Replay a traffic pattern (steady, bursty, or a recorded CSV trace) "
        "through each algorithm with the same limit, on the memory store with a simulated "
        "clock (the production decision code; takes seconds), print a summary per algorithm "
        "and write a plot of admitted and refused requests over time (PNG and SVG; needs "
        "matplotlib: pip install 'ratewall[simulate]').",
    )
    command.add_argument(
        "pattern",
        choices=("steady", "bursty", "trace"),
        help="steady: evenly spaced requests; bursty: the same average rate in bursts; "
        "trace: the requests of --trace FILE",
    )
    command.add_argument(
        "--trace",
        metavar="FILE",
        help="CSV of timestamp,identity[,cost] rows (seconds; optional header row)",
    )
    command.add_argument("--limit", type=_positive_integer, default=10, help="default 10")
    command.add_argument(
        "--window", type=_duration, default=10.0, help="seconds or 500ms/10s/1m (default 10s)"
    )
    command.add_argument(
        "--burst", type=_positive_integer, help="bucket capacity of token_bucket and gcra"
    )
    command.add_argument(
        "--rate",
        type=_positive_number,
        help="requests per second, steady and bursty (default: twice limit/window)",
    )
    command.add_argument(
        "--duration",
        type=_positive_number,
        default=60.0,
        help="seconds of steady or bursty traffic (default 60)",
    )
    command.add_argument(
        "--burst-size",
        type=_positive_integer,
        help="requests per burst of the bursty pattern (default: the limit)",
    )
    command.add_argument(
        "--algorithms",
        type=_algorithms,
        default=ALGORITHMS,
        help=f"comma-separated (default all: {','.join(ALGORITHMS)})",
    )
    command.add_argument(
        "--output",
        metavar="PATH",
        default="ratewall-simulation",
        help="where the plot goes: PATH.png and PATH.svg (default ./ratewall-simulation)",
    )
    command.add_argument("--bucket", type=_positive_number, help="bar width of the plot in seconds")
    command.add_argument("--no-plot", action="store_true", help="print the summary only")
    command.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    events = _events(args)
    source = args.trace if args.pattern == "trace" else f"the {args.pattern} pattern"
    result = simulate(
        events,
        limit=args.limit,
        window=args.window,
        burst=args.burst,
        algorithms=args.algorithms,
        source=source,
    )
    if args.pattern == "trace":
        heading = describe(result, f"trace {args.trace}")
    else:
        heading = describe(result, args.pattern, args.duration)
    print(heading)
    print()
    print(summary_table(result))
    if not args.no_plot:
        base = Path(args.output)
        outputs = [base.with_name(base.name + ".png"), base.with_name(base.name + ".svg")]
        if not base.parent.is_dir():
            raise ConfigError(f"directory {str(base.parent)!r} does not exist", field="--output")
        plot(result, outputs, title=heading, bucket=args.bucket)
        print()
        print(f"wrote {outputs[0]} and {outputs[1]}")
    return EXIT_OK


def _events(args: argparse.Namespace) -> list[Event]:
    if args.pattern == "trace":
        if args.trace is None:
            raise ConfigError("the trace pattern needs --trace FILE (a CSV file)", field="--trace")
        return read_trace(args.trace)
    if args.trace is not None:
        raise ConfigError(f"--trace goes with the trace pattern, not {args.pattern}")
    rate = args.rate if args.rate is not None else 2 * args.limit / args.window
    if args.pattern == "steady":
        return steady(rate, args.duration)
    burst_size = args.burst_size if args.burst_size is not None else args.limit
    return bursty(rate, args.duration, burst_size)


def _positive_integer(text: str) -> int:
    number = integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _positive_number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return number


def _duration(text: str) -> float:
    try:
        value: object = float(text)
    except ValueError:
        value = text
    try:
        return parse_duration(value, source="--window", field="")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.reason) from None


def _algorithms(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown algorithm {', '.join(map(repr, unknown)) or '(none)'}; "
            f"known: {', '.join(ALGORITHMS)}"
        )
    return names
