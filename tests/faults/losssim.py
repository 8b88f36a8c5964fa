"""A lean discrete-event run of the two cores (heartbeatd's Sender, failoverd's Monitor) with
random loss of every datagram, timer and delivery jitter, and scheduled cable cuts.

Unlike tests/unit/sim.py it keeps one pending timer per core (so hour-long runs stay cheap) and
loses datagrams at random, one by one, as the lab's nftables ``numgen random`` rules do.
Everything is seeded: one seed, one outcome.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ipfailover.core import wire
from ipfailover.core.monitor import Acquire, Monitor, MonitorConfig, Probe, Release
from ipfailover.core.sender import Sender, SenderConfig

PRIMARY_ADDRESS = "203.0.113.10"
PRIMARY_MAC = "02:00:00:00:00:01"
PROBE_WAIT = 0.015

KEY = bytes(range(32))
NETS = ("pub", "priv")
PRIMARY = {"pub": ("203.0.113.10", 40000), "priv": ("198.51.100.10", 40000)}
SECONDARY = {"pub": ("203.0.113.20", 1694), "priv": ("198.51.100.20", 1694)}
BCAST = {"pub": ("203.0.113.255", 1694), "priv": ("198.51.100.255", 1694)}


def _net_of(addr: wire.Addr) -> str:
    return "pub" if addr[0].startswith("203.") else "priv"


@dataclass
class Outcome:
    acquires: list[float] = field(default_factory=list)
    releases: list[float] = field(default_factory=list)


def run(
    *,
    loss: float = 0.0,
    rounds: int = 1000,
    interval: float = 0.1,
    failback: float = 3.0,
    seed: int = 0,
    jitter: float = 0.003,
    latency: float = 0.0005,
    primary_cuts: Sequence[tuple[float, float]] = (),
    relink: float | None = None,
    cut_signal: bool = True,
) -> Outcome:
    """Run ``rounds`` intervals. ``primary_cuts`` are (start, end) times when the primary's cables
    are out; at each start heartbeatd sees every carrier go (``Sender.link_down``, unless not
    ``cut_signal``: heartbeatd before it told cuts), at each end it sees its carrier come back
    (``Sender.link_up``), and again ``relink`` seconds later if given (the second cable, as in
    the lab, where the cables come back one after the other and each one's carrier makes
    heartbeatd beat at once)."""
    rng = random.Random(seed)
    noise = random.Random(seed + 1000)
    queue: list[tuple[float, int, str, object]] = []
    tie = itertools.count()
    generation = {"s": 0, "m": 0}
    out = Outcome()
    sender = Sender(
        SenderConfig(node="primary", key=KEY, interval=interval, targets=tuple(BCAST.values())),
        rng=rng.randbytes,
        now=0.0,
    )
    t0 = interval * rng.random()
    cfg = MonitorConfig(
        node="secondary",
        key=KEY,
        period=interval,
        deadtime=3 * interval,
        failback_delay=failback,
        networks=NETS,
    )
    monitor = Monitor(cfg, rng=rng.randbytes, now=t0)

    def push(t: float, kind: str, payload: object = None) -> None:
        heapq.heappush(queue, (t, next(tie), kind, payload))

    def arm(who: str, timer: float | None, now: float) -> None:
        if timer is not None:
            generation[who] += 1
            push(max(timer, now) + noise.uniform(0, jitter), who, generation[who])

    def delivered(now: float) -> bool:
        cut = any(a <= now < b for a, b in primary_cuts)
        return noise.random() >= loss and not cut

    def flush_sender(now: float) -> None:
        for data, dest in sender.datagrams_to_send():
            net = _net_of(dest)
            if delivered(now):
                push(now + latency + noise.uniform(0, jitter), "to-m", (data, PRIMARY[net], net))
        while sender.next_event() is not None:
            pass
        arm("s", sender.get_timer(), now)

    def flush_monitor(now: float) -> None:
        for data, dest in monitor.datagrams_to_send():
            net = _net_of(dest)
            if delivered(now):
                push(now + latency + noise.uniform(0, jitter), "to-s", (data, SECONDARY[net]))
        while (ev := monitor.next_event()) is not None:
            if isinstance(ev, Acquire):
                out.acquires.append(ev.at)
                push(now + 0.01, "acquired")
            elif isinstance(ev, Release):
                out.releases.append(ev.at)
                push(now + 0.01, "released")
            elif isinstance(ev, Probe):
                # The probe before a takeover: the primary's address answers unless its cable
                # is out (the loss here is of heartbeat-protocol packets only, not of ARP).
                cut = any(out_at <= now < back for out_at, back in primary_cuts)
                answers = {} if cut else {PRIMARY_ADDRESS: [PRIMARY_MAC]}
                push(now + PROBE_WAIT, "probed", (ev.id, answers))
        arm("m", monitor.get_timer(), now)

    for out_at, back in primary_cuts:
        if cut_signal:
            push(out_at, "link-down")
        push(back, "link-up")
        if relink is not None:
            push(back + relink, "link-up")
    push(0.0, "s", 0)
    push(t0, "m", 0)
    end = t0 + rounds * interval
    for _ in range(200 * rounds + 1000):
        if not queue or queue[0][0] > end:
            return out
        t, _, kind, payload = heapq.heappop(queue)
        if kind in ("s", "m") and payload != generation[kind]:
            continue
        if kind == "s":
            sender.handle_timer(t)
            flush_sender(t)
        elif kind == "m":
            monitor.handle_timer(t)
            flush_monitor(t)
        elif kind == "to-m":
            data, src, net = payload  # type: ignore[misc]
            monitor.receive_datagram(data, src, net, t)
            flush_monitor(t)
        elif kind == "to-s":
            data, src = payload  # type: ignore[misc]
            sender.receive_datagram(data, src, t)
            flush_sender(t)
        elif kind == "link-down":
            sender.link_down(t)
        elif kind == "link-up":
            sender.link_up(t)
            flush_sender(t)
        elif kind == "probed":
            probe_id, answers = payload  # type: ignore[misc]
            monitor.probe_done(t, probe_id, answers)
            flush_monitor(t)
        elif kind == "acquired":
            monitor.acquire_done(t, ok=True)
            flush_monitor(t)
        elif kind == "released":
            monitor.release_done(t, ok=True)
            flush_monitor(t)
    raise AssertionError("the simulation did not finish")
