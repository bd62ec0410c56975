"""``ratewall simulate``: summaries checked by hand on small patterns, trace errors, and the
plot files it writes."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import pytest

from ratewall import ConfigError
from ratewall.cli import main
from ratewall.simulate import Event, bursty, read_trace, simulate, steady

DOCS = Path(__file__).resolve().parents[2] / "docs"


def summaries(events: list[Event], limit: int, window: float) -> dict[str, tuple[int, ...]]:
    result = simulate(events, limit=limit, window=window)
    return {
        run.algorithm: (run.summary.admitted, run.summary.refused, run.summary.max_in_window)
        for run in result.runs
    }


def test_a_burst_straddling_two_windows() -> None:
    # One request at 0, three at 9, three at 10; limit 3 per 10 s.
    events = [Event(0.0)] + [Event(9.0)] * 3 + [Event(10.0)] * 3
    assert summaries(events, limit=3, window=10) == {
        # The window opened at 0 holds 3 (0, 9, 9); the one opened at 10 takes 3 more, so the
        # span [9, 19) admitted 5: fixed windows let up to twice the limit through a boundary.
        "fixed_window": (6, 1, 5),
        # At 10 the previous window (3 admitted) still weighs fully: nothing more passes.
        "sliding_window": (3, 4, 3),
        # Exact: at 10 the hit of 0 has left the last 10 s, so one more passes.
        "sliding_log": (4, 3, 3),
        # A full bucket (3) at 0; by 9 it has refilled 2.7 of the 1 spent: 3 pass at 9, none
        # at 10 (0.3 tokens): 4 in [0, 10).
        "token_bucket": (4, 3, 4),
        "gcra": (4, 3, 4),
    }


def test_steady_overload() -> None:
    # One request a second for 30 s (0..29) against 5 per 10 s.
    events = steady(rate=1.0, duration=30.0)
    assert [event.time for event in events] == [float(n) for n in range(30)]
    result = summaries(events, limit=5, window=10)
    assert result["fixed_window"] == (15, 15, 5)  # 0-4, 10-14, 20-24
    assert result["sliding_log"] == (15, 15, 5)
    # Bucket of 5 refilled at 0.5/s: 0..8 drain it (9 pass), then every other second.
    assert result["token_bucket"] == result["gcra"] == (19, 11, 9)
    assert simulate(events, limit=5, window=10).runs[3].summary.burstiness == 1.8


def test_bursty_pattern_and_costs() -> None:
    events = bursty(rate=2.0, duration=10.0, burst_size=4)
    assert [event.time for event in events] == [0.0] * 4 + [2.0] * 4 + [4.0] * 4 + [6.0] * 4 + [
        8.0
    ] * 4
    heavy = [Event(0.0, "a", 2), Event(1.0, "a", 2), Event(2.0, "b", 2)]
    run = simulate(heavy, limit=3, window=10, algorithms=["fixed_window"]).runs[0]
    assert run.allowed == (True, False, True)  # "b" has its own window
    assert (run.summary.admitted_units, run.summary.max_in_window) == (4, 4)


def test_a_trace_file(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "timestamp,identity,cost\n1700000009.5,alice,1\n1700000000,alice\n\n1700000009.5,bob,2\n"
    )
    events = read_trace(trace)
    assert [(e.time, e.identity, e.cost, e.line) for e in events] == [
        (0.0, "alice", 1, 3),
        (9.5, "alice", 1, 2),
        (9.5, "bob", 2, 5),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,alice\n2\n", "line 2: expected 2 or 3 fields"),
        ("1,alice\nsoon,alice\n", "line 2: timestamp must be a number of seconds, got 'soon'"),
        ("1,alice\nnan,alice\n", "line 2: timestamp must be a number"),
        ("timestamp,identity\n1, \n", "line 2: identity is empty"),
        ("1,alice,1\n2,alice,0\n", "line 2: cost must be a whole number >= 1, got '0'"),
        ("1,alice,1.5\n", "line 1: cost must be a whole number >= 1, got '1.5'"),
        ("timestamp,identity,cost\n", "the trace holds no request"),
    ],
)
def test_bad_traces_name_the_line_and_the_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        read_trace(trace)
    assert str(trace) in str(caught.value)


def test_the_command_exits_2_on_a_bad_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("0,alice,1\n1,alice,9\n")
    assert main(["simulate", "trace", "--trace", str(trace), "--limit", "5", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"{trace}: line 2: cost 9 exceeds the capacity 5" in err
    assert main(["simulate", "trace", "--trace", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read the trace" in capsys.readouterr().err
    assert main(["simulate", "trace"]) == 2
    assert "needs --trace FILE" in capsys.readouterr().err
    assert main(["simulate", "steady", "--algorithms", "leaky"]) == 2
    assert "unknown algorithm 'leaky'" in capsys.readouterr().err


def test_the_command_prints_the_summary_and_writes_png_and_svg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "plot"
    arguments = ["simulate", "steady", "--limit", "5", "--window", "10s", "--rate", "1"]
    assert main([*arguments, "--duration", "30", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "steady: 30 requests over 30 s (1/s), 1 identity; policy: 5 per 10s" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:8]}
    assert rows["fixed_window"] == ["15", "15", "5", "1.00"]
    assert rows["token_bucket"] == ["19", "11", "9", "1.80"]
    png = (tmp_path / "plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert png[12:16] == b"IHDR"
    assert png.endswith(b"IEND\xaeB`\x82")
    height, width, _ = matplotlib.image.imread(tmp_path / "plot.png").shape
    assert (width, height) == (1000, 920)
    root = ET.parse(tmp_path / "plot.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = (tmp_path / "plot.svg").read_text()
    assert "fixed_window: 15 admitted, 15 refused, at most 5 in any 10s" in text


def test_the_docs_show_what_the_documented_commands_print(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (DOCS / "simulate.md").read_text()
    outputs = re.findall(r"```text\n((?:steady|bursty|trace)\b.*?)```", page, flags=re.DOTALL)
    commands = re.findall(r"```sh\n(.*?)```", page, flags=re.DOTALL)[-1].strip().splitlines()
    assert len(commands) == len(outputs) == 3
    monkeypatch.chdir(DOCS / "assets" / "simulate")
    for command, expected in zip(commands, outputs, strict=True):
        arguments = shlex.split(command)
        assert arguments[:2] == ["ratewall", "simulate"]
        assert main([*arguments[1:], "--no-plot"]) == 0
        assert capsys.readouterr().out == expected
        output = arguments[arguments.index("--output") + 1]
        assert (Path(output + ".png")).is_file()
        assert (Path(output + ".svg")).is_file()
