"""failoverd's core (sans-I/O): verify heartbeats, detect failure, decide takeover and handback.

The shell feeds it datagrams (``receive_datagram(data, addr, network, now)``), timer expiries
(``handle_timer(now)`` at the deadline ``get_timer()`` returned) and the outcome of the actions it
asked for (``acquire_done``/``release_done``). It sends what ``datagrams_to_send()`` returns and
carries out what ``next_event()`` returns. Time is always passed in; randomness is injected.

Freshness (why a replayed capture never delays a takeover): every challenge period the monitor
sends the primary a CHALLENGE with a new random nonce on each network. heartbeatd echoes the nonces
it holds in every heartbeat. A heartbeat counts as heard only if it echoes one of our nonces, and
the time it proves the primary alive (its *evidence time*) is ``min(arrival, issue + period)``:
a primary that stopped at time T cannot have echoed a nonce issued after T, so no replay can make
the detector believe in life later than ``T + period``. Captures from before a failoverd restart
echo nonces the new process never issued, so they count for nothing. Duplicates are refused by an
anti-replay window per sender boot. See ``docs/protocol.md``.

All state transitions are in :data:`TRANSITIONS`; an illegal one raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from . import auth, wire
from .detector import Detector, NetworkView

Addr = wire.Addr
RandomBytes = Callable[[int], bytes]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(enum.Enum):
    STANDBY = "standby"  # not holding; the primary is alive (or we are in the start-up grace)
    ACQUIRING = "acquiring"  # the shell is taking the addresses over
    ACTIVE = "active"  # holding; the primary is silent
    HOLDDOWN = "holddown"  # holding; the primary is back, waiting out the failback delay
    RELEASING = "releasing"  # the shell is handing the addresses back
    DECLINED = "declined"  # a takeover was refused (Test said no, or it failed); waits for the peer
    STOPPING = "stopping"  # releasing because we are shutting down
    STOPPED = "stopped"


class Trigger(enum.Enum):
    PEER_SILENT = "peer-silent"
    PEER_LEAVING = "peer-leaving"
    PEER_HEARD = "peer-heard"
    HOLDDOWN_EXPIRED = "holddown-expired"
    ACQUIRED = "acquired"
    ACQUIRE_DECLINED = "acquire-declined"
    RETRY = "retry"
    RELEASED = "released"
    RELEASE_DECLINED = "release-declined"
    SHUTDOWN = "shutdown"


S, T = State, Trigger
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.STANDBY, T.PEER_SILENT): S.ACQUIRING,
    (S.STANDBY, T.PEER_LEAVING): S.ACQUIRING,
    (S.STANDBY, T.SHUTDOWN): S.STOPPED,
    (S.ACQUIRING, T.ACQUIRED): S.ACTIVE,
    (S.ACQUIRING, T.ACQUIRE_DECLINED): S.DECLINED,
    (S.DECLINED, T.RETRY): S.ACQUIRING,
    (S.ACTIVE, T.PEER_HEARD): S.HOLDDOWN,
    (S.ACTIVE, T.SHUTDOWN): S.STOPPING,
    (S.HOLDDOWN, T.PEER_SILENT): S.ACTIVE,
    (S.HOLDDOWN, T.PEER_LEAVING): S.ACTIVE,
    (S.HOLDDOWN, T.HOLDDOWN_EXPIRED): S.RELEASING,
    (S.HOLDDOWN, T.SHUTDOWN): S.STOPPING,
    (S.RELEASING, T.RELEASED): S.STANDBY,
    (S.RELEASING, T.RELEASE_DECLINED): S.ACTIVE,
    (S.DECLINED, T.PEER_HEARD): S.STANDBY,
    (S.DECLINED, T.SHUTDOWN): S.STOPPED,
    (S.STOPPING, T.RELEASED): S.STOPPED,
    (S.STOPPING, T.RELEASE_DECLINED): S.STOPPED,
}
del S, T

#: States in which the addresses are (or are being made) ours.
HOLDING = frozenset(
    {State.ACQUIRING, State.ACTIVE, State.HOLDDOWN, State.RELEASING, State.STOPPING}
)
#: States in which the shell is carrying out a transition; a shutdown waits for them.
BUSY = frozenset({State.ACQUIRING, State.RELEASING, State.STOPPING})

RELEASED_COPIES = 3  # RELEASED is sent this many times, one challenge period apart
MAX_CANDIDATES = 4  # unverified source addresses remembered per network
MAX_BOOTS = 8  # anti-replay windows kept per sender
CHALLENGE_COPIES = 2  # each round's challenge goes out this many times to each address
ARRIVAL_ALLOWANCE = 0.1  # intervals: how late the heartbeat due at the dead time may arrive
STEADY_SHARE = 0.7  # of the hold-down's rounds the primary must be heard in, or it starts over


class LocalProtocolError(RuntimeError):
    """The shell used the monitor wrongly (a bug in the caller, never the peer's fault)."""


# Events for the shell ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Acquire:
    """Take the addresses over now; report back with ``acquire_done``."""

    reason: Trigger
    at: float


@dataclass(frozen=True, kw_only=True)
class Release:
    """Hand the addresses back now; report back with ``release_done``."""

    reason: Trigger
    at: float


@dataclass(frozen=True, kw_only=True)
class StateChanged:
    old: State
    new: State
    trigger: Trigger
    at: float


@dataclass(frozen=True, kw_only=True)
class NetworkEvent:
    """``kind`` is "verified" (first verified heartbeat on a network after silence), "anomaly" or
    "recovered" (Apple's one-network rule)."""

    kind: str
    network: str
    at: float


@dataclass(frozen=True, kw_only=True)
class Heard:
    """A verified heartbeat (for --verbose): what it proved, and until when the network lives."""

    network: str
    sender: str
    seq: int
    evidence: float
    alive_until: float
    at: float


@dataclass(frozen=True, kw_only=True)
class PeerWarning:
    text: str
    at: float


Event = Acquire | Release | StateChanged | NetworkEvent | Heard | wire.Dropped | PeerWarning


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    node: str  # our identity; our own heartbeats (peering) are ignored
    key: bytes
    period: float  # challenge period: our FAILOVER_INTERVAL
    deadtime: float
    failback_delay: float
    networks: tuple[str, ...]  # networks known up front (interfaces); more are learned
    peer_ip: IPAddress | None = None
    peer_name: str | None = None  # None: learn it (see _peer_matches)


@dataclass
class _PeerNet:
    """Where the primary can be reached on one network."""

    verified: Addr | None = None
    # the primary's (boot id, sequence number) last seen from each address, echoed in our
    # challenges to it so that it can tell them from replayed ones
    seen: dict[Addr, tuple[bytes, int]] = field(default_factory=dict)
    candidates: OrderedDict[Addr, None] = field(default_factory=OrderedDict)

    def targets(self) -> list[Addr]:
        out = [self.verified] if self.verified else []
        return out + [a for a in reversed(self.candidates) if a != self.verified]


class Monitor:
    """The failover state machine of one failoverd watching one primary."""

    def __init__(
        self, cfg: MonitorConfig, *, rng: RandomBytes, now: float, holding: bool = False
    ) -> None:
        self.cfg = cfg
        self._rng = rng
        self.boot_id = rng(wire.BOOT_ID_SIZE)
        self._seq = 0
        self.state = State.ACTIVE if holding else State.STANDBY
        self.since = now
        self.detector = Detector(
            cfg.networks, cfg.deadtime, now, allowance=ARRIVAL_ALLOWANCE * cfg.period
        )
        self.counters: Counter[str] = Counter()
        self.peer_name = cfg.peer_name
        self.peer_boot: bytes | None = None
        self.peer_interval: float | None = None
        self.peer_seq = 0
        self._now = now
        self._events: list[Event] = []
        self._out: list[tuple[bytes, Addr]] = []
        self._peers: dict[str, _PeerNet] = {}
        self._windows: OrderedDict[tuple[str, bytes], auth.ReplayWindow] = OrderedDict()
        self._nonces: dict[bytes, float] = {}  # nonce -> issue time
        self._next_challenge = now
        self._holddown_until: float | None = None
        self._rounds_heard = 0  # rounds of the hold-down in which the primary was heard
        self._round_heard = float("-inf")  # the evidence of the last one counted
        self._released_due: list[float] = []
        self._release_id = b""
        self._stop_pending = False
        self._retry_at: float | None = None
        self._warned_boots: set[bytes] = set()
        self._left_boots: set[bytes] = set()
        self._immediate: dict[Addr, float] = {}  # addr -> when we last challenged it out of turn

    # Inputs ------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, network: str, now: float) -> None:
        """Handle one datagram that arrived on ``network`` (the receiving interface)."""
        self._now = max(self._now, now)
        try:
            msg = wire.decode(data, self.cfg.key)
            self._receive(msg, addr, network, now)
        except wire.RemoteProtocolError as err:
            self.counters[f"rejected.{err.reason.value}"] += 1
            self._events.append(
                wire.Dropped(
                    reason=err.reason, detail=err.detail, addr=addr, network=network, at=now
                )
            )
        self._evaluate(now)

    def handle_timer(self, now: float) -> None:
        """Call at (or after) the deadline :meth:`get_timer` gave."""
        self._now = max(self._now, now)
        if now >= self._next_challenge:
            self._challenge(now)
        while self._released_due and self._released_due[0] <= now:
            self._released_due.pop(0)
            self._send_released()
        self._evaluate(now)

    def acquire_done(self, now: float, ok: bool, retry_after: float | None = None) -> None:
        """The shell finished the takeover (``ok``), or refused or failed it."""
        # A takeover that failed (rather than one Test said no to) is tried again after
        # ``retry_after`` seconds if the primary is still silent then.
        self._retry_at = None if ok or retry_after is None else now + retry_after
        self._fire(Trigger.ACQUIRED if ok else Trigger.ACQUIRE_DECLINED, now)
        self._evaluate(now)

    def release_done(self, now: float, ok: bool) -> None:
        """The shell finished the release (``ok``), or refused or failed it."""
        self._fire(Trigger.RELEASED if ok else Trigger.RELEASE_DECLINED, now)
        self._evaluate(now)

    def shutdown(self, now: float) -> None:
        """Stop: release what we hold (after any transition in progress), then STOPPED."""
        if self.state in BUSY:
            self._stop_pending = True
        elif self.state is not State.STOPPED:
            self._fire(Trigger.SHUTDOWN, now)

    def reconfigure(self, cfg: MonitorConfig, now: float) -> None:
        """Apply a reloaded configuration without leaving the current state.

        What was heard stays heard; the new dead time and hold-down apply from now on. A changed
        key takes effect for the next datagram; nonces already issued stay valid.
        """
        self._now = max(self._now, now)
        self.cfg = cfg
        self.detector.deadtime = cfg.deadtime
        self.detector.allowance = ARRIVAL_ALLOWANCE * cfg.period
        for name in cfg.networks:
            self.detector.networks.setdefault(name, NetworkView(name))
        if cfg.peer_name is not None:
            self.peer_name = cfg.peer_name
        if self.state is State.HOLDDOWN and self._holddown_until is not None:
            self._holddown_until = self.since + cfg.failback_delay
        self._next_challenge = min(self._next_challenge, now + cfg.period)
        self._evaluate(now)

    # Outputs -----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The absolute time at which :meth:`handle_timer` must next be called."""
        if self.state is State.STOPPED:
            return None
        times = [self._next_challenge, *self._released_due[:1]]
        deadline = self.detector.next_deadline(self._now)
        if deadline is not None:
            times.append(deadline)
        if self.state is State.HOLDDOWN and self._holddown_until is not None:
            times.append(self._holddown_until)
        if self.state is State.DECLINED and self._retry_at is not None:
            times.append(self._retry_at)
        return min(times)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    @property
    def holding(self) -> bool:
        return self.state in HOLDING

    @property
    def holddown_until(self) -> float | None:
        return self._holddown_until if self.state is State.HOLDDOWN else None

    # Internals ---------------------------------------------------------------------------------

    def _receive(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        if msg.type not in (wire.MsgType.HEARTBEAT, wire.MsgType.LEAVING):
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, f"{msg.type.name} to failoverd")
        if msg.sender == self.cfg.node:
            self.counters["own"] += 1  # peering: our own broadcast came back to us
            return
        if not self._peer_matches(msg.sender):
            raise wire.RemoteProtocolError(wire.Reason.UNKNOWN_PEER, f"sender {msg.sender!r}")
        if msg.boot_id in self._left_boots:
            self.counters["after-leaving"] += 1  # the other copies of LEAVING, or stragglers
            return
        if not self._window(msg.sender, msg.boot_id).accept(msg.seq):
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"seq {msg.seq} seen or too old")
        peer = self._peers.setdefault(network, _PeerNet())
        evidence = self._evidence(msg, now)
        if evidence is None:
            self._remember_candidate(peer, addr, now)
            if addr != peer.verified or peer.seen.get(addr, (b"",))[0] == msg.boot_id:
                peer.seen[addr] = (msg.boot_id, msg.seq)  # a replay must not roll it back
            self._challenge_now(addr, (msg.boot_id, msg.seq), now)
            raise wire.RemoteProtocolError(wire.Reason.STALE, "echoes no fresh challenge of ours")
        peer.verified = addr
        peer.seen[addr] = (msg.boot_id, msg.seq)
        self._pin_peer(msg.sender, addr)
        self._note_peer_boot(msg, now)
        was_alive = network in self.detector.networks and self._counts_as_alive(network, now)
        self.detector.heard(network, evidence, now)
        if self.state is State.HOLDDOWN and evidence >= self._round_heard + self.cfg.period / 2:
            self._round_heard = evidence  # a new round heard (not the same one on another network)
            self._rounds_heard += 1
        self._events.append(
            Heard(
                network=network,
                sender=msg.sender,
                seq=msg.seq,
                evidence=evidence,
                alive_until=evidence + self.cfg.deadtime,
                at=now,
            )
        )
        self.peer_interval = msg.interval
        self.counters[f"heartbeats.{network}"] += 1
        if not was_alive and self._counts_as_alive(network, now):
            self._events.append(NetworkEvent(kind="verified", network=network, at=now))
        if msg.type is wire.MsgType.LEAVING:
            self.counters["leaving"] += 1
            self._left_boots.add(msg.boot_id)
            self.detector.forget()
            if (self.state, Trigger.PEER_LEAVING) in TRANSITIONS:
                self._fire(Trigger.PEER_LEAVING, now)

    def _peer_matches(self, sender: str) -> bool:
        """The primary is FAILOVER_PEER_NAME if set; otherwise the name pinned by the first verified
        heartbeat from FAILOVER_PEER_IP; until then, any authenticated sender but ourselves."""
        return self.peer_name is None or sender == self.peer_name

    def _pin_peer(self, sender: str, addr: Addr) -> None:
        if self.peer_name is None and self.cfg.peer_ip is not None:
            try:
                source = ipaddress.ip_address(addr[0])
            except ValueError:
                return
            if source == self.cfg.peer_ip:
                self.peer_name = sender

    def _window(self, sender: str, boot: bytes) -> auth.ReplayWindow:
        key = (sender, boot)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = auth.ReplayWindow()
            if len(self._windows) > MAX_BOOTS:
                self._windows.popitem(last=False)
        self._windows.move_to_end(key)
        return window

    def _evidence(self, msg: wire.Message, now: float) -> float | None:
        """When this heartbeat proves the primary was alive, or None if it proves nothing."""
        issued = [self._nonces[e] for e in msg.echoes if e in self._nonces]
        if not issued:
            return None
        evidence = min(now, max(issued) + self.cfg.period)
        return evidence if evidence + self.cfg.deadtime > now else None

    def _remember_candidate(self, peer: _PeerNet, addr: Addr, now: float) -> None:
        """Remember the source of an authentic but unverified heartbeat, to challenge it."""
        peer.candidates[addr] = None
        peer.candidates.move_to_end(addr)
        if len(peer.candidates) > MAX_CANDIDATES:
            peer.candidates.popitem(last=False)

    def _challenge_now(self, addr: Addr, echo: tuple[bytes, int], now: float) -> None:
        """The primary at ``addr`` lacks a fresh nonce of ours (it just started, or a link just
        came back): send one at once rather than at the next round, at most once a period."""
        last = self._immediate.get(addr)
        if last is not None and now - last < self.cfg.period:
            return
        self._immediate[addr] = now
        if len(self._immediate) > 4 * MAX_CANDIDATES:
            self._immediate.pop(next(iter(self._immediate)))
        self._out.append((self._encode_challenge(self._current_nonce(now), echo), addr))

    def _note_peer_boot(self, msg: wire.Message, now: float) -> None:
        if msg.boot_id != self.peer_boot:
            self.peer_boot, self.peer_seq = msg.boot_id, msg.seq
        self.peer_seq = max(self.peer_seq, msg.seq)
        if msg.interval * 2 >= self.cfg.deadtime and msg.boot_id not in self._warned_boots:
            self._warned_boots.add(msg.boot_id)
            self._events.append(
                PeerWarning(
                    text=f"peer interval {msg.interval:g}s is at least half our dead time "
                    f"{self.cfg.deadtime:g}s: expect false takeovers; raise FAILOVER_DEADTIME",
                    at=now,
                )
            )

    def _current_nonce(self, now: float) -> bytes:
        if not self._nonces:
            self._issue_nonce(now)
        return max(self._nonces, key=self._nonces.__getitem__)

    def _issue_nonce(self, now: float) -> bytes:
        horizon = now - self.cfg.deadtime - self.cfg.period
        self._nonces = {n: t for n, t in self._nonces.items() if t > horizon}
        nonce = self._rng(wire.NONCE_SIZE)
        self._nonces[nonce] = now
        return nonce

    def _challenge(self, now: float) -> None:
        nonce = self._issue_nonce(now)
        for peer in self._peers.values():
            for addr in peer.targets():
                if addr in peer.seen:
                    # Sent twice, back to back: a lost challenge leaves the primary echoing the
                    # previous round's nonce, whose evidence is up to an interval older.
                    data = self._encode_challenge(nonce, peer.seen[addr])
                    self._out += [(data, addr)] * CHALLENGE_COPIES
        self._next_challenge = now + self.cfg.period

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _encode_challenge(self, nonce: bytes, echo: tuple[bytes, int]) -> bytes:
        msg = wire.Message(
            type=wire.MsgType.CHALLENGE,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self._next_seq(),
            interval=self.cfg.period,
            nonce=nonce,
            echo_boot=echo[0],
            echo_seq=echo[1],
            holding=self.holding,
        )
        return wire.encode(msg, self.cfg.key)

    def _send_released(self) -> None:
        if self.peer_boot is None:
            return
        msg = wire.Message(
            type=wire.MsgType.RELEASED,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self._next_seq(),
            interval=self.cfg.period,
            nonce=self._release_id,
            echo_boot=self.peer_boot,
            echo_seq=self.peer_seq,
        )
        data = wire.encode(msg, self.cfg.key)
        for peer in self._peers.values():
            if peer.verified:
                self._out.append((data, peer.verified))
        self.counters["released-sent"] += 1

    def _fire(self, trigger: Trigger, now: float) -> None:
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            raise LocalProtocolError(f"no transition from {self.state.name} on {trigger.name}")
        old, self.state, self.since = self.state, new, now
        self.counters[f"transitions.{trigger.value}"] += 1
        self._events.append(StateChanged(old=old, new=new, trigger=trigger, at=now))
        self._enter(old, new, trigger, now)

    def _enter(self, old: State, new: State, trigger: Trigger, now: float) -> None:
        if new is State.ACQUIRING:
            self._events.append(Acquire(reason=trigger, at=now))
        elif new is State.HOLDDOWN:
            self._start_holddown(now)
        elif new is State.RELEASING:
            self._events.append(Release(reason=Trigger.PEER_HEARD, at=now))
        elif new is State.STOPPING:
            self._events.append(Release(reason=Trigger.SHUTDOWN, at=now))
        elif new is State.STANDBY and old is State.RELEASING:
            self._release_id = self._rng(wire.NONCE_SIZE)
            self._send_released()
            self._released_due = [now + i * self.cfg.period for i in range(1, RELEASED_COPIES)]
        elif new is State.STOPPED and old is State.STOPPING and trigger is Trigger.RELEASED:
            # Stopping while holding: the primary may be waiting for this to re-announce. There
            # is no later round to repeat it in, so the copies go now.
            self._release_id = self._rng(wire.NONCE_SIZE)
            for _ in range(RELEASED_COPIES):
                self._send_released()
        if self._stop_pending and new not in BUSY and new is not State.STOPPED:
            self._stop_pending = False
            self._fire(Trigger.SHUTDOWN, now)

    def _evaluate(self, now: float) -> None:
        """Fire whatever the detector's view implies now (a bounded cascade)."""
        for change, network in self.detector.changes(now):
            self._events.append(NetworkEvent(kind=change.value, network=network, at=now))
        for _ in range(4):
            trigger = self._due_trigger(now)
            if trigger is None:
                return
            self._fire(trigger, now)

    def _counts_as_alive(self, network: str, now: float) -> bool:
        """Alive on ``network``, on evidence that would bring the primary back if we hold."""
        if not self.detector.alive(network, now):
            return False
        last = self.detector.networks[network].last_heard
        return self.state not in (State.ACTIVE, State.DECLINED) or (last or 0) > self.since

    def _heard_since(self, t: float, now: float) -> bool:
        """Alive, on evidence newer than ``t``: life proven before we decided the primary was
        gone (or before we adopted its addresses) does not bring it back."""
        last = self.detector.last_evidence()
        return last is not None and last > t and self.detector.any_alive(now)

    def _start_holddown(self, now: float) -> None:
        self._holddown_until = now + self.cfg.failback_delay
        self._rounds_heard = 1  # the heartbeat that started it
        self._round_heard = self.detector.last_evidence() or now

    def _steady(self) -> bool:
        """The primary was heard in at least STEADY_SHARE of the hold-down's rounds: a hold-down
        counts only a primary heard at (nearly) every interval. A flapping cable (0.5 s out, 0.5 s
        in) lets at most half of them through; random loss of 30 % of all datagrams still lets
        nine rounds in ten through on one of two networks (half of them: three in four)."""
        rounds = self.cfg.failback_delay / self.cfg.period
        return self._rounds_heard >= STEADY_SHARE * rounds

    def _due_trigger(self, now: float) -> Trigger | None:
        det = self.detector
        if self.state is State.STANDBY and det.all_silent(now):
            return Trigger.PEER_SILENT
        if (
            self.state is State.DECLINED
            and self._retry_at is not None
            and now >= self._retry_at
            and det.all_silent(now)
        ):
            self._retry_at = None
            return Trigger.RETRY
        if self.state in (State.ACTIVE, State.DECLINED) and self._heard_since(self.since, now):
            return Trigger.PEER_HEARD
        if self.state is State.HOLDDOWN:
            if not det.any_alive(now):
                return Trigger.PEER_SILENT
            if self._holddown_until is not None and now >= self._holddown_until:
                if self._steady():
                    return Trigger.HOLDDOWN_EXPIRED
                # Not steady (a flapping cable): keep the addresses, and start over.
                self.counters["holddown-restarts"] += 1
                self._start_holddown(now)
                self._rounds_heard = 0
        return None
