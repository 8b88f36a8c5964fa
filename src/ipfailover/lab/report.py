"""What ``ipfailover lab`` shows besides its tables: a plot of the timeline, and what to try next.

``ipfailover lab --plot FILE.png`` draws, for each run, which node answered the client's probes
over time (one band per node, lost probes in their own band) with the lab's actions (cables
pulled and plugged, SIGTERM, restart) as vertical marks: the failover, the failback and the
graceful stop read at a glance. It needs matplotlib, the ``plot`` extra
(``pip install 'ipfailover[plot]'``, Debian's python3-matplotlib).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

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
