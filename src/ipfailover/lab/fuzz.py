"""Fuzzing both sans-I/O cores (issue 8, case 11): random and mutated datagrams, with the key.

A real heartbeat sender (the primary) and a real monitor (the secondary) run as a pair over two
perfect in-memory networks, on simulated time, and the primary dies and comes back (with a new
boot) on a fixed cycle, so the monitor passes through standby, takeover, hold-down and
hand-back. Between their own exchanges, each core is fed fuzz inputs:

* random bytes (some behind a valid magic and version, to get past the first checks);
* captured datagrams with bit flips, truncated, or extended;
* captured datagrams with one field changed and **re-signed with the key**: type, flags, name,
  boot id, sequence number, interval, echoes (count and content), nonce, echoed boot and
  sequence, body length; and exact replays.

Around every input the harness takes a snapshot of the core and checks:

* nothing escapes ``receive_datagram`` (any exception is a failure);
* an input that is not authentic changes nothing at all (every attribute except counters and
  the event and output queues), and produces exactly one ``Dropped`` event;
* an authentic input that is not *fresh* changes nothing a fresh heartbeat relies on: for the
  monitor its state, the detector, the pinned peer name and boot, the verified addresses, the
  hold-down and retry times; for the sender its boot, sequence number, listeners, release ids
  and pending announcement. Anyone with the key can make a fresh datagram, so fresh means, for
  the monitor: a HEARTBEAT or LEAVING, not from our own name, echoing a nonce the monitor
  issued and still keeps, and not an exact repeat of one it was given while it still keeps
  that boot's replay window (older boots' windows are evicted: issue 7); for the sender: a
  CHALLENGE or RELEASED, not from its own name, echoing its boot id and a sequence number
  within its echo horizon, and not a challenge sequence number it already has for that
  listener boot (nor a release id it already has);
* memory stays bounded: the sources, replay windows, boot schedules, retired boots, nonces and
  listeners never exceed their documented caps.

:func:`run` returns a :class:`Report`; ``tests/unit/test_fuzz.py`` runs 10^5 inputs and
``bench/fuzz.py`` 10^6. The inputs are made by :mod:`ipfailover.lab.mutator`, the snapshots
compared by :mod:`ipfailover.lab.snapshot`; this module is the harness around both cores.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipfailover.core import monitor, sender, wire
from ipfailover.core.monitor import Acquire, Monitor, MonitorConfig, Probe, Release
from ipfailover.core.sender import Sender, SenderConfig
from ipfailover.lab import snapshot
from ipfailover.lab.mutator import KEY, POOL, Mutator

NETS = ("pub", "priv")
PRIMARY = {"pub": ("203.0.113.10", 40000), "priv": ("198.51.100.10", 40000)}
SECONDARY = {"pub": ("203.0.113.20", 1694), "priv": ("198.51.100.20", 1694)}
BCAST = {"pub": ("203.0.113.255", 1694), "priv": ("198.51.100.255", 1694)}
SPOOFED = (("203.0.113.66", 1694), ("198.51.100.66", 4000), ("192.0.2.1", 1))
INTERVAL = 1.0
DEADTIME = 3.0
FAILBACK = 3.0
STEP = INTERVAL / 4
ALIVE_STEPS, DEAD_STEPS = 80, 24  # the primary's cycle: 20 s alive, 6 s dead


class FuzzFailure(AssertionError):
    """An invariant broke; the message names the input (hex), the core and what changed."""


@dataclass
class Report:
    seed: int
    inputs: Counter[str] = field(default_factory=Counter)  # per core and kind
    outcomes: Counter[str] = field(default_factory=Counter)  # dropped reasons, accepted...
    states: Counter[str] = field(default_factory=Counter)  # monitor state at each input
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())


# --- the harness ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.now = 0.0
        self.step = 0
        self.alive = True
        self.mutator = Mutator(self.rng)
        self.to_monitor: list[tuple[bytes, str]] = []  # captured (datagram, network)
        self.to_sender: list[bytes] = []
        # every authentic datagram the monitor was given lately (its hash -> when)
        self.fed_monitor: dict[int, float] = {}
        self.sender = self._new_sender()
        self.monitor = Monitor(
            MonitorConfig(
                node="secondary",
                key=KEY,
                period=INTERVAL,
                deadtime=DEADTIME,
                failback_delay=FAILBACK,
                networks=NETS,
            ),
            rng=self.rng.randbytes,
            now=0.0,
        )

    def _new_sender(self) -> Sender:
        cfg = SenderConfig(
            node="primary", key=KEY, interval=INTERVAL, targets=tuple(BCAST.values())
        )
        return Sender(cfg, rng=self.rng.randbytes, now=self.now)

    # The pair's own exchange -----------------------------------------------------------------

    def tick(self) -> None:
        """One step of simulated time: timers, the pair's datagrams, the primary's cycle."""
        self.step += 1
        self.now = self.step * STEP
        phase = self.step % (ALIVE_STEPS + DEAD_STEPS)
        if phase == ALIVE_STEPS:
            self.alive = False  # the primary dies
        elif phase == 0 and not self.alive:
            self.alive = True  # and comes back, a new boot
            self.sender = self._new_sender()
        if self.alive:
            self.sender.handle_timer(self.now)
            self._flush_sender()
        self.monitor.handle_timer(self.now)
        self._flush_monitor()
        if self.step % 40 == 0:  # older captures echo no live nonce: never fresh anyway
            horizon = self.now - DEADTIME - 2 * INTERVAL
            self.fed_monitor = {h: t for h, t in self.fed_monitor.items() if t > horizon}

    def _flush_sender(self) -> None:
        for data, dest in self.sender.datagrams_to_send():
            net = "pub" if dest[0].startswith("203.") else "priv"
            self._capture_for_monitor(data, net)
            self._note_fed(data)
            self.monitor.receive_datagram(data, PRIMARY[net], net, self.now)
        while self.sender.next_event() is not None:
            pass
        self._flush_monitor()

    def _flush_monitor(self) -> None:
        out = self.monitor.datagrams_to_send()
        while (ev := self.monitor.next_event()) is not None:
            _carry_out(self.monitor, ev, self.now)
        out += self.monitor.datagrams_to_send()
        for data, dest in out:
            self.to_sender.append(data)
            del self.to_sender[:-POOL]
            self.mutator.note(data)
            if self.alive:
                net = "pub" if dest[0].startswith("203.") else "priv"
                self.sender.receive_datagram(data, SECONDARY[net], self.now)
        if self.alive and out:
            self._flush_sender()

    def _capture_for_monitor(self, data: bytes, net: str) -> None:
        self.to_monitor.append((data, net))
        del self.to_monitor[:-POOL]
        self.mutator.note(data)

    def _note_fed(self, data: bytes) -> None:
        self.fed_monitor[hash(data)] = self.now

    # Fuzz inputs ---------------------------------------------------------------------------

    def _mutate(self, data: bytes) -> tuple[str, bytes]:
        r = self.rng.random()
        if r < 0.15:
            return "random", self.mutator.random_bytes()
        if r < 0.35:
            return "bitflip", self.mutator.bit_flip(data)
        if r < 0.45:
            return "truncate", self.mutator.truncate(data)
        if r < 0.55:
            return "extend", self.mutator.extend(data)
        return "resign", self.mutator.resign(data)

    def _addr(self, real: wire.Addr) -> wire.Addr:
        return real if self.rng.random() < 0.7 else self.rng.choice(SPOOFED)

    def fuzz_monitor(self) -> None:
        if not self.to_monitor:
            return
        m, now = self.monitor, self.now
        base, net = self.rng.choice(self.to_monitor)
        kind, data = self._mutate(base)
        addr = self._addr(PRIMARY[net])
        if self.rng.random() < 0.1:
            net = self.rng.choice(NETS)
        self.report.inputs[f"monitor.{kind}"] += 1
        self.report.states[m.state.value] += 1
        m.handle_timer(now)
        self._flush_monitor()
        msg = _decode(data)
        fresh = msg is not None and self._fresh_for_monitor(msg, data)
        events = self._feed(
            "monitor",
            m,
            lambda: m.receive_datagram(data, addr, net, now),
            data,
            msg,
            None if msg is None or fresh else snapshot.monitor_core,
        )
        if msg is not None:
            self._note_fed(data)
        for ev in events:
            _carry_out(m, ev, now)
        _drain(m)
        m.datagrams_to_send()  # challenges to spoofed sources go nowhere
        self._check_monitor_bounds()

    def _feed(
        self,
        name: str,
        core: Monitor | Sender,
        deliver: Callable[[], None],
        data: bytes,
        msg: wire.Message | None,
        view: Callable[[Any], dict[str, Any]] | None,
    ) -> list[object]:
        """Deliver one input to ``core`` and hold it to the rules: nothing escapes but the
        drop, and that is counted once; unauthentic input (``msg`` None) changes nothing at all;
        a non-fresh one changes nothing in ``view`` (None: it is fresh, or unauthentic)."""
        whole = snapshot.whole(core) if msg is None else None
        before = None if view is None else view(core)
        rejected = snapshot.rejected(core)
        try:
            deliver()
        except Exception as e:
            raise self._fail(name, data, f"{type(e).__name__}: {e}") from e
        events = _drain(core)
        dropped = [e for e in events if isinstance(e, wire.Dropped)]
        if len(dropped) != snapshot.rejected(core) - rejected or len(dropped) > 1:
            raise self._fail(name, data, f"drops not counted once: {events}")
        outcome = dropped[0].reason.value if dropped else "accepted"
        self.report.outcomes[f"{name}.{outcome}"] += 1
        if whole is not None:
            if not dropped:
                raise self._fail(name, data, "an unauthentic datagram was not dropped")
            changed = snapshot.changed(whole, core)
            if changed:
                raise self._fail(name, data, f"unauthentic input changed {changed}")
        elif before is not None and view is not None:
            changed = snapshot.diff(before, view(core))
            if changed:
                raise self._fail(name, data, f"a non-fresh input changed {changed}")
        return events

    def _fresh_for_monitor(self, msg: wire.Message, data: bytes) -> bool:
        """Anyone with the key can make a fresh heartbeat; only an exact repeat of one given
        while the monitor still keeps that boot's replay window is not fresh."""
        m = self.monitor
        replay = hash(data) in self.fed_monitor and (msg.sender, msg.boot_id) in m._windows
        return (
            msg.type in (wire.MsgType.HEARTBEAT, wire.MsgType.LEAVING)
            and msg.sender != m.cfg.node
            and any(e in m._nonces for e in msg.echoes)
            and not replay
        )

    def fuzz_sender(self) -> None:
        if not self.to_sender or not self.alive:
            return
        s, now = self.sender, self.now
        base = self.rng.choice(self.to_sender)
        kind, data = self._mutate(base)
        addr = self._addr(self.rng.choice(tuple(SECONDARY.values())))
        self.report.inputs[f"sender.{kind}"] += 1
        msg = _decode(data)
        fresh = msg is not None and self._fresh_for_sender(msg)
        self._feed(
            "sender",
            s,
            lambda: s.receive_datagram(data, addr, now),
            data,
            msg,
            None if msg is None or fresh else snapshot.sender_core,
        )
        s.datagrams_to_send()  # the immediate beat to a new listener: not delivered
        if len(s._listeners) > sender.MAX_LISTENERS or len(s._release_ids) > 17:
            raise self._fail("sender", data, "listener or release-id tables grew past their caps")

    def _fresh_for_sender(self, msg: wire.Message) -> bool:
        s = self.sender
        if msg.type not in (wire.MsgType.CHALLENGE, wire.MsgType.RELEASED):
            return False
        # our boot, and a sequence number we sent within the echo horizon (computed here, not
        # by asking the sender, so that a sender that stops checking is caught)
        horizon = len(s.cfg.targets) * math.ceil(sender.ECHO_HORIZON / s.cfg.interval) + 16
        recent = msg.echo_boot == s.boot_id and 0 <= s.seq - msg.echo_seq <= horizon
        if msg.sender == s.cfg.node or not recent:
            return False
        if msg.type is wire.MsgType.RELEASED:
            return msg.nonce not in s._release_ids
        entry = s._listeners.get((msg.sender, msg.boot_id))
        return entry is None or msg.seq > entry.seq

    def _check_monitor_bounds(self) -> None:
        m = self.monitor
        size = m.footprint()
        bounded = {
            "sources": (size["sources"], monitor.MAX_SOURCES * len(NETS)),
            "replay windows": (size["windows"], monitor.MAX_BOOTS + 1),
            "boot schedules": (size["boots"], monitor.MAX_BOOT_STATES),
            "retired boots": (size["retired"], 2 * monitor.MAX_RETIRED),
            "held datagrams": (size["held"], monitor.MAX_HELD),
            "networks": (len(m._peers), len(NETS)),
            "nonces": (size["nonces"], int((DEADTIME + INTERVAL) / INTERVAL) + 2),
        }
        over = {k: v for k, v in bounded.items() if v[0] > v[1]}
        if over:
            raise FuzzFailure(f"monitor tables past their caps: {over}")

    def _fail(self, core: str, data: bytes, what: str) -> FuzzFailure:
        return FuzzFailure(
            f"seed {self.report.seed}, t={self.now:g}, {core} in "
            f"{self.monitor.state.value}: {what}; input {data.hex()}"
        )


def _decode(data: bytes) -> wire.Message | None:
    try:
        return wire.decode(data, KEY)
    except wire.RemoteProtocolError:
        return None


def _carry_out(m: Monitor, ev: object, now: float) -> None:
    """What the shell does for the monitor, at once and always successfully; the primary's
    host is down, so a probe finds nothing answering."""
    if isinstance(ev, Probe):
        m.probe_done(now, ev.id, {})
    elif isinstance(ev, Acquire):
        m.acquire_done(now, ok=True)
    elif isinstance(ev, Release):
        m.release_done(now, ok=True)


def _drain(core: Monitor | Sender) -> list[Any]:
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def run(inputs: int, seed: int = 1, progress: Callable[[Report], None] | None = None) -> Report:
    """Feed ``inputs`` fuzz datagrams in all, about half to each core (all to the monitor while
    the primary is dead); raise :class:`FuzzFailure` at the first broken invariant."""
    h = Harness(seed)
    began = time.perf_counter()
    per_step = 8
    done = 0
    while done < inputs:
        h.tick()
        for _ in range(per_step):
            if done >= inputs:
                break
            if done % 2 == 0 or not h.alive:
                h.fuzz_monitor()  # a dead primary's sender gets nothing
            else:
                h.fuzz_sender()
            done += 1
        if progress is not None and h.step % 5000 == 0:
            h.report.seconds = time.perf_counter() - began
            progress(h.report)
    h.report.seconds = time.perf_counter() - began
    return h.report
