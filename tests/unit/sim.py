"""Two endpoints over an in-memory link: a heartbeatd core and a failoverd core, on float time.

The simulation is discrete-event: both cores' timers and every datagram delivery are put on one
queue ordered by time. Each network can be cut (both directions) and the primary can die; an
optional attacker replays captured datagrams. It records what happened so tests can check
invariants against ground truth (what was actually delivered), not against the monitor's beliefs.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from ipfailover.core import wire
from ipfailover.core.monitor import (
    Acquire,
    AddressAnswers,
    Defend,
    Monitor,
    MonitorConfig,
    NetworkEvent,
    Probe,
    Release,
    State,
    StateChanged,
    Trigger,
)
from ipfailover.core.sender import Announce, Sender, SenderConfig

KEY = bytes(range(32))
NETS = ("pub", "priv")
PRIMARY = {"pub": ("203.0.113.10", 40000), "priv": ("198.51.100.10", 40000)}
SECONDARY = {"pub": ("203.0.113.20", 1694), "priv": ("198.51.100.20", 1694)}
BCAST = {"pub": ("203.0.113.255", 1694), "priv": ("198.51.100.255", 1694)}
SERVICE = "203.0.113.10"  # the address the secondary takes over (the primary's, on pub)
PRIMARY_MAC = "02:00:00:00:00:10"


def net_of(addr: wire.Addr) -> str:
    for table in (PRIMARY, SECONDARY, BCAST):
        for net, a in table.items():
            if a[0] == addr[0]:
                return net
    raise AssertionError(addr)


@dataclass
class Record:
    acquires: list[tuple[float, Trigger]] = field(default_factory=list)
    releases: list[tuple[float, Trigger]] = field(default_factory=list)
    done: list[tuple[float, str]] = field(default_factory=list)
    delivered: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in NETS})
    announces: list[tuple[float, str]] = field(default_factory=list)
    network_events: list[tuple[float, str, str]] = field(default_factory=list)
    probes: list[tuple[float, bool]] = field(default_factory=list)  # (when, answered)
    answers: list[AddressAnswers] = field(default_factory=list)
    acquire_events: list[Acquire] = field(default_factory=list)
    defences: list[Defend] = field(default_factory=list)
    states: list[StateChanged] = field(default_factory=list)
    overlap: bool = False


class Sim:
    def __init__(
        self,
        *,
        interval: float = 1.0,
        deadtime: float = 3.0,
        failback: float = 3.0,
        latency: float = 0.001,
        transition: float = 0.01,
        seed: int = 0,
        holding: bool = False,
        start_secondary_at: float = 0.0,
        probe_wait: float = 0.03,
        take_answering: bool = True,
    ) -> None:
        self.rand = random.Random(seed)
        self.latency = latency
        self.skew: dict[str, float] = {}  # extra one-way latency per network
        self.transition = transition
        self.now = 0.0
        self.up = dict.fromkeys(NETS, True)
        self.primary_alive = True  # heartbeatd runs
        self.host_up = True  # the primary's kernel answers ARP for its address
        self.firewalled = False  # the secondary drops every heartbeat (inbound UDP 1694)
        self.probe_wait = probe_wait
        self.captured: list[tuple[bytes, str]] = []
        self.rec = Record()
        self._q: list[tuple[float, int, str, object]] = []
        self._tie = itertools.count()
        self._busy = False
        self.veto_acquire = False  # the Test script says no
        # heartbeatd's first round of announcements for a hand-back takes this long, and is
        # confirmed (False: it cannot announce, so it never confirms)
        self.announce_delay = 0.002
        self.confirm_handback = True
        # the boot ids in each host's FAILOVER_RUN_DIR besides the daemon's own (see the shells)
        self.primary_boots: frozenset[bytes] = frozenset()
        self.secondary_boots: frozenset[bytes] = frozenset()
        self.sender = Sender(
            SenderConfig(node="primary", key=KEY, interval=interval, targets=tuple(BCAST.values())),
            rng=self.rand.randbytes,
            now=0.0,
        )
        self.mcfg = MonitorConfig(
            node="secondary",
            key=KEY,
            period=interval,
            deadtime=deadtime,
            failback_delay=failback,
            networks=NETS,
            take_answering=take_answering,
        )
        self.monitor: Monitor | None = None
        self._holding = holding
        self._push(start_secondary_at, "start-secondary", None)
        self._push(0.0, "sender-timer", None)

    # Scheduling --------------------------------------------------------------------------------

    def _push(self, t: float, kind: str, payload: object) -> None:
        heapq.heappush(self._q, (t, next(self._tie), kind, payload))

    def run_until(self, t_end: float) -> None:
        for _ in range(1_000_000):
            if not self._q or self._q[0][0] > t_end:
                self.now = t_end
                return
            t, _, kind, payload = heapq.heappop(self._q)
            self.now = t
            self._dispatch(kind, payload)
        raise AssertionError("simulation did not converge")

    def _dispatch(self, kind: str, payload: object) -> None:
        t = self.now
        if kind == "start-secondary":
            self.monitor = Monitor(self.mcfg, rng=self.rand.randbytes, now=t, holding=self._holding)
            self._push(t, "monitor-timer", None)
        elif kind == "sender-timer":
            if self.primary_alive:
                self.sender.handle_timer(t)
                self._flush_sender()
        elif kind == "monitor-timer":
            assert self.monitor is not None
            deadline = self.monitor.get_timer()
            if deadline is not None and deadline <= t:
                self.monitor.handle_timer(t)
            self._flush_monitor()
        elif kind == "probe-done":
            assert self.monitor is not None
            probe_id, answered = payload  # type: ignore[misc]
            answers = {SERVICE: [PRIMARY_MAC]} if answered else {}
            self.monitor.probe_done(t, probe_id, answers)
            self._flush_monitor()
        elif kind == "to-secondary":
            data, src, net = payload  # type: ignore[misc]
            if self.monitor is not None and not self.firewalled:
                self.monitor.receive_datagram(data, src, net, t)
                if self.monitor.wants_local_boots:
                    self.monitor.set_local_boots(self.secondary_boots, t)
                self._flush_monitor()
        elif kind == "to-primary":
            data, src = payload  # type: ignore[misc]
            if self.primary_alive:
                self.sender.receive_datagram(data, src, t)
                if self.sender.wants_local_boots:
                    self.sender.set_local_boots(self.primary_boots, t)
                self._flush_sender()
        elif kind == "handback-announced":
            if self.primary_alive:
                self.sender.handback_announced(t, payload)  # type: ignore[arg-type]
                self._flush_sender()
        elif kind == "acquire-done":
            assert self.monitor is not None
            self._busy = False
            self.rec.done.append((t, "acquire"))
            self.monitor.acquire_done(t, ok=not self.veto_acquire)
            self._flush_monitor()
        elif kind == "release-done":
            assert self.monitor is not None
            self._busy = False
            self.rec.done.append((t, "release"))
            self.monitor.release_done(t, ok=True)
            self._flush_monitor()

    def _flush_sender(self) -> None:
        for data, dest in self.sender.datagrams_to_send():
            net = net_of(dest)
            self.captured.append((data, net))
            if self.up[net]:
                at = self.now + self.latency + self.skew.get(net, 0.0)
                self.rec.delivered[net].append(at)
                self._push(at, "to-secondary", (data, PRIMARY[net], net))
        while (ev := self.sender.next_event()) is not None:
            if isinstance(ev, Announce):
                self.rec.announces.append((ev.at, ev.reason))
                if ev.handback and self.confirm_handback:
                    at = self.now + self.announce_delay
                    self._push(at, "handback-announced", ev.handback)
        timer = self.sender.get_timer()
        if timer is not None:
            self._push(max(timer, self.now), "sender-timer", None)

    def _flush_monitor(self) -> None:
        assert self.monitor is not None
        for data, dest in self.monitor.datagrams_to_send():
            net = net_of(dest)
            if self.up[net]:
                self._push(self.now + self.latency, "to-primary", (data, SECONDARY[net]))
        while (ev := self.monitor.next_event()) is not None:
            if isinstance(ev, NetworkEvent):
                self.rec.network_events.append((ev.at, ev.kind, ev.network))
            if isinstance(ev, Probe):
                self.rec.probes.append((ev.at, self.answers_probe()))
                self._push(self.now + self.probe_wait, "probe-done", (ev.id, self.answers_probe()))
            if isinstance(ev, AddressAnswers):
                self.rec.answers.append(ev)
            if isinstance(ev, Defend):
                self.rec.defences.append(ev)
            if isinstance(ev, StateChanged):
                self.rec.states.append(ev)
            if isinstance(ev, Acquire | Release):
                if self._busy:
                    self.rec.overlap = True
                self._busy = True
                if isinstance(ev, Acquire):
                    self.rec.acquires.append((ev.at, ev.reason))
                    self.rec.acquire_events.append(ev)
                    self._push(self.now + self.transition, "acquire-done", None)
                else:
                    self.rec.releases.append((ev.at, ev.reason))
                    self._push(self.now + self.transition, "release-done", None)
        timer = self.monitor.get_timer()
        if timer is not None:
            self._push(max(timer, self.now), "monitor-timer", None)

    # Scenario controls -------------------------------------------------------------------------

    def answers_probe(self) -> bool:
        """The primary's address answers an ARP probe: its host is up and on the public link."""
        return self.host_up and self.up["pub"]

    def kill_primary(self) -> None:
        """The primary host dies: no heartbeats, and its address no longer answers."""
        self.primary_alive = False
        self.host_up = False

    def hang_primary(self) -> None:
        """heartbeatd dies (or user space hangs) but the kernel still answers for the address."""
        self.primary_alive = False

    def revive_primary(self) -> None:
        """A restarted heartbeatd: a new boot id, challenged afresh."""
        if self.primary_alive:
            return
        self.primary_alive = True
        self.host_up = True
        self.sender = Sender(self.sender.cfg, rng=self.rand.randbytes, now=self.now)
        self._push(self.now, "sender-timer", None)

    def stop_primary(self) -> None:
        """Graceful stop: LEAVING, then silence."""
        self.sender.leave(self.now)
        self._flush_sender()
        self.primary_alive = False

    def cables(self, up: bool) -> None:
        """The primary's cables all out (``up`` False) or all back: both networks stop or start
        delivering, and heartbeatd sees its carrier go or come back (``link_down``/``link_up``),
        as its shell reports it."""
        self.up = dict.fromkeys(NETS, up)
        if up:
            self.sender.link_up(self.now)
            self._flush_sender()
        else:
            self.sender.link_down(self.now)

    def replay(self, data: bytes, net: str, at: float | None = None) -> None:
        """An attacker on ``net`` re-sends a captured datagram (now, or ``at``) from the primary's
        address. It counts as delivered: it is the primary's own heartbeat, if an old one."""
        at = self.now if at is None else at
        self.rec.delivered[net].append(at)
        self._push(at, "to-secondary", (data, PRIMARY[net], net))


def in_holddown() -> Sim:
    """A pair whose primary died at 5 s and came back at 15 s: at 17 s the secondary holds its
    addresses in a 10 s hold-down."""
    sim = Sim(failback=10.0)
    sim.run_until(5)
    sim.kill_primary()
    sim.run_until(15)
    sim.revive_primary()
    sim.run_until(17)
    assert sim.monitor is not None and sim.monitor.state is State.HOLDDOWN
    return sim


class Hand:
    """A monitor driven by hand on one network: heartbeats of one primary boot, with the
    echoes the test chooses, and the nonces of the challenges the monitor sends back."""

    def __init__(self, m: Monitor, network: str = "pub") -> None:
        self.m = m
        self.network = network
        self._seq = 0

    def beat(self, echo: tuple[bytes, ...], at: float) -> None:
        self._seq += 1
        hb = wire.Message(
            type=wire.MsgType.HEARTBEAT,
            sender="primary",
            boot_id=b"p" * 8,
            seq=self._seq,
            interval=1.0,
            echoes=echo,
        )
        self.m.receive_datagram(wire.encode(hb, KEY), PRIMARY[self.network], self.network, at)

    def nonce(self) -> bytes:
        """The nonce of the first challenge the monitor has sent since the last call."""
        (data, _), *_ = self.m.datagrams_to_send()
        return wire.decode(data, KEY).nonce
