"""keepalived under issue 8's loss and flapping faults, measured by the same lab and checker.

Usage (as root, from the repository, with the project's venv)::

    .venv/bin/python bench/keepalived_faults.py --faults loss --minutes 3 --interval 0.1 \\
        --report bench/results/keepalived-faults.json

keepalived (VRRPv3, ``advert_int`` = ``--interval``, as configured by ``keepalived_lab``) runs on
the primary (MASTER, priority 150) and the secondary (BACKUP, priority 100). The fault injector
drops VRRP adverts (IP protocol 112) instead of the heartbeat port; a false takeover is the
secondary adding the virtual address, exactly as the address watch counts ipfailover's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import keepalived_lab

from ipfailover.lab import cases as labcases
from ipfailover.lab import faultrun, faults
from ipfailover.lab.processes import LabProcess
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Node


class KeepalivedRun(faultrun.FaultRun):
    service = keepalived_lab.VIRTUAL_ADDRESS
    addresses = (keepalived_lab.VIRTUAL_ADDRESS,)
    matches = faults.VRRP_MATCHES

    def __init__(self, lab: Lab, settings: faultrun.Settings) -> None:
        super().__init__(lab, settings)
        self.vrrp = keepalived_lab.VrrpSettings(settings.interval, 3)
        self.keepalived: dict[Node, LabProcess] = {}

    def config(self) -> None:
        pass

    def start_pair(self) -> None:
        for node in (Node.PRIMARY, Node.SECONDARY):
            relpath = f"keepalived/{node.value}/keepalived.conf"
            config = self.lab.write_file(relpath, keepalived_lab.render_config(node, self.vrrp))
            argv = keepalived_lab.keepalived_argv(config.parent, config)
            self.keepalived[node] = self.lab.spawn(node, argv, "keepalived")
        keepalived_lab.wait_line(self.keepalived[Node.SECONDARY], "Entering BACKUP STATE", 20.0)
        keepalived_lab.wait_line(self.keepalived[Node.PRIMARY], "Entering MASTER STATE", 20.0)

    def primary_holds_now(self) -> bool:
        return all(self.holds(Node.PRIMARY))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", default="loss", help="loss, flap or loss,flap")
    p.add_argument("--minutes", type=float, default=1.0, help="length of each loss level")
    p.add_argument("--interval", type=float, default=0.1, help="advert_int (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--flap-seconds", type=float, default=60.0)
    p.add_argument("--levels", default="10,20,30,50")
    p.add_argument("--report", help="write the JSON report here")
    args = p.parse_args()
    rng = random.Random(args.seed)
    began = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    # keepalived hands back at once (preemption, no delay): its "hold-down" is 0 s
    settings = faultrun.Settings(args.interval, 3.6 * args.interval, 0.0)
    results = []
    for name in args.faults.split(","):
        levels = [int(x) for x in args.levels.split(",")] if name == "loss" else [0]
        for level in levels:
            seconds = 60 * args.minutes if name == "loss" else args.flap_seconds
            params = labcases.CaseParams(seconds, random.Random(rng.random()), level)
            print(f"== keepalived {name} {seconds:g}s {level}%", file=sys.stderr)
            result = labcases.run_case(name, settings, params, make_run=KeepalivedRun)
            print(f"   {'ok' if result.ok else 'FAILED'} {result.metrics}", file=sys.stderr)
            results.append(result)
    meta = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "date": began,
        "seed": args.seed,
        "minutes": args.minutes,
        "interval": args.interval,
    }
    report = {"software": "keepalived", "interval": args.interval, "meta": meta,
              "results": [asdict(r) for r in results]}  # fmt: skip
    text = json.dumps(report, indent=2, default=str)
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
