"""Fuzzing both sans-I/O cores (issue 8, case 11): random and mutated datagrams, with the key.

A real heartbeat sender (the primary) and a real monitor (the secondary) run as a pair over two
perfect in-memory networks, on simulated time, with both shells played by the harness: the
monitor's probes, takeovers and releases take a moment of simulated time (so the monitor is fed
fuzz while probing, acquiring and releasing, too), and the primary's shell confirms a hand-back
(``Sender.handback_announced``) after a short delay, or late, or reports that it could not
announce, or never answers (so the monitor's hand-back ends by ANNOUNCED or by its timeout).
The primary runs a fixed cycle of :data:`CYCLE` steps:

* it comes back with a new boot (the monitor, holding, goes through hold-down, hand-back and
  releasing back to standby);
* in half of the cycles it is then cut off on both networks (``Sender.link_down``) for less
  than the dead time, then ``link_up``: its next heartbeats carry the cut-off flag, and the
  monitor takes over at once and hands back again (a flagged heartbeat during the hold-down
  starts it over); in a quarter it is instead cut off for the last half second of the hold-down
  after its return, until the monitor asks for the hand-back: its first heartbeat, flagged,
  then finds the monitor in handback, which keeps the addresses and starts over;
* it dies, the monitor probes, takes over and holds until it comes back.

Between their own exchanges, each core is fed fuzz inputs (eight a step, and four times as many
while the monitor is in a state that lasts only a step or two: probing, acquiring, handback,
releasing), made from what the pair sent lately (flagged heartbeats, LEAVING, ANNOUNCED, HANDBACK
and RELEASED are also kept in pools of their own, so that they are picked often although they are
rare on the wire). Anyone with the key can take the pair off its schedule (a far sequence number
moves a replay window past the real datagrams, a fresh heartbeat of a new boot retires the
primary's): in every other cycle the authentic inputs go to copies of the cores, checked the
same way and dropped, so that the schedule above is kept; in the others, to the pair's cores,
so that they meet the inputs' consequences:

* random bytes (some behind a valid magic and version, to get past the first checks);
* captured datagrams with bit flips, truncated, or extended;
* captured datagrams with one field changed and **re-signed with the key**: type, flags (the
  cut-off and holding bits set, cleared or flipped), name, boot id, sequence number, interval,
  echoes (count and content), nonce, echoed boot and sequence, body length; and exact replays.

Around every input the harness takes a snapshot of the core and checks:

* nothing escapes ``receive_datagram`` (any exception is a failure);
* an input that is not authentic changes nothing at all (every attribute except counters and
  the event and output queues), and produces exactly one ``Dropped`` event;
* an authentic input that is not *fresh* changes nothing a fresh heartbeat relies on (see
  :mod:`ipfailover.lab.snapshot`): for the monitor its state, the detector, the pinned peer
  name, boot and sequence number, the verified addresses, the hold-down (its end and rounds),
  the hand-back under way (its id and deadline), the RELEASED notices due, the probe under way
  and the retry time; for the sender its state, boot, sequence number, listeners (and the
  retired ones), release ids, hand-backs, pending announcement, cut-off flag window and reply
  budget. Anyone with the key can make a fresh datagram, so fresh is exactly what the cores act
  on (worked out here from what they keep, not by asking them, so that a core that stops
  checking is caught):

  - for the monitor, a HEARTBEAT (flagged or not) or LEAVING: not under our own name, from the
    primary's name if one is pinned, not from a boot that said LEAVING or that the primary had
    before its current one, new to that boot's anti-replay window, and echoing a nonce we
    issued whose evidence time (``min(arrival, issue + period)``, or just ``issue`` once two
    newer rounds went out) is within the dead time. An ANNOUNCED: the same screening, from the
    verified primary's boot, echoing our boot and the id of the hand-back under way, while in
    HANDBACK, and new to the window;
  - for the sender, a CHALLENGE, RELEASED or HANDBACK not under its own name, echoing its boot
    id and a sequence number within its echo horizon; a CHALLENGE with a sequence number above
    the one its listener boot's entry has (or, for a boot it has no entry for, above the one it
    retired that boot with); a RELEASED with a release id it does not have; a HANDBACK from a
    listener boot whose latest challenge says it holds the addresses, with a sequence number
    above that challenge's and an id the sender does not have.

  What a non-fresh input may legitimately change, besides counters and queues: a stale
  heartbeat still marks its sequence number in its boot's replay window (the window is checked
  first; only a holder of the key can make a heartbeat with a number the primary has not sent
  yet, and one with a far number deafens the monitor to that boot until it restarts), updates
  its (address, boot) source entry and may be challenged out of turn (neither is in the view:
  ``Verifier.verify`` says why); a datagram under our own name from an unknown boot is held
  until the shell names this host's boots. A *copy* of a HANDBACK the sender already acts on
  (same id, same listener boot) adds the address it came from to that hand-back's list (at most
  HANDBACK_ADDRS), and if the hand-back was confirmed already, confirms it there too (one more
  sequence number): the harness checks exactly that and nothing else;
* memory stays bounded: the sources, replay windows, boot schedules, retired boots, nonces,
  listeners, release ids, hand-backs and held datagrams never exceed their documented caps.

:func:`run` returns a :class:`Report`, which counts the inputs per kind, the outcomes, the
state each core was in when fed, the kind of captured datagram each was made from, and what the
pair did (the monitor's transitions, the hand-backs' confirmations, the cuts);
``tests/unit/test_fuzz.py`` runs 10^5 inputs and ``bench/fuzz.py`` 10^6. The inputs are made by
:mod:`ipfailover.lab.mutator`, the snapshots compared by :mod:`ipfailover.lab.snapshot`; this
module is the harness around both cores.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import pickle
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ipfailover.core import auth, monitor, sender, wire
from ipfailover.core.monitor import (
    Acquire,
    Monitor,
    MonitorConfig,
    Probe,
    Release,
    State,
    StateChanged,
)
from ipfailover.core.sender import Sender, SenderConfig
from ipfailover.lab import snapshot
from ipfailover.lab.mutator import KEY, POOL, Mutator

NETS = ("pub", "priv")
PRIMARY = {"pub": ("203.0.113.10", 40000), "priv": ("198.51.100.10", 40000)}
SECONDARY = {"pub": ("203.0.113.20", 1694), "priv": ("198.51.100.20", 1694)}
BCAST = {"pub": ("203.0.113.255", 1694), "priv": ("198.51.100.255", 1694)}
# where a datagram of the sender is heard by the monitor (the rest went to a spoofed source)
HEARD_ON = {addr: net for table in (BCAST, SECONDARY) for net, addr in table.items()}
SPOOFED = (("203.0.113.66", 1694), ("198.51.100.66", 4000), ("192.0.2.1", 1))
ANSWERING = {"203.0.113.1": ["02:00:5e:00:53:01"]}  # what a probe finds while the primary is up
INTERVAL = 1.0
DEADTIME = 3.0
FAILBACK = 3.0
STEP = INTERVAL / 4
# The primary's cycle, in steps: it comes back (a new boot) at 0, is cut off at CUT_AT for one of
# CUT_STEPS (in CUT_SHARE of the cycles; each shorter than the dead time), and dies at DIE_AT. In
# LATE_CUT_SHARE of the cycles it is instead cut off LATE_CUT before the end of the hold-down that
# follows its return, until the monitor asks for the hand-back (or for LATE_CUT_MAX steps): its
# flagged heartbeat then reaches the monitor in handback.
CYCLE, CUT_AT, DIE_AT = 120, 28, 88  # 30 s: back at 0 s, cut at 7 s, dead from 22 s
CUT_STEPS = (3, 6, 9)
CUT_SHARE = 0.5
LATE_CUT_SHARE = 0.25
LATE_CUT = 0.5  # seconds (at least CUT_MIN intervals)
LATE_CUT_MAX = 8  # steps
SHELL_DELAYS = (0.25, 0.5)  # how long the monitor's shell takes to probe, acquire, release
TRANSIENT = frozenset({State.PROBING, State.ACQUIRING, State.HANDBACK, State.RELEASING})
BURST = 32  # inputs per step while the monitor is in one of those (8 otherwise)
RARE = 8  # rare datagrams kept per type (flagged heartbeats, hand-back, RELEASED...)
RARE_SHARE = 0.2  # the share of inputs made from them
HANDBACK_SHARE = 0.5  # that share for the monitor in handback (an ANNOUNCED is acted on only there)
# In every other cycle of the primary (a quiet one) each authentic input goes to a copy of the core,
# checked the same way and then dropped; in the others (wild ones) to the pair's cores. Anyone with
# the key can take the pair off its schedule: a fresh challenge with a far sequence number deafens
# the primary to the monitor's challenges for the echo horizon; a heartbeat with a far sequence
# number, fresh or not, moves the primary's replay window past its real heartbeats until it
# restarts; a fresh heartbeat of a new boot retires the primary's. Quiet cycles keep the pair's
# schedule (every state, the hand-back and the cut) the harness's; wild ones let the cores meet the
# inputs' consequences.
RARE_TYPES = {
    "monitor": ("heartbeat+cut-off", "leaving", "announced"),
    "sender": ("handback", "released"),
}


CoreT = TypeVar("CoreT", Monitor, Sender)


class FuzzFailure(AssertionError):
    """An invariant broke; the message names the input (hex), the core and what changed."""


@dataclass
class Report:
    seed: int
    inputs: Counter[str] = field(default_factory=Counter)  # per core and kind
    outcomes: Counter[str] = field(default_factory=Counter)  # dropped reasons, accepted...
    states: Counter[str] = field(default_factory=Counter)  # monitor state at each input
    sender_states: Counter[str] = field(default_factory=Counter)  # sender state at each input
    # per core, the type of the captured datagram each input was made from (random bytes:
    # "random"); a heartbeat that carried the cut-off flag is "heartbeat+cut-off"
    captured: Counter[str] = field(default_factory=Counter)
    fresh: Counter[str] = field(default_factory=Counter)  # inputs judged fresh, per core
    copied: Counter[str] = field(default_factory=Counter)  # authentic inputs fed to a copy
    # what the pair did: the monitor's transitions ("monitor.<from>.<trigger>"), the shells' work
    schedule: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())


def _label(msg: wire.Message) -> str:
    return msg.type.name.lower() + ("+cut-off" if msg.cut_off else "")


# --- the harness ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.now = 0.0
        self.step = 0
        self.alive = True
        self.cut_until: int | None = None  # the step at which a cut ends
        self.late_cut = False  # this cycle's cut comes at the end of the hold-down
        self.cut_draw = True  # this cycle has a cut at CUT_AT
        self._state = ""  # the state of the core last fed, before the input
        self.mutator = Mutator(self.rng)
        # captured (datagram, network, label); the rare ones also in a pool of their own
        self.to_monitor: list[tuple[bytes, str, str]] = []
        self.rare_to_monitor: dict[str, list[tuple[bytes, str, str]]] = {}  # by label
        self.to_sender: list[tuple[bytes, str]] = []
        self.rare_to_sender: dict[str, list[tuple[bytes, str]]] = {}
        # the shells' work under way: (due, order, what), run by tick() at its time
        self.agenda: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
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

    @property
    def connected(self) -> bool:
        """The primary is up and its cables carry: what it sends is heard, and it hears."""
        return self.alive and self.cut_until is None

    # The pair's own exchange -----------------------------------------------------------------

    def tick(self) -> None:
        """One step of simulated time: the shells' work that fell due, the primary's cycle,
        timers, the pair's datagrams."""
        self.step += 1
        end = self.step * STEP
        while self.agenda and self.agenda[0][0] <= end:
            due, _, work = heapq.heappop(self.agenda)
            self.now = max(self.now, due)
            work()
        self.now = end
        phase = self.step % CYCLE
        if phase == DIE_AT:
            self.alive, self.cut_until = False, None  # the primary dies
            self._retire_sender()
        elif phase == 0 and not self.alive:
            self.alive = True  # and comes back, a new boot
            self.sender = self._new_sender()
            self.report.schedule["primary-restarts"] += 1
            r = self.rng.random()
            self.late_cut = r < LATE_CUT_SHARE
            self.cut_draw = CUT_SHARE > r - LATE_CUT_SHARE >= 0
        elif phase == CUT_AT and self.connected and self.cut_draw:
            self._cut(self.step + self.rng.choice(CUT_STEPS), "primary-cut-off")
        elif self.cut_until == self.step:
            self._link_up()
        if self.alive:
            self.sender.handle_timer(self.now)
            self._flush_sender()
        self.monitor.handle_timer(self.now)
        self._flush_monitor()
        self._late_cut()

    def _cut(self, until: int, what: str) -> None:
        self.sender.link_down(self.now)  # every cable out: nothing is heard either way
        self.cut_until = until
        self.report.schedule[what] += 1

    def _link_up(self) -> None:
        self.cut_until = None
        self.sender.link_up(self.now)

    def _late_cut(self) -> None:
        """A cut that ends just as the monitor asks for the hand-back: the primary's first
        heartbeat after it (flagged, sent at once) finds the monitor in handback."""
        m = self.monitor
        if not self.late_cut or not self.alive:
            return
        if self.cut_until is None:
            end = m.holddown_until
            if end is not None and LATE_CUT <= end - self.now < LATE_CUT + STEP:
                self._cut(self.step + LATE_CUT_MAX, "primary-cut-off-late")
        elif m.state is State.HANDBACK:
            self.late_cut = False
            self._link_up()
            self.sender.handle_timer(self.now)
            self._flush_sender()

    def _later(self, delay: float, work: Callable[[], None]) -> None:
        heapq.heappush(self.agenda, (self.now + delay, next(self._order), work))

    def _retire_sender(self) -> None:
        for name in ("handbacks", "handbacks-confirmed", "cuts-reported", "cut-off-beats"):
            self.report.schedule[f"sender.{name}"] += self.sender.counters[name]

    def _flush_sender(self) -> None:
        out = self.sender.datagrams_to_send()
        if self.connected:
            for data, dest in out:
                net = HEARD_ON.get(dest)
                if net is None:
                    continue  # to a spoofed source of a fuzz input: nobody we know
                self._capture_for_monitor(data, net)
                self.monitor.receive_datagram(data, PRIMARY[net], net, self.now)
        self._primary_shell()
        self._flush_monitor()

    def _primary_shell(self) -> None:
        """What heartbeatd's shell does: announce, and confirm a hand-back's announcement after
        a moment (mostly within the monitor's wait, sometimes after it), or report that it could
        not announce, or never confirm."""
        s = self.sender
        while (ev := s.next_event()) is not None:
            if not isinstance(ev, sender.Announce) or not ev.handback:
                continue
            r = self.rng.random()
            if r < 0.6:
                how, delay, ok = "confirmed", self.rng.choice((0.0, 0.05, 0.1, 0.2)), True
            elif r < 0.75:
                how, delay, ok = "confirmed-late", self.rng.choice((0.3, 0.6)), True
            elif r < 0.85:
                how, delay, ok = "announce-failed", 0.05, False
            else:
                self.report.schedule["handback-unanswered"] += 1
                continue
            self._later(delay, self._confirm_work(s, ev.handback, ok, how))

    def _confirm_work(self, s: Sender, handback: bytes, ok: bool, how: str) -> Callable[[], None]:
        def work() -> None:
            if s is not self.sender or not self.alive:
                return  # that primary is gone
            self.report.schedule[f"handback-{how}"] += 1
            s.handback_announced(self.now, handback, ok)
            self._flush_sender()

        return work

    def _flush_monitor(self) -> None:
        out = self.monitor.datagrams_to_send()
        while (ev := self.monitor.next_event()) is not None:
            self._monitor_shell(ev)
        out += self.monitor.datagrams_to_send()
        for data, dest in out:
            net = "pub" if dest[0].startswith("203.") else "priv"
            self._capture_for_sender(data)
            if self.connected:
                self.sender.receive_datagram(data, SECONDARY[net], self.now)
        if self.connected and out:
            self._flush_sender()

    def _monitor_shell(self, ev: object) -> None:
        """What failoverd's shell does, a moment later and always successfully: a probe finds
        the primary's address answering only while the primary is up and connected."""
        m = self.monitor
        if isinstance(ev, StateChanged):  # the pair's schedule, by state and trigger
            self.report.schedule[f"monitor.{ev.old.value}.{ev.trigger.value}"] += 1
        elif isinstance(ev, Probe):
            probe, answers = ev.id, ANSWERING if self.connected else {}
            self._shell(lambda: m.probe_done(self.now, probe, answers))
        elif isinstance(ev, Acquire):
            self._shell(lambda: m.acquire_done(self.now, ok=True), State.ACQUIRING)
        elif isinstance(ev, Release):
            self._shell(lambda: m.release_done(self.now, ok=True), State.RELEASING)

    def _shell(self, report: Callable[[], None], state: State | None = None) -> None:
        """``report`` the outcome to the monitor after one of SHELL_DELAYS (if still in
        ``state``: it cannot leave it without the outcome, but a failure here should say so)."""

        def work() -> None:
            if state is not None and self.monitor.state is not state:
                raise FuzzFailure(f"the monitor left {state.value} before its shell reported")
            report()
            self._flush_monitor()

        self._later(self.rng.choice(SHELL_DELAYS), work)

    def _capture_for_monitor(self, data: bytes, net: str) -> None:
        msg = wire.decode(data, KEY)
        item = (data, net, _label(msg))
        _keep(self.to_monitor, item, POOL)
        if item[2] in RARE_TYPES["monitor"]:
            _keep(self.rare_to_monitor.setdefault(item[2], []), item, RARE)
        self.mutator.note(data)

    def _capture_for_sender(self, data: bytes) -> None:
        msg = wire.decode(data, KEY)
        item = (data, _label(msg))
        _keep(self.to_sender, item, POOL)
        if item[1] in RARE_TYPES["sender"]:
            _keep(self.rare_to_sender.setdefault(item[1], []), item, RARE)
        self.mutator.note(data)

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

    def _pick(self, pool: list[Any], rare: dict[str, list[Any]], share: float = RARE_SHARE) -> Any:
        """A captured datagram: in ``share`` of the picks one of a rare type (each type alike)."""
        if rare and self.rng.random() < share:
            return self.rng.choice(rare[self.rng.choice(sorted(rare))])
        return self.rng.choice(pool)

    @property
    def quiet(self) -> bool:
        """A quiet cycle: authentic inputs go to copies of the cores (see the note above)."""
        return self.step // CYCLE % 2 == 1

    @staticmethod
    def _copy(core: CoreT) -> CoreT:
        """A copy of ``core`` with its own random source (a pickle: faster than deepcopy)."""
        copied: CoreT = pickle.loads(pickle.dumps(core, pickle.HIGHEST_PROTOCOL))
        return copied

    def _addr(self, real: wire.Addr) -> wire.Addr:
        return real if self.rng.random() < 0.7 else self.rng.choice(SPOOFED)

    def fuzz_monitor(self) -> None:
        if not self.to_monitor:
            return
        m, now = self.monitor, self.now
        m.handle_timer(now)
        self._flush_monitor()
        share = HANDBACK_SHARE if m.state is State.HANDBACK else RARE_SHARE
        base, net, label = self._pick(self.to_monitor, self.rare_to_monitor, share)
        kind, data = self._mutate(base)
        addr = self._addr(PRIMARY[net])
        if self.rng.random() < 0.1:
            net = self.rng.choice(NETS)
        self.report.inputs[f"monitor.{kind}"] += 1
        self.report.states[m.state.value] += 1
        self.report.captured[f"monitor.{'random' if kind == 'random' else label}"] += 1
        msg = _decode(data)
        fresh = msg is not None and self._fresh_for_monitor(msg, now)
        self.report.fresh["monitor"] += fresh
        if msg is not None and self.quiet:
            m = self._copy(m)
            self.report.copied["monitor"] += 1
        events = self._feed(
            "monitor",
            m,
            lambda: m.receive_datagram(data, addr, net, now),
            data,
            msg,
            None if msg is None or fresh else snapshot.monitor_core,
        )
        if m is self.monitor:
            for ev in events:
                self._monitor_shell(ev)
        _drain(m)
        m.datagrams_to_send()  # challenges to spoofed sources go nowhere
        self._check_monitor_bounds(m)

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
        self._state = core.state.value  # for the failure's message
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

    def _fresh_for_monitor(self, msg: wire.Message, now: float) -> bool:
        """What the monitor acts on (see the module's docstring), worked out from what it
        keeps: its nonces, replay windows, the boots it retired or that said LEAVING, the
        hand-back under way."""
        m = self.monitor
        if msg.type not in (wire.MsgType.HEARTBEAT, wire.MsgType.LEAVING, wire.MsgType.ANNOUNCED):
            return False
        if msg.sender == m.cfg.node or (m.peer_name is not None and msg.sender != m.peer_name):
            return False
        if msg.boot_id in m._left_boots or msg.boot_id in m.challenger.retired:
            return False
        ch = m.challenger
        if ch.peer_window is not None and ch.peer_window[0] == msg.boot_id:
            window: auth.ReplayWindow | None = ch.peer_window[1]
        else:
            window = ch.windows.get((msg.sender, msg.boot_id))
        new = window is None or copy.copy(window).accept(msg.seq)
        if msg.type is wire.MsgType.ANNOUNCED:
            hb = m.handback
            return (
                msg.boot_id == m.peer_boot
                and msg.echo_boot == m.boot_id
                and hb.handback_id != b""
                and msg.nonce == hb.handback_id
                and m.state is State.HANDBACK
                and new
            )
        issued = [m._nonces[e] for e in msg.echoes if e in m._nonces]
        if not new or not issued:
            return False
        issue = max(issued)
        newer = sum(1 for t in m._nonces.values() if t > issue)
        evidence = min(now, issue + m.cfg.period) if newer < 2 else issue
        return evidence + m.cfg.deadtime > now

    def fuzz_sender(self) -> None:
        if not self.to_sender or not self.alive:
            return
        s, now = self.sender, self.now
        base, label = self._pick(self.to_sender, self.rare_to_sender)
        kind, data = self._mutate(base)
        addr = self._addr(self.rng.choice(tuple(SECONDARY.values())))
        self.report.inputs[f"sender.{kind}"] += 1
        self.report.sender_states[s.state.value] += 1
        self.report.captured[f"sender.{'random' if kind == 'random' else label}"] += 1
        msg = _decode(data)
        verdict = "unauthentic" if msg is None else self._fresh_for_sender(msg)
        self.report.fresh["sender"] += verdict == "fresh"
        if msg is not None and self.quiet:
            s = self._copy(s)
            self.report.copied["sender"] += 1
        view: Callable[[Any], dict[str, Any]] | None = snapshot.sender_core
        if verdict == "copy":
            assert msg is not None
            copy_of = msg.nonce
            view = lambda core: snapshot.sender_core(core, handback_copy=copy_of)  # noqa: E731
            hb = s._handbacks[copy_of]
            addrs, seq, confirmed = list(hb.addrs), s.seq, hb.confirmed
        elif verdict != "stale":
            view = None
        self._feed("sender", s, lambda: s.receive_datagram(data, addr, now), data, msg, view)
        if verdict == "copy":
            # a copy of a hand-back under way: it adds where it came from (and confirms there,
            # if confirmed already), and nothing else
            grows = addr not in addrs and len(addrs) < sender.HANDBACK_ADDRS
            want = [*addrs, addr] if grows else addrs
            hb_after = s._handbacks.get(copy_of)
            want_seq = seq + (1 if grows and confirmed else 0)
            if hb_after is None or hb_after.addrs != want or s.seq != want_seq:
                what = "a non-fresh input changed more than a copy of a hand-back may"
                raise self._fail("sender", data, f"{what} (its addresses, our sequence number)")
        s.datagrams_to_send()  # the immediate beat to a new listener: not delivered
        _drain(s)
        self._check_sender_bounds(s, data)

    def _fresh_for_sender(self, msg: wire.Message) -> str:
        """ "fresh" if the sender acts on it, "copy" for a copy of a hand-back under way (see
        the module's docstring), else "stale"; worked out from what the sender keeps."""
        s = self.sender
        types = (wire.MsgType.CHALLENGE, wire.MsgType.RELEASED, wire.MsgType.HANDBACK)
        if s.stopped or msg.type not in types or msg.sender == s.cfg.node:
            return "stale"
        # our boot, and a sequence number we sent within the echo horizon (computed here, not
        # by asking the sender, so that a sender that stops checking is caught)
        horizon = len(s.cfg.targets) * math.ceil(sender.ECHO_HORIZON / s.cfg.interval) + 16
        if msg.echo_boot != s.boot_id or not 0 <= s.seq - msg.echo_seq <= horizon:
            return "stale"
        if msg.type is wire.MsgType.RELEASED:
            return "stale" if msg.nonce in s._release_ids else "fresh"
        key = (msg.sender, msg.boot_id)
        entry = s._listeners.get(key)
        if msg.type is wire.MsgType.CHALLENGE:
            if entry is None:
                retired = s.roster.retired.get(key)
                return "fresh" if retired is None or msg.seq > retired[0] else "stale"
            return "fresh" if msg.seq > entry.seq else "stale"
        if entry is None or not entry.holding:
            return "stale"
        hb = s._handbacks.get(msg.nonce)
        if hb is not None:
            return "copy" if hb.listener == key else "stale"
        return "fresh" if msg.seq > entry.seq else "stale"

    def _check_sender_bounds(self, s: Sender, data: bytes) -> None:
        size = s.footprint()
        caps = {
            "listeners": sender.MAX_LISTENERS,
            "retired": sender.MAX_RETIRED,
            "release_ids": 16,
            "handbacks": sender.MAX_HANDBACKS,
            "held": sender.MAX_HELD,
        }
        over = {k: (size[k], cap) for k, cap in caps.items() if size[k] > cap}
        if any(len(hb.addrs) > sender.HANDBACK_ADDRS for hb in s._handbacks.values()):
            over["handback addresses"] = (sender.HANDBACK_ADDRS + 1, sender.HANDBACK_ADDRS)
        if over:
            raise self._fail("sender", data, f"tables grew past their caps: {over}")

    def _check_monitor_bounds(self, m: Monitor) -> None:
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
            f"seed {self.report.seed}, t={self.now:g}, {core} in {self._state}: {what}; "
            f"input {data.hex()}"
        )


def _keep(pool: list[Any], item: Any, size: int) -> None:
    pool.append(item)
    del pool[:-size]


def _decode(data: bytes) -> wire.Message | None:
    try:
        return wire.decode(data, KEY)
    except wire.RemoteProtocolError:
        return None


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
    done = 0
    while done < inputs:
        h.tick()
        # more inputs in a step while the monitor is in a state that lasts a step or two
        per_step = BURST if h.monitor.state in TRANSIENT else 8
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
    if h.alive:
        h._retire_sender()
    for name in ("announced", "announced-late", "cut-off"):
        h.report.schedule[f"monitor.{name}"] += h.monitor.counters[name]
    h.report.seconds = time.perf_counter() - began
    return h.report
