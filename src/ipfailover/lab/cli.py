"""``ipfailover lab``: its options, the checks before it runs, and the two things it runs.

:func:`configure_parser` adds the options to a (sub)parser; :func:`run` turns the parsed
arguments into a :class:`~ipfailover.lab.settings.LabSettings` once and runs either the timing
scenario (:mod:`ipfailover.lab.scenario`, reported by :mod:`ipfailover.lab.report`) or, with
``--faults``, the fault cases (:mod:`ipfailover.lab.cases`, :func:`run_faults`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from ipfailover.lab import faultrun
from ipfailover.lab import report as labreport
from ipfailover.lab.cases import CASES, CaseParams, CaseResult, markdown, plan, run_case
from ipfailover.lab.scenario import RunResult, Scenario, run_once, summarise
from ipfailover.lab.settings import LOSS_LEVELS, LabSettings
from ipfailover.lab.testbed import Lab


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``ipfailover lab`` options to a (sub)parser."""
    p.description = (
        "Build a throwaway network-namespace lab, run heartbeatd and failoverd in it, and time "
        "failover, failback and a graceful stop as seen by a client probing the service address. "
        "With --faults, run fault cases instead (loss, partitions, flapping cables, frozen or "
        "killed daemons, a soak), judge each run with the invariant checker, and print a "
        "Markdown table (with --report, also a JSON report); see docs/reliability.md."
    )
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (s)")
    p.add_argument("--deadtime", type=float, help="FAILOVER_DEADTIME for the secondary (s)")
    p.add_argument("--failback-delay", type=float, help="FAILOVER_FAILBACK_DELAY (s)")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole scenario N times")
    p.add_argument("--ipv6", action="store_true", help="probe the IPv6 service address")
    p.add_argument("--json", action="store_true", help="print a machine-readable result")
    p.add_argument("--keep-logs", metavar="DIR", help="copy each run's logs and configs here")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        help="draw who answered each probe over time, with the phases marked (needs matplotlib: "
        "pip install 'ipfailover[plot]')",
    )
    p.add_argument(
        "--fixed-phase",
        action="store_true",
        help="start each phase right away, not after a random part of an interval (then every "
        "cable is pulled at the same point of the heartbeat cycle)",
    )
    # the fault options (ipfailover lab --faults)
    p.add_argument(
        "--faults",
        metavar="NAME|all",
        help=f"run fault cases instead of the timing scenario: {', '.join(CASES)} or all",
    )
    p.add_argument(
        "--minutes", type=float, default=1.0, help="length of each loss level and of the soak"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    p.add_argument(
        "--loss-levels",
        default=",".join(map(str, LOSS_LEVELS)),
        help="loss percentages of the loss case (default: %(default)s)",
    )
    p.add_argument("--report", metavar="PATH", help="write the JSON report here (and PATH.md)")


def _preflight(settings: LabSettings) -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "must run as root (it creates network namespaces)"
    missing = [tool for tool in ("ip", "nft", "sysctl") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if settings.runs < 1 or settings.interval <= 0:
        return "--runs must be >= 1 and --interval > 0"
    if settings.plot is not None and not labreport.available():
        return "--plot needs matplotlib: pip install 'ipfailover[plot]' (or python3-matplotlib)"
    return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """``ipfailover lab``'s handler: its parsed options become settings once, here."""
    return run_settings(LabSettings.from_args(args))


def run_settings(settings: LabSettings) -> int:
    """Run the scenario ``settings.runs`` times; 0 if every measurement succeeded, else 1.

    With ``settings.faults``, run those fault cases instead (:func:`run_faults`).
    """
    problem = _preflight(settings)
    if problem:
        print(f"ipfailover lab: {problem}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    if settings.faults:
        try:
            return run_faults(settings)
        except KeyboardInterrupt:
            print("ipfailover lab: interrupted; lab torn down", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    if not settings.json:
        labreport.print_header(settings, sys.stdout)
    runs: list[RunResult] = []

    def make(lab: Lab, result: RunResult) -> Scenario:
        return Scenario(lab, settings, result)

    try:
        for index in range(1, settings.runs + 1):
            runs.append(run_once(index, make, settings.keep_logs))
            if not settings.json:
                labreport.print_run(runs[-1], sys.stdout)
    except KeyboardInterrupt:
        print("ipfailover lab: interrupted; lab torn down", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = summarise(runs)
    if settings.json:
        print(json.dumps(labreport.json_result(settings, runs, summary), indent=2))
    else:
        labreport.print_summary(summary, sys.stdout)
    if settings.plot is not None:
        labreport.plot(runs, settings.plot)
        print(f"ipfailover lab: wrote {settings.plot}", file=sys.stderr)
    if not settings.json:
        labreport.print_next_steps(sys.stdout)
    return 0 if all(r.ok for r in runs) else 1


def run_faults(settings: LabSettings) -> int:
    """``ipfailover lab --faults NAME|all``: run the cases, print (and write) the report."""
    assert settings.faults is not None
    names = list(CASES) if settings.faults == "all" else settings.faults.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"ipfailover lab: unknown fault case {unknown[0]!r}; one of {', '.join(CASES)}",
              file=sys.stderr)  # fmt: skip
        return 2
    rng = random.Random(settings.seed)
    fault_settings = faultrun.Settings(
        settings.interval, settings.deadtime, settings.failback_delay
    )
    keep = settings.keep_logs
    meta = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": settings.seed,
        "minutes": settings.minutes,
        "interval": settings.interval,
    }
    results: list[CaseResult] = []
    levels = [int(x) for x in settings.loss_levels.split(",")]
    for name, seconds, loss in plan(names, settings.minutes, levels):
        case_settings = fault_settings
        if name == "soak" and settings.interval == 1.0:
            case_settings = faultrun.Settings(0.05, settings.deadtime, settings.failback_delay)
        params = CaseParams(seconds, random.Random(rng.random()), loss)
        print(f"== {name} {seconds:g}s {f'{loss}% ' if name == 'loss' else ''}...", file=sys.stderr)
        result = run_case(name, case_settings, params, keep=keep)
        results.append(result)
        print(f"   {'ok' if result.ok else 'FAILED'} {json.dumps(result.metrics)[:300]}",
              file=sys.stderr)  # fmt: skip
    report = {
        "meta": meta,
        "ok": all(r.ok for r in results),
        "results": [asdict(r) for r in results],
    }
    text = json.dumps(report, indent=2, default=str)
    table = markdown(results, meta)
    if settings.report is not None:
        settings.report.write_text(text)
        Path(f"{settings.report}.md").write_text(table)
    if settings.json:
        print(text)
    else:
        print(table)
    return 0 if report["ok"] else 1
