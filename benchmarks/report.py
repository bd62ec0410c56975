"""The report: ratewall against its best peer, the issue-4 targets, the Markdown tables on
stdout, the JSON file and the progress line of each result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from modes import MODES
from peers import LIBRARIES
from phase_result import STEAL_NOTED, PhaseResult

# -- comparisons -----------------------------------------------------------------------------

OURS: Final = "ratewall"


def compare_with_peers(results: list[PhaseResult]) -> None:
    """Fill ``vs_best_peer`` on ratewall's rows: the best peer's ×floor ÷ ours, i.e. the
    decisions/s ratio with each side normalised by the floor measured next to it."""
    groups: dict[tuple[str, str], list[PhaseResult]] = {}
    for result in results:
        if result.status == "ok" and result.x_floor == result.x_floor:  # measured (not NaN)
            groups.setdefault((result.algorithm, result.mode), []).append(result)
    for group in groups.values():
        ours = [r for r in group if r.library == OURS]
        peers = [r for r in group if r.library != OURS and not LIBRARIES[r.library].reference]
        if not ours or not peers:
            continue
        best = min(peers, key=lambda r: r.x_floor)
        ours[0].vs_best_peer = best.x_floor / ours[0].x_floor
        ours[0].best_peer = best.library
        ours[0].vs_best_peer_raw = ours[0].decisions_per_s / max(r.decisions_per_s for r in peers)


@dataclass(frozen=True, slots=True)
class Target:
    """A target of issue 4, checked on ratewall's rows of one mode (the worst algorithm)."""

    label: str
    mode: str
    metric: Literal["vs_best_peer", "x_floor", "commands_per_decision", "vs_bare"]
    bound: float
    at_least: bool


TARGETS: Final = (
    Target("async C=64: ≥ 8× the best peer", "async64", "vs_best_peer", 8.0, at_least=True),
    Target("async C=512: ≥ 8× the best peer", "async512", "vs_best_peer", 8.0, at_least=True),
    Target("sync: ≤ 1.2× the EVALSHA floor", "sync", "x_floor", 1.2, at_least=False),
    Target("sync: no peer faster", "sync", "vs_best_peer", 1.0, at_least=True),
    Target(
        "deny flood: ≤ 0.01 commands/decision",
        "deny",
        "commands_per_decision",
        0.01,
        at_least=False,
    ),
    Target("deny flood: ≥ 20× the best peer", "deny", "vs_best_peer", 20.0, at_least=True),
    Target("memory: ≥ 2× the fastest peer", "memory", "vs_best_peer", 2.0, at_least=True),
    Target(
        "ASGI (memory store): ≥ 0.9× the bare app's requests/s",
        "asgi",
        "vs_bare",
        0.9,
        at_least=True,
    ),
)


def check_targets(results: list[PhaseResult]) -> list[dict[str, Any]]:
    checked = []
    for target in TARGETS:
        values = [
            (value, r.algorithm, r.steal_fraction)
            for r in results
            if r.library == OURS and r.mode == target.mode and r.status == "ok"
            if (value := getattr(r, target.metric)) is not None and value == value
        ]
        if not values:
            continue
        worst = (min if target.at_least else max)(values, key=lambda v: v[0])
        met = worst[0] >= target.bound if target.at_least else worst[0] <= target.bound
        checked.append(
            {
                "target": target.label,
                "worst": worst[0],
                "worst_algorithm": worst[1],
                "worst_steal": worst[2],
                "met": met,
                "algorithms": {algorithm: value for value, algorithm, _ in values},
            }
        )
    return checked


# -- output ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:,.{digits}f}"


def _latency(value: float, mode: str) -> str:
    return _num(value, 2 if mode == "memory" else 0)


def _ratio(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}×"


def markdown(
    results: list[PhaseResult], targets: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    lines = [
        f"`{meta['command']}` — {meta['server']} · {meta['machine']} · Python "
        f"{meta['python']} · redis-py {meta['versions']['redis']} "
        f"(hiredis {meta['versions']['hiredis']}) · {meta['started']} · "
        f"{meta['wall_seconds'] / 60:.1f} min",
        "",
        "| algorithm | mode | library | decisions/s | p50 µs | p99 µs | RT/dec | cmds/dec "
        "| Redis CPU µs/dec | ×floor | ours ÷ best peer |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(
                f"| {r.algorithm} | {r.mode_label} | {r.library} | {r.status}: {r.error} "
                "| | | | | | | |"
            )
            continue
        versus = ""
        if r.vs_best_peer is not None:
            versus = f"**{r.vs_best_peer:.2f}×** (vs {r.best_peer})"
        elif r.library == OURS:
            versus = "— (no peer)"
        note = f" ⚠ {r.anomaly}" if r.anomaly else ""
        lines.append(
            f"| {r.algorithm} | {r.mode_label} | {r.library} | {_num(r.decisions_per_s)}{note} "
            f"| {_latency(r.p50_us, r.mode)} | {_latency(r.p99_us, r.mode)} "
            f"| {_num(r.round_trips_per_decision, 2)} | {_num(r.commands_per_decision, 2)} "
            f"| {_num(r.server_us_per_decision, 1)} | {_ratio(r.x_floor)} | {versus} |"
        )
    lines += [
        "",
        "Floors (medians over the phases of each mode; each phase's own floor is in the JSON):",
        "",
        "| mode | floor | decisions/s | p50 µs | p99 µs | Redis CPU µs/call |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in MODES.values():
        rows = [r for r in results if r.mode == mode.slug and r.status == "ok"]
        server = [
            r.floor_server_us_per_decision
            for r in rows
            if r.floor_server_us_per_decision is not None
        ]
        if rows:
            lines.append(
                f"| {mode.label} | {rows[0].floor} "
                f"| {_num(_median([r.floor_decisions_per_s for r in rows]))} "
                f"| {_latency(_median([r.floor_p50_us for r in rows]), mode.slug)} "
                f"| {_latency(_median([r.floor_p99_us for r in rows]), mode.slug)} "
                f"| {_num(_median(server), 1) if server else '—'} |"
            )
    asgi = [r for r in results if r.mode == "asgi" and r.status == "ok" and r.asgi]
    if asgi:
        lines += [
            "",
            f"ASGI middleware under {asgi[0].asgi['server']}, one worker, "
            f"{asgi[0].asgi['connections']} keep-alive connections"
            + (
                ", the servers on one CPU and the generator on the other"
                if asgi[0].asgi.get("pinned")
                else ""
            )
            + " (server CPU per request from /proc; the generator's share of one core shows "
            "it is not the bottleneck):",
            "",
            "| algorithm | app | bare req/s | with middleware req/s | with ÷ bare "
            "| server CPU µs/req bare | with | middleware µs/req | generator CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in asgi:
            cpu = r.asgi["server_cpu_us_per_request"]
            share = r.asgi["generator_cpu_share"]
            busiest = max((v for v in share.values() if v is not None), default=None)
            lines.append(
                f"| {r.algorithm} | {r.library} | {_num(r.floor_decisions_per_s)} "
                f"| {_num(r.decisions_per_s)} "
                f"| **{_ratio(r.vs_bare)}** | {_num(cpu['bare'], 1)} | {_num(cpu['limited'], 1)} "
                f"| {_num(r.asgi['middleware_cpu_us_per_request'], 1)} "
                f"| {'—' if busiest is None else f'{busiest:.0%}'} |"
            )
    if targets:
        lines += [
            "",
            "Issue 4 targets (ratewall, worst algorithm of the mode):",
            "",
            "| target | measured (worst) | met |",
            "|---|---|---|",
        ]
        for t in targets:
            steal = t["worst_steal"]
            noisy = f" ⚠ steal {steal:.0%}" if steal is not None and steal >= STEAL_NOTED else ""
            lines.append(
                f"| {t['target']} | {t['worst']:.3g} ({t['worst_algorithm']}){noisy} "
                f"| {'yes' if t['met'] else '**no**'} |"
            )
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN (nothing measured) is not JSON: write null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def describe(r: PhaseResult) -> str:
    if r.status != "ok":
        return f"{r.status.upper()}: {r.error}"
    parts = [
        f"{_num(r.decisions_per_s):>9}/s",
        f"{r.x_floor:5.2f}× floor",
        f"p50 {_latency(r.p50_us, r.mode)} µs",
        f"p99 {_latency(r.p99_us, r.mode)} µs",
    ]
    if r.vs_bare is not None:
        parts.append(f"with ÷ bare {r.vs_bare:.3f}")
        middleware = r.asgi.get("middleware_cpu_us_per_request")
        if middleware is not None:
            parts.append(f"middleware {middleware:.1f} µs/req")
    if r.round_trips_per_decision is not None:
        parts.append(
            f"RT/dec {_num(r.round_trips_per_decision, 3)} "
            f"cmds/dec {_num(r.commands_per_decision, 2)} "
            f"Redis CPU {_num(r.server_us_per_decision, 1)} µs/dec"
        )
    if r.anomaly:
        parts.append(f"⚠ {r.anomaly}")
    return "  ".join(parts)


def write_json(
    path: Path, meta: dict[str, Any], results: list[PhaseResult], targets: list[dict[str, Any]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            _finite({"meta": meta, "phases": [asdict(r) for r in results], "targets": targets}),
            indent=2,
            default=str,
        )
        + "\n"
    )
