"""ratewall against its peers and the round-trip floor, side by side, in one run.

    python benchmarks/run.py            # everything, ~12 minutes on a 2-core VM
    python benchmarks/run.py --quick    # a smoke run, under 2 minutes

One freshly started Redis or Valkey server serves the whole run. For every algorithm and
mode, a *phase* alternates timed blocks of every library's calls with blocks of a floor call
(F) — warm-up, then per round F, each library, each library again in reverse order, and a
closing F — and reports each library's time per decision divided by the floor's (×floor) and
ratewall's against the best peer's. Raw throughput drifts by ±30% within seconds on a shared
VM; ratios of measurements interleaved block by block do not. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from harness import (
    FULL,
    QUICK,
    ServerStats,
    machine_description,
    pick_server,
    raise_open_files_limit,
)
from modes import MODES, REDIS_KINDS, Mode
from peers import LIBRARIES, Library, package_version
from phase_result import PhaseResult
from phases import Context, run_phase
from report import check_targets, compare_with_peers, describe, markdown, write_json

from ratewall import ALGORITHMS
from ratewall.embedded import LocalServer

HERE: Final = Path(__file__).resolve().parent
DEFAULT_JSON: Final = HERE / "results" / "latest.json"


def _choices(value: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ratewall against limits, throttled-py and pyrate-limiter.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short blocks: a smoke run")
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per timed block (default {FULL.block}, --quick {QUICK.block})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"F L L rounds per phase (default {FULL.rounds}, --quick {QUICK.rounds})",
    )
    parser.add_argument(
        "--algorithms",
        type=lambda v: _choices(v, ALGORITHMS, "algorithm"),
        default=list(ALGORITHMS),
        help="comma-separated",
    )
    parser.add_argument(
        "--modes",
        type=lambda v: _choices(v, list(MODES), "mode"),
        default=list(MODES),
        help="comma-separated",
    )
    parser.add_argument(
        "--libraries",
        type=lambda v: _choices(v, list(LIBRARIES), "library"),
        default=[name for name, library in LIBRARIES.items() if not library.reference],
        help="comma-separated; the ASGI mode's reference apps (ref-*, ratewall-quiet) "
        "only when named",
    )
    parser.add_argument(
        "--server",
        choices=("redis", "valkey"),
        help="server kind (default: the first binary ratewall's find_servers() lists)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    return parser.parse_args(argv)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Treated as Ctrl-C: inside asyncio.run that cancels the phase cleanly, elsewhere it
    # raises KeyboardInterrupt; either way the finally blocks stop the server.
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = replace(
        base,
        block=args.duration if args.duration is not None else base.block,
        rounds=args.rounds if args.rounds is not None else base.rounds,
    )
    if args.duration is not None:
        settings = replace(settings, warmup=max(settings.warmup, args.duration / 2))
    phases: list[tuple[str, Mode, list[Library]]] = []
    for algorithm in args.algorithms:
        for slug in args.modes:
            mode = MODES[slug]
            libraries = [
                LIBRARIES[name]
                for name in args.libraries
                if algorithm in LIBRARIES[name].algorithms
                # Only a library with ASGI middleware is in an ASGI phase (of the peers, none),
                # and a reference app only there.
                if mode.kind != "asgi" or LIBRARIES[name].asgi_app is not None
                if mode.kind == "asgi" or not LIBRARIES[name].reference
            ]
            if libraries:
                phases.append((algorithm, mode, libraries))
    needs_redis = any(mode.kind in REDIS_KINDS for _, mode, _ in phases)
    # Sockets: each library's and the floor's, one per caller at most; files and the rest.
    needed = max(((len(libs) + 1) * mode.concurrency for _, mode, libs in phases), default=0)
    warning = raise_open_files_limit(needed + 100)
    if warning is not None:
        _progress(f"warning: {warning}")
    binary = pick_server(args.server) if needs_redis else None
    started = datetime.now(UTC)
    meta: dict[str, Any] = {
        "command": " ".join(
            ["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "server": f"{binary.kind} {binary.version}" if binary else "no Redis server",
        "machine": machine_description(),
        "python": platform.python_version(),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "settings": asdict(settings),
        "versions": {
            name: package_version(name)
            for name in (
                "ratewall",
                "redis",
                "hiredis",
                "limits",
                "throttled-py",
                "pyrate-limiter",
                "uvicorn",
            )
        },
    }
    # Setup per library: ~0.5 s, and ~2 s more to start the two uvicorn processes of ASGI,
    # where each library has a phase of its own against its own bare app.
    estimate = sum(
        (
            len(libraries) * (settings.for_asgi().phase_seconds(mode.concurrency) + 2.5)
            if mode.kind == "asgi"
            else settings.phase_seconds(mode.concurrency, len(libraries)) + 0.5 * len(libraries)
        )
        for _, mode, libraries in phases
    )
    where = f"{meta['server']} ({binary.path})" if binary else meta["server"]
    _progress(f"{len(phases)} phases on {where}; about {estimate / 60:.1f} min")
    # Ctrl-C works even when started in the background (where SIGINT is ignored by default).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    server = LocalServer(binary) if binary else None
    results: list[PhaseResult] = []
    interrupted = False
    stats: ServerStats | None = None
    try:
        if server is not None:
            server.start()
            stats = ServerStats(server.url)
        ctx = Context(settings, server, stats)
        for index, (algorithm, mode, libraries) in enumerate(phases, 1):
            ctx.phase_index = index
            elapsed = (datetime.now(UTC) - started).total_seconds()
            header = (
                f"[{index:>3}/{len(phases)} {elapsed / 60:4.1f}m] {algorithm:<14} {mode.label:<12}"
            )
            _progress(f"{header} {', '.join(library.name for library in libraries)} ...")
            for result in run_phase(ctx, algorithm, mode, libraries):
                results.append(result)
                _progress(f"{header} {result.library:<9} {describe(result)}")
    except KeyboardInterrupt:
        interrupted = True
        _progress("interrupted: stopping the server and reporting what was measured")
    finally:
        if stats is not None:
            stats.close()
        if server is not None:
            server.stop()
    meta["wall_seconds"] = (datetime.now(UTC) - started).total_seconds()
    meta["interrupted"] = interrupted
    compare_with_peers(results)
    targets = check_targets(results)
    write_json(args.json, meta, results, targets)
    print(markdown(results, targets, meta))
    _progress(f"wrote {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
