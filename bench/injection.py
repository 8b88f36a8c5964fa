"""Packet-injection figures (issue 7 section 3), measured in the sans-I/O simulation.

Usage, from the repository with the project's venv::

    .venv/bin/python bench/injection.py [--seeds 10] [--flood 1000000]

Drives ``tests/unit/injector.py`` (replays of 9 earlier primary boots, spoofed from the primary's
address on every network, plus one right after each real heartbeat) and prints, over ``--seeds``
random phases: whether and when a live primary was taken over and for how long, the failback
delay after a failoverd restart and after a heartbeatd restart (hold-down 3 s, interval 1 s), and
the state held and replies sent after ``--flood`` replays from distinct spoofed sources.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from injector import InjectedSim, old_boots
from sim import KEY, NETS
from test_injection import distinct_sources, sizes

from ipfailover.core.monitor import Monitor, MonitorConfig


def run(sim: InjectedSim, until: float) -> None:
    """Sim.run_until in steps (it bounds the events of one call)."""
    t = sim.now
    while t < until:
        t = min(until, t + 10.0)
        sim.run_until(t)


def phase(seed: int) -> float:
    return random.Random(seed).uniform(0.0, 1.0)


def live_primary(seed: int) -> tuple[float | None, float]:
    """(first false takeover, seconds held in the first 300 s) with the primary alive."""
    sim = InjectedSim(seed=seed, start_secondary_at=phase(seed))
    run(sim, 300)
    if not sim.rec.acquires:
        return None, 0.0
    t0 = sim.rec.acquires[0][0]
    t1 = sim.rec.releases[0][0] if sim.rec.releases else 300.0
    return t0, t1 - t0


def failoverd_restart(seed: int) -> float | None:
    start = phase(seed)
    sim = InjectedSim(seed=seed, holding=True, start_secondary_at=start)
    run(sim, 400)
    return sim.rec.releases[0][0] - start if sim.rec.releases else None


def heartbeatd_restart(seed: int) -> float | None:
    sim = InjectedSim(seed=seed, start_secondary_at=phase(seed))
    run(sim, 10 + phase(seed + 100))
    sim.kill_primary()
    run(sim, 25)
    back = 25 + phase(seed + 200)
    run(sim, back)
    sim.revive_primary()
    run(sim, back + 400)
    releases = [t for t, _ in sim.rec.releases if t > back]
    return releases[0] - back if releases else None


def flood(n: int) -> tuple[int, int, float, float]:
    captures = [c for boot in old_boots(9, 1200, seed=7) for c in boot]
    cfg = MonitorConfig(
        node="secondary", key=KEY, period=1.0, deadtime=3.0, failback_delay=3.0, networks=NETS
    )
    m = Monitor(cfg, rng=random.Random(1).randbytes, now=0.0)
    sources = distinct_sources()
    sent = peak = 0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for i in range(n):
        now = i / 1000
        data, net = captures[i % len(captures)]
        m.receive_datagram(data, next(sources), net, now)
        if i % 97 == 0:
            m.handle_timer(now)
        sent += len(m.datagrams_to_send())
        while m.next_event() is not None:
            pass
        if i % 50_000 == 0:
            peak = max(peak, sizes(m))
    secs = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0] - base  # what the flood left allocated
    tracemalloc.stop()
    return max(peak, sizes(m)), sent, secs, held / 1e6


def summary(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"never ({len(values)} runs)"
    text = f"median {statistics.median(got):.2f} s, min {min(got):.2f}, max {max(got):.2f}"
    missing = len(values) - len(got)
    return text + (f"; never in {missing} of {len(values)} runs" if missing else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--flood", type=int, default=1_000_000)
    args = p.parse_args()
    seeds = range(args.seeds)
    live = [live_primary(s) for s in seeds]
    taken = [t for t, _ in live if t is not None]
    print(f"live primary: false takeover in {len(taken)} of {len(live)} runs", end="")
    if taken:
        print(f", first at {summary(list(taken))}, held {summary([h for t, h in live if t])}")
    else:
        print()
    print(f"failback after failoverd restart: {summary([failoverd_restart(s) for s in seeds])}")
    print(f"failback after heartbeatd restart: {summary([heartbeatd_restart(s) for s in seeds])}")
    if args.flood:
        peak, sent, secs, mb = flood(args.flood)
        print(
            f"{args.flood} replays from distinct sources: peak {peak} container elements, "
            f"{mb:.1f} MB still allocated after it (tracemalloc), {sent} replies, {secs:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
