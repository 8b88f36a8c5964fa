"""Failback figures from ``ipfailover lab --json`` output (issue 10, item 1).

For each failback phase of each run (the cables back, heartbeatd restarted): ``return_cost``,
from the primary's return (heartbeatd's link-up or start line) to the secondary's hold-down
start; ``home_after_holddown``, from the hold-down start (the primary's first verified heartbeat)
to the client's first answer from the primary; ``release_after_holddown``, to failoverd's
release-start; and the probes lost (10 ms spacing) over the phase.

    ipfailover lab --interval 1 --failback-delay 3 --runs 3 --json > lab.json
    python3 bench/failback.py lab.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def analyse(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with open(path) as f:
        d = json.load(f)
    rows = []
    for run in d["runs"]:
        tl = run["timeline"]

        def first(after: float, pred: Any, tl: list[dict[str, Any]] = tl) -> float | None:
            for e in tl:
                if e["t"] >= after and pred(e):
                    return e["t"]
            return None

        for phase, mark in (
            ("failback", "cable primary public up"),
            ("restart-failback", "start primary/heartbeatd-2"),
        ):
            a = first(0, lambda e, m=mark: e["source"] == "lab" and e["text"].startswith(m))
            if a is None:
                continue
            ret = first(
                a,
                lambda e: (
                    e["source"].startswith("primary/heartbeatd")
                    and ("event=link-up" in e["text"] or "event=start" in e["text"])
                ),
            )
            hd = first(a, lambda e: "new=holddown" in e["text"])
            home = first(
                hd or a, lambda e: e["source"] == "client" and "answers: primary" in e["text"]
            )
            rel = first(hd or a, lambda e: "event=release-start" in e["text"])
            ph = run["phases"].get(phase, {})
            rows.append(
                dict(
                    run=run["run"],
                    phase=phase,
                    return_cost=(hd - ret) if hd and ret else None,
                    home_after_holddown=(home - hd) if home and hd else None,
                    release_after_holddown=(rel - hd) if rel and hd else None,
                    lost=ph.get("lost"),
                    seconds=ph.get("seconds"),
                )
            )
    return d["params"], rows


if __name__ == "__main__":
    for path in sys.argv[1:]:
        params, rows = analyse(path)
        print(path, "interval", params["interval"], "failback", params["failback_delay"])
        for r in rows:
            print("  ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
