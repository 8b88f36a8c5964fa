"""What ``ipfailover lab`` shows: its tables and timelines, a plot of them, and what to try next.

``print_header``, ``print_run`` and ``print_summary`` write the human report of the timing
scenario, ``json_result`` its ``--json`` document.

``ipfailover lab --plot FILE.png`` draws, for each run, which node answered the client's probes
over time (one band per node, lost probes in their own band) with the lab's actions (cables
pulled and plugged, SIGTERM, restart) as vertical marks: the failover, the failback and the
graceful stop read at a glance. It needs matplotlib, the ``plot`` extra
(``pip install 'ipfailover[plot]'``, Debian's python3-matplotlib).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from ipfailover.lab.scenario import PHASES, Bounds, RunResult
from ipfailover.lab.settings import LabSettings
from ipfailover.lab.topology import service_address

_ANSWERS = re.compile(r"answers: (?P<who>.+?) \((?P<n>\d+) probes over (?P<span>[0-9.]+)s\)")
ROWS = ("primary", "secondary", "nobody (lost)")
COLOURS = {"primary": "tab:blue", "secondary": "tab:orange", "nobody (lost)": "tab:red"}
# Lab actions worth a vertical line: the phases' starts.
_PHASE_MARKS = re.compile(r"cable|SIGTERM|start primary/heartbeatd-2")

NEXT_STEPS = """\
What to try next:
  ipfailover lab --interval 0.05 --runs 5   sub-second failover, with median, min and max
  ipfailover lab --plot lab.png             the same timeline as a picture (needs matplotlib)
  ipfailover lab --keep-logs DIR            keep each node's logs and hostconfig to read
  On your own machines: ipfailover check (before each start), ipfailover status (what each
  daemon sees), and transition scripts for your services (docs/scripts.md).
"""


def available() -> bool:
    """Whether matplotlib is installed (``--plot`` can draw)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def segments(timeline: Sequence[tuple[float, str, str]]) -> list[tuple[str, float, float]]:
    """(who, start, duration) of each stretch in which one node answered the client."""
    out = []
    for t, source, text in timeline:
        m = _ANSWERS.fullmatch(text) if source == "client" else None
        if m:
            who = m["who"] if m["who"] in ROWS else "nobody (lost)"
            out.append((who, t, max(float(m["span"]), 0.01)))
    return out


def marks(timeline: Sequence[tuple[float, str, str]]) -> list[tuple[float, str]]:
    """(time, label) of the lab actions that start a phase; a cable pulled (or plugged) on both
    networks a moment apart is one mark."""
    out: list[tuple[float, str]] = []
    for t, source, text in timeline:
        if source != "lab" or not _PHASE_MARKS.search(text):
            continue
        if "cable" in text:
            label = "cables pulled" if text.endswith("down") else "cables back"
        elif "SIGTERM" in text:
            label = "SIGTERM heartbeatd"
        else:
            label = "heartbeatd restarted"
        if not out or out[-1][1] != label or t - out[-1][0] > 1.0:
            out.append((t, label))
    return out


def plot(runs: Sequence[Any], path: Path) -> None:
    """Draw every run's timeline (``RunResult``s) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.6 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        for who, start, width in segments(run.timeline):
            ax.broken_barh([(start, width)], (ROWS.index(who) - 0.4, 0.8), color=COLOURS[who])
        for t, text in marks(run.timeline):
            ax.axvline(t, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(text, (t, len(ROWS) - 0.5), rotation=90, fontsize=7, va="top", ha="right")
        ax.set_yticks(range(len(ROWS)), ROWS)
        ax.set_ylim(-0.6, len(ROWS) - 0.4)
        phases = ", ".join(
            f"{name} {p.seconds:.3f}s" for name, p in run.phases.items() if p.seconds is not None
        )
        ax.set_title(f"run {run.index}: who answered the client's probes ({phases})", fontsize=9)
        ax.set_xlabel("seconds since the lab was built")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_next_steps(out: IO[str]) -> None:
    print(NEXT_STEPS, end="", file=out)


def _fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.3f}{unit}"


MAX_CLIENT_LINES = 80
"""Human timelines show at most this many answer changes (a flapping run has thousands)."""


def print_run(result: RunResult, out: IO[str]) -> None:
    """Human report of one run: timeline and a phase table."""
    print(f"== run {result.index}: timeline (seconds since the lab was built)", file=out)
    client_lines = 0
    for t, source, text in result.timeline:
        client_lines += source == "client"
        if source != "client" or client_lines <= MAX_CLIENT_LINES:
            print(f"  {t:+9.3f}  {source:<22} {text}", file=out)
    if client_lines > MAX_CLIENT_LINES:
        hidden = client_lines - MAX_CLIENT_LINES
        print(f"  ({hidden} more changes of who answers not shown; see --json)", file=out)
    print(f"{'phase':<18}{'time':>10}{'lost':>8}  status", file=out)
    for name in PHASES:
        phase = result.phases.get(name)
        if phase is None:
            print(f"{name:<18}{'-':>10}{'-':>8}  not run", file=out)
            continue
        status = "ok" if phase.ok else f"FAILED: {phase.error}"
        lost = "-" if phase.lost is None else str(phase.lost)
        print(f"{name:<18}{_fmt(phase.seconds):>10}{lost:>8}  {status}", file=out)
    if result.error:
        print(f"run {result.index} failed: {result.error}", file=out)


def print_header(settings: LabSettings, out: IO[str]) -> None:
    """What is measured, with which settings, and how long each wait may take."""
    bounds = Bounds.from_settings(settings)
    deadtime = "default" if settings.deadtime is None else f"{settings.deadtime}s"
    failback = "default" if settings.failback_delay is None else f"{settings.failback_delay}s"
    print(
        f"ipfailover lab: probing {service_address(settings.ipv6)}; "
        f"interval={settings.interval}s "
        f"deadtime={deadtime} failback-delay={failback}; waits bounded at "
        f"{bounds.failover:.0f}s (takeover) and {bounds.failback:.0f}s (failback)",
        file=out,
    )


def print_summary(summary: dict[str, dict[str, Any]], out: IO[str]) -> None:
    """Human table of the per-phase statistics over all runs."""
    print("== summary", file=out)
    print(f"{'phase':<18}{'ok':>6}{'median':>10}{'min':>10}{'max':>10}{'lost med':>10}", file=out)
    for name, row in summary.items():
        lost = "-" if row["lost_median"] is None else f"{row['lost_median']:g}"
        print(
            f"{name:<18}{row['ok']:>3}/{row['runs']:<2}{_fmt(row['median']):>10}"
            f"{_fmt(row['min']):>10}{_fmt(row['max']):>10}{lost:>10}",
            file=out,
        )


def json_result(
    settings: LabSettings, runs: Sequence[RunResult], summary: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The ``--json`` document: the settings, the per-phase summary, and every run."""
    params = {
        k: getattr(settings, k) for k in ("interval", "deadtime", "failback_delay", "runs", "ipv6")
    }
    return {
        "params": params,
        "ok": all(r.ok for r in runs),
        "summary": summary,
        "runs": [
            {
                "run": r.index,
                "ok": r.ok,
                "error": r.error,
                "phases": {n: {**asdict(p), "ok": p.ok} for n, p in r.phases.items()},
                "timeline": [{"t": round(t, 6), "source": s, "text": x} for t, s, x in r.timeline],
            }
            for r in runs
        ],
    }
