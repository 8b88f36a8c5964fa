"""`ipfailover lab --plot` and the lab's closing advice (issue 11)."""

from __future__ import annotations

import io
from pathlib import Path

from ipfailover.lab import report as labreport
from ipfailover.lab.scenario import PhaseResult, RunResult

TIMELINE = [
    (1.0, "lab", "start secondary/failoverd"),
    (2.0, "client", "answers: primary (400 probes over 3.990s)"),
    (6.0, "lab", "cable primary public down"),
    (6.01, "lab", "cable primary private down"),
    (6.0, "client", "answers: nobody (lost) (250 probes over 2.490s)"),
    (8.5, "client", "answers: secondary (500 probes over 4.990s)"),
    (9.5, "lab", "cable primary public up"),
    (9.52, "lab", "cable primary private up"),
    (13.5, "client", "answers: primary (300 probes over 2.990s)"),
    (17.0, "lab", "SIGTERM primary/heartbeatd"),
    (18.0, "lab", "start primary/heartbeatd-2"),
    (18.5, "secondary/failoverd", "event=acquire-done"),
]


def test_segments_and_marks_come_from_the_timeline() -> None:
    assert labreport.segments(TIMELINE) == [
        ("primary", 2.0, 3.99),
        ("nobody (lost)", 6.0, 2.49),
        ("secondary", 8.5, 4.99),
        ("primary", 13.5, 2.99),
    ]
    assert labreport.marks(TIMELINE) == [
        (6.0, "cables pulled"),
        (9.5, "cables back"),
        (17.0, "SIGTERM heartbeatd"),
        (18.0, "heartbeatd restarted"),
    ]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    run = RunResult(1, timeline=TIMELINE)
    run.phases["failover"] = PhaseResult("failover", 2.5, 250)
    path = tmp_path / "lab.png"
    labreport.plot([run, run], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_next_steps_name_status_check_and_scripts() -> None:
    out = io.StringIO()
    labreport.print_next_steps(out)
    text = out.getvalue()
    for hint in ("ipfailover status", "ipfailover check", "scripts", "--plot"):
        assert hint in text
