"""Flood failoverd with forged datagrams in the namespace lab (issue 8, case 10).

Usage (as root, from the repository, with the project's venv)::

    .venv/bin/python bench/flood.py --seconds 60 --out bench/results/flood.json
    .venv/bin/python bench/flood.py --sweep 2000,5000,10000,20000,40000,0 --seconds 15

heartbeatd runs on the primary and failoverd on the secondary, both at ``--interval``; the
client namespace floods the secondary's public address with forged heartbeats
(:mod:`ipfailover.lab.flood`, ``--procs`` processes; rate 0 = as fast as they can). For each
rate the run reports: the rate achieved, the heartbeats failoverd counted on the flooded
network (public) and on the other one (private) against the number the primary sent, takeovers
during the flood, anomalies, and failoverd's RSS before and after. The last run (the highest
rate) then kills heartbeatd during the flood and reports how long the takeover took to start.
A JSON report goes to ``--out``, a Markdown table to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ipfailover.lab import flood as labflood
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import Node


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def heartbeats(lab: Lab, config: Path) -> dict[str, int]:
    argv = ["ip", "netns", "exec", lab.ns(Node.SECONDARY), sys.executable, "-m",
            "ipfailover.cli", "status", "--json", "--config", str(config)]  # fmt: skip
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    for daemon in json.loads(out)["daemons"]:
        if daemon.get("role") == "failoverd":
            return {n["name"]: n["heartbeats"] for n in daemon["networks"]}
    raise RuntimeError(f"no failoverd in the status: {out[:300]}")


def wall(text: str) -> float:
    stamp = " ".join(text.split()[:2])
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def one_run(rate: int, args: argparse.Namespace, kill: bool) -> dict[str, Any]:
    with Lab() as lab:
        interval = args.interval
        hb = lab.start_daemon(
            Node.PRIMARY,
            "heartbeatd",
            lab.node_config(Node.PRIMARY, filename="hb.conf", FAILOVER_INTERVAL=interval),
        )
        fo_conf = lab.node_config(Node.SECONDARY, filename="fo.conf", FAILOVER_INTERVAL=interval)
        fo = lab.start_daemon(Node.SECONDARY, "failoverd", fo_conf)
        fo.wait_event("peer-verified", timeout=20, network="pub0")
        fo.wait_event("peer-verified", timeout=20, network="priv0")
        time.sleep(2 * interval + 0.5)
        rss_before = rss_kb(fo.pid)
        before = heartbeats(lab, fo_conf)
        began = lab.mark(f"flood at {rate}/s")
        flood = labflood.start(
            lab, Node.CLIENT, "203.0.113.20", seconds=args.seconds, rate=rate, procs=args.procs
        )
        t0 = time.monotonic()
        result: dict[str, Any] = {"rate_asked": rate}
        if kill:
            time.sleep(args.seconds * 0.6)
            killed = time.time()
            hb.send_signal(signal.SIGKILL)
            taken = fo.wait_event("acquire-start", timeout=30, since=began)
            result["detected_after_death_s"] = round(wall(taken.text) - killed, 3)
        else:
            time.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        after = heartbeats(lab, fo_conf) if not kill else {}
        done = labflood.result(flood, timeout=args.seconds + 30)
        rss_after = rss_kb(fo.pid)
        expected = elapsed / interval
        result.update(
            rate_achieved=round(done.rate),
            sent=done.sent,
            send_errors=done.errors,
            takeovers_while_alive=len(
                [e for e in fo.events("acquire-start", since=began) if not kill]
            ),
            anomalies=len(fo.events("anomaly", since=began)),
            rss_before_kb=rss_before,
            rss_after_kb=rss_after,
            failoverd_alive=fo.poll() is None,
        )
        if after:
            for net, label in (("pub0", "flooded"), ("priv0", "other")):
                got = after.get(net, 0) - before.get(net, 0)
                result[f"heartbeat_loss_{label}"] = round(max(0.0, 1 - got / expected), 3)
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--sweep", default="0", help="comma-separated rates; 0 = as fast as it can")
    ap.add_argument("--out")
    args = ap.parse_args()
    rates = [int(r) for r in args.sweep.split(",")]
    runs = []
    for i, rate in enumerate(rates):
        print(f"flood at {rate or 'max'}/s for {args.seconds:g} s", file=sys.stderr)
        runs.append(one_run(rate, args, kill=False))
        print(json.dumps(runs[-1]), file=sys.stderr)
        if i == len(rates) - 1:
            print("again, killing the primary during the flood", file=sys.stderr)
            runs.append(one_run(rate, args, kill=True))
            print(json.dumps(runs[-1]), file=sys.stderr)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "interval": args.interval,
        "seconds": args.seconds,
        "procs": args.procs,
        "runs": runs,
    }
    cols = ["rate_asked", "rate_achieved", "heartbeat_loss_flooded", "heartbeat_loss_other",
            "takeovers_while_alive", "anomalies", "rss_before_kb", "rss_after_kb",
            "detected_after_death_s"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in runs:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
