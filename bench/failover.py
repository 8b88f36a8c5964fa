"""Failover benchmark: ipfailover and keepalived, timed by the same namespace lab.

Usage (as root, from the repository, with the project's venv)::

    .venv/bin/python bench/failover.py --runs 5 --out bench/results/$(date +%F).json

Four configurations are measured, each ``--runs`` times, interleaved round by
round (run 1 of every configuration, then run 2, ...) so that a slow spell of
the machine spreads over all of them rather than landing on one:

* ipfailover at its defaults (``FAILOVER_INTERVAL`` 1 s, dead time 3 intervals,
  ``FAILOVER_FAILBACK_DELAY`` 3 s): the scenario of ``ipfailover lab``
  (``ipfailover.lab.scenario.Scenario``);
* ipfailover at a 0.05 s interval (the other defaults unchanged);
* keepalived, VRRPv2, advert_int 1 (``keepalived_lab.KeepalivedScenario``);
* keepalived, VRRPv3, advert_int 0.05.

Each run builds a fresh lab and measures the phases ``failover``, ``failback``,
``graceful-stop`` and ``restart-failback`` (see ``ipfailover.lab.scenario``).  Before
each phase it pauses for a random part of one interval (``Scenario.pause``, as
``ipfailover lab`` does), so that faults land anywhere in the heartbeat cycle;
``--fixed-phase`` leaves the pause out.  The raw
per-run results and per-phase statistics (median, min, max, quartiles, IQR,
stdev, lost probes) go to ``--out`` as JSON; a Markdown table goes to stdout and
progress to stderr.  Exit status: 0 if every run measured every phase, 1 if
some did not (the JSON says which and why), 2 if the benchmark cannot run here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import keepalived_lab

from ipfailover.lab import scenario as iplab
from ipfailover.lab.settings import LabSettings
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import SERVICE_V4

REPO = Path(__file__).resolve().parent.parent


ScenarioFactory = iplab.ScenarioFactory
"""Builds the scenario of one run in a freshly built lab."""


@dataclass(frozen=True)
class Config:
    """One configuration under test, and how to build its scenario."""

    name: str
    software: str
    interval: float  # heartbeat / advert interval in seconds
    settings: dict[str, Any]  # what else characterises it, for the JSON
    scenario: ScenarioFactory


def ipfailover_config(interval: float, random_phase: bool) -> Config:
    """ipfailover's lab scenario at this interval, every other setting at its default."""
    settings = LabSettings(interval=interval, fixed_phase=not random_phase)

    def scenario(lab: Lab, result: iplab.RunResult) -> iplab.Scenario:
        return iplab.Scenario(lab, settings, result)

    described = {
        "FAILOVER_INTERVAL": interval,
        "FAILOVER_DEADTIME": "default (3 x interval)",
        "FAILOVER_FAILBACK_DELAY": "default (3 s)",
        "probed_address": SERVICE_V4,
    }
    return Config(f"ipfailover-{interval:g}s", "ipfailover", interval, described, scenario)


def keepalived_config(advert_int: float, version: int, random_phase: bool) -> Config:
    """keepalived's lab scenario with this advert interval and VRRP version."""
    vrrp = keepalived_lab.VrrpSettings(advert_int, version)
    lab_settings = keepalived_lab.scenario_settings(vrrp, fixed_phase=not random_phase)

    def scenario(lab: Lab, result: iplab.RunResult) -> iplab.Scenario:
        return keepalived_lab.KeepalivedScenario(lab, vrrp, lab_settings, result)

    settings = {
        **asdict(vrrp),
        "priorities": {"primary": 150, "secondary": 100},
        "adverts": "multicast 224.0.0.18",
        "preempt": "default (on, no delay)",
        "probed_address": keepalived_lab.VIRTUAL_ADDRESS,
        "secondary_master_down_s": vrrp.master_down(100),
        "primary_master_down_s": vrrp.master_down(150),
    }
    return Config(f"keepalived-{advert_int:g}s", "keepalived", advert_int, settings, scenario)


def all_configs(random_phase: bool = True) -> list[Config]:
    return [
        ipfailover_config(1.0, random_phase),
        ipfailover_config(0.05, random_phase),
        keepalived_config(1.0, 2, random_phase),
        keepalived_config(0.05, 3, random_phase),
    ]


# --- statistics ---------------------------------------------------------------


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, min, max, quartiles, IQR and sample stdev of values (None where undefined)."""
    if not values:
        return dict.fromkeys(("median", "min", "max", "q1", "q3", "iqr", "stdev")) | {"n": 0}
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "stdev": statistics.stdev(values) if len(values) > 1 else None,
    }


def summarise(runs: Sequence[iplab.RunResult]) -> dict[str, dict[str, Any]]:
    """Per phase: statistics of seconds and lost probes over the runs that measured it."""
    summary = {}
    for phase in iplab.PHASES:
        measured = [r.phases[phase] for r in runs if phase in r.phases and r.phases[phase].ok]
        summary[phase] = {
            "runs": len(runs),
            "seconds": describe([p.seconds for p in measured if p.seconds is not None]),
            "lost": describe([float(p.lost) for p in measured if p.lost is not None]),
        }
    return summary


# --- output ---------------------------------------------------------------------


def run_json(result: iplab.RunResult) -> dict[str, Any]:
    return {
        "run": result.index,
        "ok": result.ok,
        "error": result.error,
        "phases": {n: {**asdict(p), "ok": p.ok} for n, p in result.phases.items()},
        "timeline": [{"t": round(t, 6), "source": s, "text": x} for t, s, x in result.timeline],
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per phase and configuration: seconds (median, min, max, IQR, stdev), lost probes."""
    rows = [
        "| phase | software | interval | ok | median s | min s | max s | IQR s | stdev s "
        "| lost probes median (min-max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for phase in iplab.PHASES:
        for config in results:
            row = config["summary"][phase]
            sec, lost = row["seconds"], row["lost"]
            lost_text = (
                "-" if not lost["n"] else f"{lost['median']:g} ({lost['min']:g}-{lost['max']:g})"
            )
            rows.append(
                f"| {phase} | {config['software']} | {config['interval']:g} s "
                f"| {sec['n']}/{row['runs']} | {_s(sec['median'])} | {_s(sec['min'])} "
                f"| {_s(sec['max'])} | {_s(sec['iqr'])} | {_s(sec['stdev'])} | {lost_text} |"
            )
    return "\n".join(rows)


def probe_settings() -> dict[str, Any]:
    """The probe client's interval and reply timeout: the lab's defaults, used by both."""
    params = inspect.signature(Lab.start_client).parameters
    return {name: params[name].default for name in ("interval", "reply_timeout")}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    keepalived = subprocess.run(
        ["keepalived", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    git = subprocess.run(
        ["git", "-C", str(Path(iplab.__file__).parent), "describe", "--always", "--dirty"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "keepalived": (keepalived.stdout + keepalived.stderr).splitlines()[0],
        "ipfailover_source": str(Path(iplab.__file__).parent),
        "ipfailover_git": git.stdout.strip(),
        "loadavg_start": os.getloadavg(),
    }


# --- running ----------------------------------------------------------------------


def run_all(
    configs: Sequence[Config], runs: int, keep_logs: Path | None
) -> dict[str, list[iplab.RunResult]]:
    """Run every configuration ``runs`` times, interleaved; stop early on Ctrl-C/SIGTERM."""
    results: dict[str, list[iplab.RunResult]] = {c.name: [] for c in configs}
    for index in range(1, runs + 1):
        for config in configs:
            started = time.monotonic()
            logs = None if keep_logs is None else keep_logs / config.name
            result = iplab.run_once(index, config.scenario, logs)
            results[config.name].append(result)
            status = "ok" if result.ok else f"FAILED: {result.error}"
            phases = " ".join(
                f"{n}={_s(p.seconds)}s/{p.lost}lost" for n, p in result.phases.items()
            )
            print(
                f"[{config.name} run {index}/{runs} {time.monotonic() - started:.0f}s] "
                f"{phases} {status}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _preflight(runs: int) -> str | None:
    if os.geteuid() != 0:
        return "must run as root (the lab creates network namespaces)"
    missing = [t for t in ("ip", "nft", "sysctl", "keepalived") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return "--runs must be >= 1" if runs < 1 else None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    names = [c.name for c in all_configs()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / f"{today}.json",
        help="JSON result file (default bench/results/<UTC date>.json)",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", choices=names, help="run only this configuration (repeatable)"
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every run's logs here")
    parser.add_argument(
        "--fixed-phase", action="store_true",
        help="no random pause before each phase (faults then land at a fixed point of the cycle)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    problem = _preflight(args.runs)
    if problem:
        print(f"bench/failover.py: {problem}", file=sys.stderr)
        return 2
    configs = [c for c in all_configs(not args.fixed_phase) if not args.only or c.name in args.only]
    info = machine()
    info["started"] = datetime.now(UTC).isoformat(timespec="seconds")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        results = run_all(configs, args.runs, args.keep_logs)
    except KeyboardInterrupt:
        print("bench/failover.py: interrupted; labs torn down, nothing written", file=sys.stderr)
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        return 130
    info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    info["loadavg_end"] = os.getloadavg()
    document = {
        "machine": info,
        "runs_per_config": args.runs,
        "random_phase": not args.fixed_phase,
        "probe_client": probe_settings(),
        "configs": [
            {
                "name": c.name,
                "software": c.software,
                "interval": c.interval,
                "settings": c.settings,
                "summary": summarise(results[c.name]),
                "runs": [run_json(r) for r in results[c.name]],
            }
            for c in configs
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(markdown_table(document["configs"]))
    print(f"\nraw results: {args.out}", file=sys.stderr)
    return 0 if all(r.ok for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
