"""Fuzz both sans-I/O cores with 10^6 random and mutated datagrams (issue 8, case 11).

Usage (from the repository, with the project's venv)::

    .venv/bin/python bench/fuzz.py --inputs 1000000 --seed 1 --out bench/results/fuzz.json

See :mod:`ipfailover.lab.fuzz` for what is fed and what is checked. Progress goes to stderr, a
summary (counts per kind and outcome, per state of each core when fed, per type of captured
datagram the inputs were made from, what the pair did, time) to stdout and, with ``--out``, as
JSON. Exit status: 0 if every invariant held, 1 at the first that broke (the message names the
input).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from ipfailover.lab import fuzz as labfuzz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()

    def progress(r: labfuzz.Report) -> None:
        print(f"{r.total} inputs, {r.seconds:.0f} s", file=sys.stderr)

    try:
        report = labfuzz.run(args.inputs, args.seed, progress)
    except labfuzz.FuzzFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "seed": report.seed,
        "inputs": report.total,
        "seconds": round(report.seconds, 1),
        "per_kind": dict(sorted(report.inputs.items())),
        "outcomes": dict(sorted(report.outcomes.items())),
        "monitor_states": dict(sorted(report.states.items())),
        "sender_states": dict(sorted(report.sender_states.items())),
        "captured": dict(sorted(report.captured.items())),
        "fresh": dict(sorted(report.fresh.items())),
        "copied": dict(sorted(report.copied.items())),
        "schedule": dict(sorted(report.schedule.items())),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
