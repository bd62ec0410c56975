"""A phase's result for one library: what the phases fill in, the JSON records and the
report tabulates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from harness import CpuTally, RequestMonitor, Tally
from http_load import server_description

# Every command that runs a script: ratewall's FCALL, everyone's EVALSHA and EVAL.
SCRIPT_COMMANDS: Final = ("fcall", "fcall_ro", "evalsha", "eval", "evalsha_ro", "eval_ro")

# A generator using more than this share of its CPU may be what limits the request rate.
GENERATOR_BUSY: Final = 0.9
# Steal from this share of the machine's CPU time on is noted next to a phase's result.
STEAL_NOTED: Final = 0.05


@dataclass(slots=True)
class PhaseResult:
    algorithm: str
    mode: str
    mode_label: str
    library: str
    implementation: str
    status: Literal["ok", "error", "misconfigured"] = "ok"
    error: str | None = None
    decisions: int = 0
    errors: int = 0  # calls that raised (not decisions)
    first_error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0
    decisions_per_s: float = float("nan")
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    allowed_fraction: float = float("nan")
    expected_allowed: bool = True
    floor: str = ""
    floor_decisions_per_s: float = float("nan")
    floor_p50_us: float = float("nan")
    floor_p99_us: float = float("nan")
    x_floor: float = float("nan")
    # Server side. Round trips: requests per decision in a separate MONITOR pass of
    # `counted_decisions`; commands (scripts' included): INFO commandstats over the timed
    # library blocks; scripts: EVALSHA/EVAL calls among them.
    round_trips_per_decision: float | None = None
    counted_decisions: int = 0
    requests: dict[str, float] = field(default_factory=dict)  # per decision, by command
    commands_per_decision: float | None = None
    scripts_per_decision: float | None = None
    # The Redis server's CPU time (INFO cpu) over the measured blocks ÷ the calls that
    # completed in them: what one decision costs the shared server, whatever its commands.
    server_us_per_decision: float | None = None
    floor_server_us_per_decision: float | None = None
    commands: dict[str, float] = field(default_factory=dict)  # per decision, by command
    vs_best_peer: float | None = None  # ratewall rows: best peer's ×floor ÷ ours
    best_peer: str | None = None
    vs_best_peer_raw: float | None = None  # the same from raw decisions/s (drifts)
    wall_seconds: float = 0.0  # the whole phase: setup, sanity check, blocks, count pass
    # The share of this machine's CPU time its hypervisor took (steal) during the phase, on
    # Linux (the same for every library of the phase): it slows raw decisions/s.
    steal_fraction: float | None = None
    # ASGI mode: the limited app's requests/s ÷ the bare app's (1 ÷ x_floor), and the
    # server and generator CPU behind them (see fill_asgi).
    vs_bare: float | None = None
    asgi: dict[str, Any] = field(default_factory=dict)

    def fill(self, library: Tally, floor: Tally, floor_name: str, *, server: bool) -> None:
        self.decisions = library.decisions
        self.errors = library.errors
        self.first_error = library.first_error
        self.error_kind = library.error_kind
        self.seconds = library.elapsed_ns / 1e9
        self.decisions_per_s = 1e9 / library.ns_per_decision
        self.p50_us = library.percentile_us(0.50)
        self.p99_us = library.percentile_us(0.99)
        self.allowed_fraction = library.allowed / library.decisions if library.decisions else 0
        self.floor = floor_name
        self.floor_decisions_per_s = 1e9 / floor.ns_per_decision
        self.floor_p50_us = floor.percentile_us(0.50)
        self.floor_p99_us = floor.percentile_us(0.99)
        self.x_floor = library.ns_per_decision / floor.ns_per_decision
        if server and library.completed:
            n = library.completed
            self.commands_per_decision = sum(library.commands.values()) / n
            scripts = sum(library.commands[c] for c in SCRIPT_COMMANDS)
            self.scripts_per_decision = scripts / n
            self.commands = {c: k / n for c, k in library.commands.most_common()}
            self.server_us_per_decision = library.server_cpu_seconds / n * 1e6
        if server and floor.completed:
            self.floor_server_us_per_decision = floor.server_cpu_seconds / floor.completed * 1e6

    def fill_asgi(
        self,
        tallies: dict[str, Tally],
        cpu: dict[str, CpuTally],
        decorated: float,
        connections: int,
        pinned: bool,
    ) -> None:
        """Requests/s ratio, and per app: server CPU µs per request (over every request
        served during its blocks, including the last ones drained after the deadline) and
        the CPU share the server and the generator used. The middleware's own cost is the
        difference of the two apps' server CPU per request."""
        self.vs_bare = 1 / self.x_floor if self.x_floor else None
        per_request: dict[str, float | None] = {}
        for role, used in cpu.items():
            served = tallies[role].completed + tallies[role].errors
            per_request[role] = used.server / served * 1e6 if used.server and served else None
        limited, bare = per_request["library"], per_request["floor"]
        self.asgi = {
            "server": server_description(),
            "connections": connections,
            # The servers on one CPU, the generator on the others (see harness.separate_cpus).
            "pinned": pinned,
            "requests_per_s": {"limited": self.decisions_per_s, "bare": self.floor_decisions_per_s},
            "server_cpu_us_per_request": {"limited": limited, "bare": bare},
            "middleware_cpu_us_per_request": (
                limited - bare if limited is not None and bare is not None else None
            ),
            "server_cpu_share": {
                "limited": cpu["library"].fraction(cpu["library"].server),
                "bare": cpu["floor"].fraction(cpu["floor"].server),
            },
            "generator_cpu_share": {
                "limited": cpu["library"].fraction(cpu["library"].generator),
                "bare": cpu["floor"].fraction(cpu["floor"].generator),
            },
            # Of the limited app's 200 replies (all blocks), those with a RateLimit field.
            "decorated_fraction": decorated,
        }

    def fill_requests(self, monitor: RequestMonitor, decisions: int) -> None:
        self.counted_decisions = decisions
        if not decisions:
            return
        self.round_trips_per_decision = monitor.requests.total() / decisions
        self.requests = {c: k / decisions for c, k in monitor.requests.most_common()}

    @property
    def anomaly(self) -> str | None:
        """Errors, or answers that contradict the mode (e.g. refusals in an allow mode)."""
        if self.status != "ok":
            return None
        notes = []
        if self.errors:
            notes.append(f"{self.errors:,} errors ({self.error_kind})")
        if self.decisions:
            wrong = 1 - self.allowed_fraction if self.expected_allowed else self.allowed_fraction
            if wrong > 0:
                notes.append(f"{wrong:.1%} {'refused' if self.expected_allowed else 'allowed'}")
        shares = self.asgi.get("generator_cpu_share", {}).values()
        busiest = max((share for share in shares if share), default=0)
        if busiest >= GENERATOR_BUSY:
            notes.append(f"load generator at {busiest:.0%} CPU: it may be the bottleneck")
        if self.steal_fraction is not None and self.steal_fraction >= STEAL_NOTED:
            notes.append(f"hypervisor steal {self.steal_fraction:.0%} of CPU time")
        return "; ".join(notes) or None
