"""What one ``ipfailover lab`` invocation was asked to do, as a dataclass.

:class:`LabSettings` is what the scenario, the fault cases and the reports read; the command
line is turned into one once (:meth:`LabSettings.from_args`, in :mod:`ipfailover.lab.cli`),
and the benchmarks build one directly. Its defaults are the command's.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

LOSS_LEVELS = (10, 20, 30, 50)
"""The loss case's default percentages (``--loss-levels``)."""


@dataclass(frozen=True)
class LabSettings:
    """The lab's options: the timing scenario's, then the fault cases' (``--faults``)."""

    interval: float = 1.0  # heartbeat interval (s)
    deadtime: float | None = None  # FAILOVER_DEADTIME for the secondary; None: its default
    failback_delay: float | None = None  # FAILOVER_FAILBACK_DELAY; None: its default
    runs: int = 1  # repeat the whole scenario this many times
    ipv6: bool = False  # probe the IPv6 service address
    json: bool = False  # print a machine-readable result
    keep_logs: Path | None = None  # copy each run's logs and configs here
    plot: Path | None = None  # draw who answered each probe over time (needs matplotlib)
    fixed_phase: bool = False  # start each phase at once, not after a random part of an interval
    faults: str | None = None  # NAME[,NAME...] or "all": run fault cases instead
    minutes: float = 1.0  # length of each loss level and of the soak
    seed: int = 1  # seed of the fault schedule
    loss_levels: str = ",".join(map(str, LOSS_LEVELS))  # the loss case's percentages, as typed
    report: Path | None = None  # write the fault cases' JSON report here (and PATH.md)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LabSettings:
        """The settings ``ipfailover lab``'s parser (``lab.cli.configure_parser``) produced."""
        return cls(
            interval=args.interval,
            deadtime=args.deadtime,
            failback_delay=args.failback_delay,
            runs=args.runs,
            ipv6=args.ipv6,
            json=args.json,
            keep_logs=Path(args.keep_logs) if args.keep_logs else None,
            plot=args.plot,
            fixed_phase=args.fixed_phase,
            faults=args.faults,
            minutes=args.minutes,
            seed=args.seed,
            loss_levels=args.loss_levels,
            report=Path(args.report) if args.report else None,
        )
