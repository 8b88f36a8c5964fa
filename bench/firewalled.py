"""The firewalled secondary (issue 7, section 2; docs/safety.md), timed in the namespace lab.

Usage (as root, from the repository, with the project's venv)::

    .venv/bin/python bench/firewalled.py --runs 3 [--interval 1] [--observe 15]

Each run builds a fresh lab, drops heartbeat-port UDP on both of the secondary's networks
(``Lab.partition``, nftables in its namespace), starts heartbeatd on the primary and then
failoverd on the secondary, and watches failoverd's log for ``--observe`` seconds. It reports,
from failoverd's ``start``: when it took the live primary's address (``acquire-start``), if it
did, and when it decided not to (``takeover-blocked``), if it did; and what a client probing the
service address saw meanwhile (answers by the primary, by the secondary, lost). Before the probe
existed the secondary took the address one dead time after start; with it, it takes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import NODE_NAMES, SERVICE_V4, LabTimeout, Network, Node


def run_once(interval: float, observe: float) -> dict[str, object]:
    timing = {"FAILOVER_INTERVAL": interval}
    with Lab() as lab:
        for network in (Network.PUBLIC, Network.PRIVATE):
            lab.partition(Node.SECONDARY, network, drop=True)
        lab.start_responders()
        heartbeatd = lab.start_daemon(
            Node.PRIMARY, "heartbeatd", lab.node_config(Node.PRIMARY, **timing)
        )
        heartbeatd.wait_event("start", 15.0)
        client = lab.start_client(SERVICE_V4)
        failoverd = lab.start_daemon(
            Node.SECONDARY, "failoverd", lab.node_config(Node.SECONDARY, **timing)
        )
        started = failoverd.wait_event("start", 15.0).t
        time.sleep(max(0.0, started + observe - time.monotonic()))
        out: dict[str, object] = {"interval": interval, "observe": observe}
        for key, event in (("took_over_at", "acquire-start"), ("blocked_at", "takeover-blocked")):
            line = failoverd.find_event(event, since=started)
            out[key] = None if line is None else round(line.t - started, 3)
        try:
            seen = client.who_answers(started + 0.5, started + observe - 1.0)
        except LabTimeout:
            seen = {}
        out["answers"] = {str(k): v for k, v in seen.items()}
        out["secondary_answered"] = seen.get(NODE_NAMES[Node.SECONDARY], 0)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--observe", type=float, default=15.0, help="seconds to watch (default 15)")
    args = p.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        result = run_once(args.interval, args.observe)
        print(json.dumps(result), file=sys.stderr)
        runs.append(result)
    took = [r["took_over_at"] for r in runs if r["took_over_at"] is not None]
    summary = {
        "runs": runs,
        "took_over": f"{len(took)}/{len(runs)}",
        "took_over_median": statistics.median(took) if took else None,  # type: ignore[type-var]
        "took_over_range": [min(took), max(took)] if took else None,  # type: ignore[type-var]
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
