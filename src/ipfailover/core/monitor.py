"""failoverd's core (sans-I/O): verify heartbeats, detect failure, decide takeover and handback.

The shell feeds it datagrams (``receive_datagram(data, addr, network, now)``), timer expiries
(``handle_timer(now)`` at the deadline ``get_timer()`` returned) and the outcome of the actions it
asked for (``acquire_done``/``release_done``). It sends what ``datagrams_to_send()`` returns and
carries out what ``next_event()`` returns. Time is always passed in; randomness is injected.

Freshness (why a replayed capture never delays a takeover): every challenge period the monitor
sends the primary a CHALLENGE with a new random nonce on each network. heartbeatd echoes the nonces
it holds in every heartbeat. A heartbeat counts as heard only if it echoes one of our nonces, and
the time it proves the primary alive (its *evidence time*) is ``min(arrival, issue + period)``
(just ``issue`` once two newer rounds have gone out; see ``_evidence``):
a primary that stopped at time T cannot have echoed a nonce issued after T, so no replay can make
the detector believe in life later than ``T + period``. Captures from before a failoverd restart
echo nonces the new process never issued, so they count for nothing. Duplicates are refused by an
anti-replay window per sender boot. See ``docs/protocol.md``.

Evidence before a takeover (``docs/safety.md``): silence alone is not enough. Before it takes
anything the monitor asks the shell to probe the link (:class:`Probe`; ARP probe, neighbour
solicitation) and the shell reports which addresses still answer, from which MAC
(``probe_done``). An address that answers while the primary was never verified since start-up
is never taken (BLOCKED: a firewall, key, port or peer address problem, not a dead primary); one
that answers after the primary was verified and then fell silent is taken as Apple did, unless
the configuration says otherwise, and the fact goes with the takeover to the scripts and the
mail. While holding, the shell reports other MACs that claim a held address
(``address_claimed``); the monitor reports each conflict once per episode and has the shell
defend the address at most once per :data:`DEFEND_INTERVAL` while the primary is not heard.

All state transitions are in :data:`TRANSITIONS`; an illegal one raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ipfailover.core import auth, wire
from ipfailover.core.detector import Detector, NetworkView
from ipfailover.core.errors import LocalProtocolError as LocalProtocolError

Addr = wire.Addr
RandomBytes = Callable[[int], bytes]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(enum.Enum):
    STANDBY = "standby"  # not holding; the primary is alive (or we are in the start-up grace)
    PROBING = "probing"  # the primary is silent; the shell checks whether its addresses answer
    BLOCKED = "blocked"  # not taking over: an address answers (see docs/safety.md); re-probing
    ACQUIRING = "acquiring"  # the shell is taking the addresses over
    ACTIVE = "active"  # holding; the primary is silent
    HOLDDOWN = "holddown"  # holding; the primary is back, waiting out the failback delay
    HANDBACK = "handback"  # holding; the primary was asked to announce first (make before break)
    RELEASING = "releasing"  # the shell is handing the addresses back
    DECLINED = "declined"  # a takeover was refused (Test said no, or it failed); waits for the peer
    STOPPING = "stopping"  # releasing because we are shutting down
    STOPPED = "stopped"


class Trigger(enum.Enum):
    PEER_SILENT = "peer-silent"
    NO_ANSWER = "no-answer"  # the probe found no address answering (or could not probe)
    ANSWERS_NEVER_VERIFIED = "answers-never-verified"  # an address answers; primary never heard
    ANSWERS_AFTER_VERIFIED = "answers-after-verified"  # it answers; the primary was heard before
    ANSWERS_REFUSED = "answers-refused"  # as above, but FAILOVER_TAKE_ANSWERING=no
    PEER_LEAVING = "peer-leaving"
    PEER_HEARD = "peer-heard"
    HOLDDOWN_EXPIRED = "holddown-expired"
    ANNOUNCED = "announced"  # the primary confirmed it announced its addresses (ANNOUNCED)
    HANDBACK_TIMEOUT = "handback-timeout"  # no confirmation within the bound: release anyway
    ACQUIRED = "acquired"
    ACQUIRE_DECLINED = "acquire-declined"
    RETRY = "retry"
    RELEASED = "released"
    RELEASE_DECLINED = "release-declined"
    SHUTDOWN = "shutdown"


S, T = State, Trigger
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.STANDBY, T.PEER_SILENT): S.PROBING,
    # the primary said it is going (authenticated, fresh): no probe, its address still answers
    (S.STANDBY, T.PEER_LEAVING): S.ACQUIRING,
    (S.STANDBY, T.SHUTDOWN): S.STOPPED,
    (S.PROBING, T.NO_ANSWER): S.ACQUIRING,
    (S.PROBING, T.ANSWERS_AFTER_VERIFIED): S.ACQUIRING,
    (S.PROBING, T.ANSWERS_NEVER_VERIFIED): S.BLOCKED,
    (S.PROBING, T.ANSWERS_REFUSED): S.BLOCKED,
    (S.PROBING, T.PEER_HEARD): S.STANDBY,
    (S.PROBING, T.PEER_LEAVING): S.ACQUIRING,
    (S.PROBING, T.SHUTDOWN): S.STOPPED,
    (S.BLOCKED, T.NO_ANSWER): S.ACQUIRING,
    (S.BLOCKED, T.ANSWERS_AFTER_VERIFIED): S.ACQUIRING,  # a reload set take_answering again
    (S.BLOCKED, T.PEER_HEARD): S.STANDBY,
    (S.BLOCKED, T.PEER_LEAVING): S.ACQUIRING,
    (S.BLOCKED, T.SHUTDOWN): S.STOPPED,
    (S.ACQUIRING, T.ACQUIRED): S.ACTIVE,
    (S.ACQUIRING, T.ACQUIRE_DECLINED): S.DECLINED,
    (S.DECLINED, T.RETRY): S.PROBING,
    (S.ACTIVE, T.PEER_HEARD): S.HOLDDOWN,
    (S.ACTIVE, T.SHUTDOWN): S.STOPPING,
    (S.HOLDDOWN, T.PEER_SILENT): S.ACTIVE,
    (S.HOLDDOWN, T.PEER_LEAVING): S.ACTIVE,
    (S.HOLDDOWN, T.HOLDDOWN_EXPIRED): S.HANDBACK,
    (S.HOLDDOWN, T.SHUTDOWN): S.STOPPING,
    # make before break: the primary announces first, then we delete (docs/protocol.md)
    (S.HANDBACK, T.ANNOUNCED): S.RELEASING,
    (S.HANDBACK, T.HANDBACK_TIMEOUT): S.RELEASING,  # today's order: delete, then RELEASED
    (S.HANDBACK, T.PEER_SILENT): S.ACTIVE,
    (S.HANDBACK, T.PEER_LEAVING): S.ACTIVE,
    (S.HANDBACK, T.SHUTDOWN): S.STOPPING,
    (S.RELEASING, T.RELEASED): S.STANDBY,
    (S.RELEASING, T.RELEASE_DECLINED): S.ACTIVE,
    (S.DECLINED, T.PEER_HEARD): S.STANDBY,
    (S.DECLINED, T.SHUTDOWN): S.STOPPED,
    (S.STOPPING, T.RELEASED): S.STOPPED,
    (S.STOPPING, T.RELEASE_DECLINED): S.STOPPED,
}
del S, T

#: Triggers that end a probe (PROBING or BLOCKED) with its verdict.
PROBE_VERDICTS = frozenset(
    {
        Trigger.NO_ANSWER,
        Trigger.ANSWERS_NEVER_VERIFIED,
        Trigger.ANSWERS_AFTER_VERIFIED,
        Trigger.ANSWERS_REFUSED,
    }
)

#: States in which the addresses are (or are being made) ours.
HOLDING = frozenset(
    {
        State.ACQUIRING,
        State.ACTIVE,
        State.HOLDDOWN,
        State.HANDBACK,
        State.RELEASING,
        State.STOPPING,
    }
)
#: States in which the shell is carrying out a transition; a shutdown waits for them.
BUSY = frozenset({State.ACQUIRING, State.RELEASING, State.STOPPING})

RELEASED_COPIES = 3  # RELEASED is sent this many times, one challenge period apart
HANDBACK_COPIES = 2  # HANDBACK goes out this many times to each network, back to back
# How long a hand-back waits for the primary's ANNOUNCED before it releases anyway (today's
# order): one challenge period, within these bounds. A live primary answers in a round trip plus
# its first announcement (milliseconds); the wait keeps a lost request or answer, or a primary
# that does not know HANDBACK, within the failback budget of one interval after the hold-down.
HANDBACK_WAIT_MIN = 0.05
HANDBACK_WAIT_MAX = 0.25
MAX_SOURCES = 16  # unverified (address, boot) pairs remembered per network
MAX_BOOTS = 8  # anti-replay windows kept for unverified boots (the verified boot's is pinned)
MAX_BOOT_STATES = 256  # boot ids whose challenge schedule is remembered (least recently heard go)
MAX_RETIRED = 16  # boots the primary had before its current one (or that said LEAVING)
MAX_HELD = 8  # datagrams held while the shell looks up this host's boot ids
CHALLENGE_RATE = 64  # challenges to unverified sources per period, overall (a token bucket)
CHALLENGE_BURST = 128
PER_SOURCE = 4  # out-of-turn challenges to one source address per period
BACKOFF_MAX = 3  # an unanswering boot is still challenged every 2**3 periods
CHALLENGE_COPIES = 2  # each round's challenge goes out this many times to each address
ARRIVAL_ALLOWANCE = 0.1  # intervals: how late the heartbeat due at the dead time may arrive
STEADY_SHARE = 0.7  # of the hold-down's rounds the primary must be heard in, or it starts over
REPROBE_MIN = 1.0  # seconds: BLOCKED probes again every max(this, FAILOVER_INTERVAL)
DEFEND_INTERVAL = 10.0  # RFC 5227 section 2.4: at most one defence of an address per 10 s
CONFLICT_QUIET = 30.0  # seconds without a conflicting frame that end a conflict episode
MAX_CONFLICTS = 64  # conflict episodes remembered (one per held address)
MAX_CONFLICT_MACS = 4  # distinct MACs remembered (and reported) per episode

#: Answers to a probe: (address, MACs that answered for it), sorted; empty if none answered.
Answers = tuple[tuple[str, tuple[str, ...]], ...]

RETRY_MAX = 60.0  # seconds: the longest wait before trying a failed takeover again
MAX_CASCADE = 4  # triggers one input may fire in a row; more means the table does not settle


class ProbeResult(enum.StrEnum):
    """What a probe found, as handed to the scripts (IPFAILOVER_PROBE) and shown by status."""

    NONE = ""  # no probe yet (or none before this takeover: a graceful handover)
    ANSWERED = "answered"  # some address answered from another MAC
    SILENT = "silent"  # no address answered
    FAILED = "failed"  # the shell could not probe (no socket, not Ethernet): as silent


PROBE_ANSWERED = ProbeResult.ANSWERED
PROBE_SILENT = ProbeResult.SILENT
PROBE_FAILED = ProbeResult.FAILED


class NetworkKind(enum.StrEnum):
    """What happened on one network (the values are the log's and the mail's words)."""

    VERIFIED = "verified"  # the first verified heartbeat on it after silence
    ANOMALY = "anomaly"  # silent while another network is alive (Apple's one-network rule)
    RECOVERED = "recovered"  # heard again after an anomaly


class AcquireOutcome(enum.Enum):
    """How a takeover the monitor asked for ended (``acquire_done``)."""

    DONE = "done"  # the addresses are ours (all, or some of them)
    DECLINED = "declined"  # Test said no: wait in DECLINED until the primary is heard
    FAILED = "failed"  # the change failed: tried again, backing off, while the primary is silent


# Events for the shell ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Acquire:
    """Take the addresses over now; report back with ``acquire_done``.

    ``probe`` is what the probe before it found (``PROBE_*``; empty if there was none: a
    graceful handover), ``answering`` which addresses still answered and from which MACs.
    """

    reason: Trigger
    at: float
    probe: ProbeResult = ProbeResult.NONE
    answering: Answers = ()


@dataclass(frozen=True, kw_only=True)
class AcquireRetry:
    """A takeover failed (it was not vetoed): it is tried again after ``after`` seconds if the
    primary is still silent then (a back-off doubling from the dead time, at most RETRY_MAX)."""

    after: float
    at: float


@dataclass(frozen=True, kw_only=True)
class Probe:
    """Ask the link whether the addresses to be taken still answer; reply with ``probe_done``
    (passing ``id`` back) after a bounded wait."""

    id: int
    at: float


@dataclass(frozen=True, kw_only=True)
class AddressAnswers:
    """A probe before a takeover found addresses answering. ``taking``: we take them anyway (the
    primary was verified, then fell silent); otherwise we hold back (BLOCKED)."""

    answering: Answers
    verified_before: bool
    taking: bool
    at: float


@dataclass(frozen=True, kw_only=True)
class AddressConflict:
    """While we hold ``address``, another MAC claimed it (first time this episode, or a new MAC)."""

    address: str
    mac: str
    state: State
    at: float


@dataclass(frozen=True, kw_only=True)
class Defend:
    """Re-announce ``address`` now (one gratuitous ARP or unsolicited NA): a conflict while the
    primary is not heard, at most once per DEFEND_INTERVAL."""

    address: str
    at: float


@dataclass(frozen=True, kw_only=True)
class Release:
    """Hand the addresses back now; report back with ``release_done``."""

    reason: Trigger
    at: float


@dataclass(frozen=True, kw_only=True)
class Reclaim:
    """A hand-back was abandoned (the primary fell silent or left after we asked it to
    announce): it may have announced our held addresses, so announce them all again now."""

    at: float


@dataclass(frozen=True, kw_only=True)
class StateChanged:
    old: State
    new: State
    trigger: Trigger
    at: float


@dataclass(frozen=True, kw_only=True)
class NetworkEvent:
    """``kind``: see :class:`NetworkKind`."""

    kind: NetworkKind
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


Event = (
    Acquire
    | AcquireRetry
    | Release
    | StateChanged
    | NetworkEvent
    | Heard
    | wire.Dropped
    | PeerWarning
    | Probe
    | AddressAnswers
    | AddressConflict
    | Defend
    | Reclaim
    | auth.NameCollision
)


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
    # FAILOVER_TAKE_ANSWERING: take an address that still answers if the primary was verified
    # earlier and then fell silent (Apple's behaviour); False: hold back (BLOCKED) instead
    take_answering: bool = True


@dataclass
class Conflict:
    """One episode of other MACs claiming a held address."""

    address: str
    since: float
    last: float
    macs: list[str] = field(default_factory=list)
    frames: int = 0
    defended_at: float | None = None
    defences: int = 0


@dataclass
class _Source:
    """One (address, boot id) that authentic heartbeats came from on one network."""

    seq: int  # the highest sequence number seen: echoed in our challenges, never rolled back
    heard: float  # when the last one arrived
    challenged: float | None = None  # when we last sent a challenge here
    immediate: float | None = None  # when we last challenged it out of turn


@dataclass
class _Boot:
    """The challenge schedule of one boot id of the primary (a nonce reaches every network: the
    primary echoes it in every heartbeat, so one challenge on any network is enough)."""

    heard: float
    challenged: float | None = None  # when we last challenged it (on any network)
    unanswered: float | None = None  # since when our challenges to it went unanswered

    def strikes(self, now: float, period: float) -> int:
        """Periods its challenges went unanswered, less the first two (a round trip)."""
        if self.unanswered is None:
            return 0
        return max(0, int((now - self.unanswered) / period) - 1)

    def due(self, now: float, period: float) -> bool:
        """Time to challenge it again: every period, backing off while it does not answer."""
        if self.challenged is None:
            return True
        wait = period * (1 << min(self.strikes(now, period), BACKOFF_MAX))
        return now >= self.challenged + wait - 1e-9


@dataclass
class _PeerNet:
    """Where the primary can be reached on one network.

    ``sources`` holds every (address, boot id) authentic heartbeats came from, so that a replayed
    heartbeat of an old boot cannot overwrite what a live boot needs: each is challenged with its
    own sequence number, on its own schedule. The verified primary's entry is never evicted.
    """

    verified: Addr | None = None
    sources: dict[tuple[Addr, bytes], _Source] = field(default_factory=dict)


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
        self._peer_window: tuple[bytes, auth.ReplayWindow] | None = None  # the verified boot's
        self._nonces: dict[bytes, float] = {}  # nonce -> issue time
        self._next_challenge = now
        self._holddown_until: float | None = None
        self._rounds_heard = 0  # rounds of the hold-down in which the primary was heard
        self._round_heard = float("-inf")  # the evidence of the last one counted
        self._round_issued = float("-inf")  # and the issue time of the nonce it echoed
        self._echo_issued = float("-inf")  # the issue time of the nonce the last heartbeat echoed
        self._released_due: list[float] = []
        self._release_id = b""
        self._handback_id = b""  # the id of the last HANDBACK we sent
        self._handback_until: float | None = None  # while HANDBACK: when we release anyway
        self._stop_pending = False
        self._retry_at: float | None = None
        self._failed_takeovers = 0  # in a row: the retry back-off doubles with each
        self._warned_boots: OrderedDict[bytes, None] = OrderedDict()
        self._left_boots: OrderedDict[bytes, None] = OrderedDict()
        self._retired: OrderedDict[bytes, None] = OrderedDict()  # the primary's earlier boots
        self._boots: OrderedDict[bytes, _Boot] = OrderedDict()  # challenge schedules
        self._bucket = auth.TokenBucket(
            CHALLENGE_RATE / cfg.period, CHALLENGE_BURST, now
        )  # challenges to sources not (yet) verified
        self.identity = auth.Identity(cfg.node, self.boot_id, now)
        self.collision: auth.Collision | None = None
        self._held: list[tuple[wire.Message, Addr, str]] = []
        # Evidence before a takeover (docs/safety.md)
        self.ever_verified = False  # a heartbeat of the primary was verified since start-up
        self.probe_result = ProbeResult.NONE  # of the last probe that finished
        self.probe_at: float | None = None  # when it finished
        self.answering: Answers = ()  # what answered it
        self._probe_reason = Trigger.PEER_SILENT  # why we are probing (the takeover's reason)
        self._probe_seq = 0
        self._probe_out: int | None = None  # id of the probe the shell is running
        self._reprobe_at: float | None = None
        self._conflicts: OrderedDict[str, Conflict] = OrderedDict()

    # Inputs ------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, network: str, now: float) -> None:
        """Handle one datagram that arrived on ``network`` (the receiving interface)."""
        self._now = max(self._now, now)
        try:
            msg = wire.decode(data, self.cfg.key)
        except wire.RemoteProtocolError as err:
            self._dropped(err, addr, network, now)
        else:
            self._receive_checked(msg, addr, network, now)
        self._evaluate(now)

    def set_local_boots(self, boots: frozenset[bytes], now: float) -> None:
        """The boot ids of the daemons on this host (their boot files in FAILOVER_RUN_DIR).

        Call it when :attr:`wants_local_boots` says so (a datagram with our name and an unknown
        boot id is held until then), and whenever the shell re-reads them.
        """
        self._now = max(self._now, now)
        self.identity.set_local(boots)
        held, self._held = self._held, []
        for msg, addr, network in held:
            self._receive_checked(msg, addr, network, now)
        self._evaluate(now)

    @property
    def wants_local_boots(self) -> bool:
        """A datagram carrying our name came from a boot id we do not know: the shell should
        re-read this host's boot ids and call :meth:`set_local_boots`."""
        return self.identity.wants_local

    def footprint(self) -> dict[str, int]:
        """Entries in each structure that remote input can grow (all bounded; for tests)."""
        return {
            "sources": sum(len(p.sources) for p in self._peers.values()),
            "windows": len(self._windows) + (self._peer_window is not None),
            "boots": len(self._boots),
            "retired": len(self._retired) + len(self._left_boots),
            "nonces": len(self._nonces),
            "held": len(self._held),
            "events": len(self._events),
        }

    def handle_timer(self, now: float) -> None:
        """Call at (or after) the deadline :meth:`get_timer` gave."""
        self._now = max(self._now, now)
        if now >= self._next_challenge:
            self._challenge(now)
        while self._released_due and self._released_due[0] <= now:
            self._released_due.pop(0)
            self._send_released()
        if (
            self.state is State.BLOCKED
            and self._probe_out is None
            and self._reprobe_at is not None
            and now >= self._reprobe_at
        ):
            self._start_probe(now)
        self._evaluate(now)

    def acquire_done(
        self,
        now: float,
        outcome: AcquireOutcome | bool | None = None,
        retry_after: float | None = None,
        *,
        ok: bool | None = None,
    ) -> None:
        """The shell finished the takeover: :class:`AcquireOutcome`. A FAILED one is tried again
        while the primary stays silent, after the dead time, then twice that, and so on up to
        RETRY_MAX (:class:`AcquireRetry` says when); DONE or DECLINED starts the count over.

        The older form still works: ``ok=True`` is DONE; ``ok=False`` with ``retry_after`` is
        FAILED, retried after exactly that; ``ok=False`` without it is DECLINED."""
        if outcome is None:
            outcome = ok
        if outcome is None:
            raise LocalProtocolError("acquire_done needs an outcome")
        if isinstance(outcome, bool):
            if outcome:
                outcome = AcquireOutcome.DONE
            else:
                failed = retry_after is not None
                outcome = AcquireOutcome.FAILED if failed else AcquireOutcome.DECLINED
        trigger = Trigger.ACQUIRED if outcome is AcquireOutcome.DONE else Trigger.ACQUIRE_DECLINED
        if (self.state, trigger) not in TRANSITIONS:
            raise LocalProtocolError(f"no transition from {self.state.name} on {trigger.name}")
        self._retry_at = None
        if outcome is AcquireOutcome.FAILED:
            self._failed_takeovers += 1
            after = retry_after
            if after is None:
                after = min(RETRY_MAX, self.cfg.deadtime * 2 ** (self._failed_takeovers - 1))
            self._retry_at = now + after
            self._events.append(AcquireRetry(after=after, at=now))
        else:
            self._failed_takeovers = 0
        self._fire(trigger, now)
        self._evaluate(now)

    def probe_done(
        self, now: float, probe_id: int, answers: Mapping[str, Iterable[str]], ok: bool = True
    ) -> None:
        """The shell finished probe ``probe_id``: ``answers`` maps each address that answered
        to the MAC addresses (other than ours) it answered from. ``ok`` False: it could not
        probe at all (counted as no answer, and reported as ``failed``)."""
        self._now = max(self._now, now)
        if probe_id != self._probe_out:
            self.counters["probe-late"] += 1  # the state moved on (the primary was heard)
            return
        self._probe_out = None
        found = _answers(answers)
        self.probe_result = PROBE_ANSWERED if found else PROBE_SILENT if ok else PROBE_FAILED
        self.probe_at = now
        self.counters[f"probes.{self.probe_result}"] += 1
        if self.state is State.PROBING:
            self.answering = found
            if not found:
                trigger = Trigger.NO_ANSWER
            elif not self.ever_verified:
                trigger = Trigger.ANSWERS_NEVER_VERIFIED
            elif not self.cfg.take_answering:
                trigger = Trigger.ANSWERS_REFUSED
            else:
                trigger = Trigger.ANSWERS_AFTER_VERIFIED
            if found:
                taking = trigger is Trigger.ANSWERS_AFTER_VERIFIED
                self._events.append(
                    AddressAnswers(
                        answering=found, verified_before=self.ever_verified, taking=taking, at=now
                    )
                )
            self._fire(trigger, now)
        elif self.state is State.BLOCKED:
            if found and self.ever_verified and self.cfg.take_answering:
                self.answering = found
                self._events.append(
                    AddressAnswers(answering=found, verified_before=True, taking=True, at=now)
                )
                self._fire(Trigger.ANSWERS_AFTER_VERIFIED, now)
            elif found:
                if _macs(found) - _macs(self.answering):
                    self._events.append(
                        AddressAnswers(
                            answering=found,
                            verified_before=self.ever_verified,
                            taking=False,
                            at=now,
                        )
                    )
                self.answering = found
                self._reprobe_at = now + max(REPROBE_MIN, self.cfg.period)
            else:
                self.answering = ()
                self._fire(Trigger.NO_ANSWER, now)
        self._evaluate(now)

    def address_claimed(self, now: float, address: str, mac: str) -> None:
        """While we hold ``address``, a frame from ``mac`` (not one of ours) claimed it: an ARP
        reply, request or announcement with it as the sender address, a Neighbour Advertisement
        for it, or a Neighbour Solicitation from it (the shell filters out frames of ours).

        Reported (:class:`AddressConflict`) once per episode and MAC. While ACTIVE the primary is
        not heard, so we defend (:class:`Defend`) at most once per DEFEND_INTERVAL: clients
        converge on us instead of flapping. In HOLDDOWN the primary is back and has its address
        again: expected, we hand it back soon; counted only. Outside those states, ignored.
        """
        self._now = max(self._now, now)
        if self.state in (State.HOLDDOWN, State.HANDBACK):
            self.counters["claims.holddown"] += 1
            return
        if self.state is not State.ACTIVE:
            self.counters["claims.ignored"] += 1
            return
        self.counters["claims.active"] += 1
        ep = self._conflicts.get(address)
        if ep is None or now - ep.last > CONFLICT_QUIET:
            ep = self._conflicts[address] = Conflict(address=address, since=now, last=now)
            if len(self._conflicts) > MAX_CONFLICTS:
                self._conflicts.popitem(last=False)
        self._conflicts.move_to_end(address)
        ep.last = now
        ep.frames += 1
        if mac not in ep.macs and len(ep.macs) < MAX_CONFLICT_MACS:
            ep.macs.append(mac)
            self._events.append(AddressConflict(address=address, mac=mac, state=self.state, at=now))
        if ep.defended_at is None or now - ep.defended_at >= DEFEND_INTERVAL:
            ep.defended_at = now
            ep.defences += 1
            self._events.append(Defend(address=address, at=now))

    def conflicts(self, now: float) -> list[Conflict]:
        """The conflict episodes still going on (a frame within CONFLICT_QUIET), oldest first."""
        if not self.holding:
            self._conflicts.clear()
        return [c for c in self._conflicts.values() if now - c.last <= CONFLICT_QUIET]

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
        self.identity.node = cfg.node
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
        if self.state is State.HANDBACK and self._handback_until is not None:
            times.append(self._handback_until)
        if (
            self.state is State.DECLINED
            and self._retry_at is not None
            and self._retry_at > self._now
        ):
            # once due, the retry waits for silence on every network: the detector's deadline
            # above wakes us for that (a past deadline here would spin the shell's timer)
            times.append(self._retry_at)
        if self.state is State.BLOCKED and self._probe_out is None and self._reprobe_at is not None:
            times.append(self._reprobe_at)
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

    def _dropped(self, err: wire.RemoteProtocolError, addr: Addr, network: str, now: float) -> None:
        self.counters[f"rejected.{err.reason.value}"] += 1
        self._events.append(
            wire.Dropped(reason=err.reason, detail=err.detail, addr=addr, network=network, at=now)
        )

    def _receive_checked(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        try:
            self._receive(msg, addr, network, now)
        except wire.RemoteProtocolError as err:
            self._dropped(err, addr, network, now)

    def _receive(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        if msg.type not in (wire.MsgType.HEARTBEAT, wire.MsgType.LEAVING, wire.MsgType.ANNOUNCED):
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, f"{msg.type.name} to failoverd")
        # Our own datagrams are known by boot id, not by name: a clone may share the name.
        who = self.identity.classify(msg.sender, msg.boot_id, now)
        if who == auth.Identity.OWN:
            self.counters["own"] += 1  # peering: our own host's heartbeatd, looped back
            return
        if who == auth.Identity.ASK:
            self.counters["own-name-held"] += 1
            if len(self._held) < MAX_HELD:
                self._held.append((msg, addr, network))  # until the shell knows our boot ids
            return
        if who == auth.Identity.UNDECIDED:
            raise wire.RemoteProtocolError(wire.Reason.UNEXPECTED, "our name, an unknown boot id")
        if not self._peer_matches(msg.sender):
            raise wire.RemoteProtocolError(wire.Reason.UNKNOWN_PEER, f"sender {msg.sender!r}")
        if msg.boot_id in self._left_boots:
            self.counters["after-leaving"] += 1  # the other copies of LEAVING, or stragglers
            return
        if msg.boot_id in self._retired:
            # the primary has since restarted: what its earlier boot sent is history
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, "from an earlier boot")
        if msg.type is wire.MsgType.ANNOUNCED:
            self._announced(msg, now)
            return
        if not self._window(msg.sender, msg.boot_id).accept(msg.seq):
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"seq {msg.seq} seen or too old")
        peer = self._peers.setdefault(network, _PeerNet())
        source = self._source(peer, addr, msg, now)
        evidence = self._evidence(msg, now)
        if evidence is None:
            # Nothing a fresh heartbeat relies on changes here: only this (address, boot)'s own
            # entry, and the budget for challenging unverified sources.
            self._challenge_now(peer, addr, msg.boot_id, source, now)
            raise wire.RemoteProtocolError(wire.Reason.STALE, "echoes no fresh challenge of ours")
        self._boot(msg.boot_id, now).unanswered = None
        peer.verified = addr
        self.ever_verified = True
        if msg.sender == self.cfg.node:
            self._collided(msg, addr, network, now)
        self._pin_peer(msg.sender, addr)
        self._note_peer_boot(msg, now)
        was_alive = network in self.detector.networks and self._counts_as_alive(network, now)
        self.detector.heard(network, evidence, now, msg.interval)
        if self.state in (State.ACTIVE, State.DECLINED) and evidence <= self.since:
            # The primary is back, but it echoes a nonce from before we took over (a cable came
            # back): it missed our latest challenges. Challenge it at once, not at the next
            # round, so that its return costs one round trip.
            self._challenge_now(peer, addr, msg.boot_id, source, now)
        self._echo_issued = max(self._nonces[e] for e in msg.echoes if e in self._nonces)
        if (
            self.state is State.HOLDDOWN
            and evidence >= self._round_heard + self.cfg.period / 2
            and self._echo_issued > self._round_issued
        ):
            # A new round heard: not the same one on another network, nor a second heartbeat
            # echoing the same challenge (heartbeatd answers a holder's challenge at once, and
            # its regular beat echoes that challenge again up to a period later)
            self._round_heard, self._round_issued = evidence, self._echo_issued
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
            self._events.append(NetworkEvent(kind=NetworkKind.VERIFIED, network=network, at=now))
        if msg.type is wire.MsgType.LEAVING:
            self.counters["leaving"] += 1
            _bounded_add(self._left_boots, msg.boot_id, MAX_RETIRED)
            self.detector.forget()
            if (self.state, Trigger.PEER_LEAVING) in TRANSITIONS:
                self._fire(Trigger.PEER_LEAVING, now)

    def _announced(self, msg: wire.Message, now: float) -> None:
        """The primary confirms that it announced its addresses, as our HANDBACK asked: only
        from the verified primary's boot, to our boot, for the hand-back under way."""
        if msg.boot_id != self.peer_boot or msg.echo_boot != self.boot_id:
            raise wire.RemoteProtocolError(
                wire.Reason.STALE, "ANNOUNCED not from the verified primary to this boot"
            )
        if not self._handback_id or msg.nonce != self._handback_id:
            raise wire.RemoteProtocolError(wire.Reason.STALE, "ANNOUNCED answers no hand-back")
        if self.state is not State.HANDBACK:
            self.counters["announced-late"] += 1  # its copy, or after we released anyway
            return
        if not self._window(msg.sender, msg.boot_id).accept(msg.seq):
            raise wire.RemoteProtocolError(wire.Reason.REPLAY, f"seq {msg.seq} seen or too old")
        self.counters["announced"] += 1
        self._fire(Trigger.ANNOUNCED, now)

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
        if self._peer_window is not None and self._peer_window[0] == boot:
            return self._peer_window[1]  # pinned: no other boot can evict it
        key = (sender, boot)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = auth.ReplayWindow()
            if len(self._windows) > MAX_BOOTS:
                self._windows.popitem(last=False)
        self._windows.move_to_end(key)
        return window

    def _evidence(self, msg: wire.Message, now: float) -> float | None:
        """When this heartbeat proves the primary was alive, or None if it proves nothing.

        It echoes a nonce issued at ``issue``: the primary was alive after that. The credit up to
        ``issue + period`` is for the round in flight (it beat before our next nonce reached it).
        When two newer rounds have gone out since, it missed a whole round: nothing proves life
        after ``issue`` (the heartbeat of a primary whose cables just came back after 0.5 s
        out would otherwise be credited with life while they were out)."""
        issued = [self._nonces[e] for e in msg.echoes if e in self._nonces]
        if not issued:
            return None
        issue = max(issued)
        newer = sum(1 for t in self._nonces.values() if t > issue)
        evidence = min(now, issue + self.cfg.period) if newer < 2 else issue
        return evidence if evidence + self.cfg.deadtime > now else None

    def _pinned(self, peer: _PeerNet) -> tuple[Addr, bytes] | None:
        if peer.verified is None or self.peer_boot is None:
            return None
        return (peer.verified, self.peer_boot)

    def _boot(self, boot: bytes, now: float) -> _Boot:
        """The schedule of ``boot``, made if new; the least recently heard go first, never the
        verified primary's."""
        state = self._boots.get(boot)
        if state is None:
            state = self._boots[boot] = _Boot(heard=now)
            if len(self._boots) > MAX_BOOT_STATES:
                victim = next(b for b in self._boots if b != self.peer_boot)
                del self._boots[victim]
        else:
            state.heard = max(state.heard, now)
        self._boots.move_to_end(boot)
        return state

    def _source(self, peer: _PeerNet, addr: Addr, msg: wire.Message, now: float) -> _Source:
        """The entry of (``addr``, its boot id), made if new. The table stays bounded, and an
        eviction never takes the verified primary's entry: it takes an entry of the boot that has
        left challenges unanswered longest, else one already challenged, else the one heard
        least recently (its boot's schedule survives it)."""
        self._boot(msg.boot_id, now)
        key = (addr, msg.boot_id)
        source = peer.sources.get(key)
        if source is not None:
            source.seq = max(source.seq, msg.seq)  # a replay must not roll it back
            source.heard = max(source.heard, now)
            return source
        source = peer.sources[key] = _Source(seq=msg.seq, heard=now)
        if len(peer.sources) > MAX_SOURCES:
            pinned = self._pinned(peer)
            period = self.cfg.period

            def badness(k: tuple[Addr, bytes]) -> tuple[int, bool, float]:
                state = self._boots.get(k[1])
                strikes = 0 if state is None else state.strikes(now, period)
                tried = state is not None and state.challenged is not None
                return (strikes, tried, -peer.sources[k].heard)

            victim = max((k for k in peer.sources if k not in (pinned, key)), key=badness)
            del peer.sources[victim]
        return source

    def _challenge_now(
        self, peer: _PeerNet, addr: Addr, boot: bytes, source: _Source, now: float
    ) -> None:
        """The primary at ``addr`` lacks a fresh nonce of ours (it just started, or a link just
        came back): send one at once rather than at the next round. At most once a period for
        each (address, boot); for any but the verified primary, only for a boot never challenged
        (a new primary process), at most PER_SOURCE a period to one address, and within the
        overall budget."""
        period = self.cfg.period
        if source.immediate is not None and now - source.immediate < period:
            return
        state = self._boot(boot, now)
        if (addr, boot) == self._pinned(peer):
            # the verified primary lost our nonce (a link came back): as before, at once
            source.immediate = now
            self._send_challenge(self._current_nonce(now), addr, boot, source, now)
            state.unanswered = None
            return
        if state.challenged is not None:
            return  # seen before: the round challenges it again when due, the best first
        recent = sum(
            1
            for (a, _), s in peer.sources.items()
            if a == addr and s.immediate is not None and now - s.immediate < period
        )
        if recent >= PER_SOURCE or not self._bucket.take(now):
            self.counters["challenges-withheld"] += 1
            return
        source.immediate = now
        self._send_challenge(self._current_nonce(now), addr, boot, source, now)

    def _send_challenge(
        self, nonce: bytes, addr: Addr, boot: bytes, source: _Source, now: float
    ) -> None:
        source.challenged = now
        state = self._boot(boot, now)
        state.challenged = now
        if state.unanswered is None:
            state.unanswered = now  # until a heartbeat of this boot echoes a fresh nonce
        data = self._encode_challenge(nonce, (boot, source.seq))
        # The verified primary's round challenge goes out twice, back to back: a lost challenge
        # leaves it echoing the previous round's nonce, whose evidence is up to a period older.
        copies = CHALLENGE_COPIES if boot == self.peer_boot else 1
        self._out += [(data, addr)] * copies

    def _collided(self, msg: wire.Message, addr: Addr, network: str, now: float) -> None:
        """A fresh heartbeat with our own name from a boot that is not this host's: another
        machine uses our name. We still treat it as the primary (it is the one heartbeatd we
        hear); the shell makes it loud."""
        self.counters["name-collision"] += 1
        self.collision, event = auth.note_collision(
            self.collision, msg.sender, msg.boot_id, addr, network, now
        )
        if event is not None:
            self._events.append(event)

    def _note_peer_boot(self, msg: wire.Message, now: float) -> None:
        if msg.boot_id != self.peer_boot:
            if self.peer_boot is not None:
                # The primary restarted: its earlier boot is history from now on (replays of it
                # are refused outright), and the new boot's replay window is the pinned one.
                _bounded_add(self._retired, self.peer_boot, MAX_RETIRED)
                for peer in self._peers.values():
                    for key in [k for k in peer.sources if k[1] == self.peer_boot]:
                        del peer.sources[key]
                self._boots.pop(self.peer_boot, None)
            window = self._windows.pop((msg.sender, msg.boot_id), None)
            self._peer_window = (msg.boot_id, window or auth.ReplayWindow())
            if window is None:
                self._peer_window[1].accept(msg.seq)
            self.peer_boot, self.peer_seq = msg.boot_id, msg.seq
        self.peer_seq = max(self.peer_seq, msg.seq)
        if msg.interval * 2 >= self.cfg.deadtime and msg.boot_id not in self._warned_boots:
            _bounded_add(self._warned_boots, msg.boot_id, MAX_RETIRED)
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
        """The round: the verified primary on each network, always. Then each other boot that is
        due, on one of its sources (the one challenged least recently, so a network that loses
        them does not keep them all), within the budget: boots never challenged first, then
        those that answered best, the ones heard last first."""
        nonce = self._issue_nonce(now)
        period = self.cfg.period
        pick: dict[bytes, tuple[float, float, _PeerNet, tuple[Addr, bytes]]] = {}
        for peer in self._peers.values():
            pinned = self._pinned(peer)
            for key, source in peer.sources.items():
                if key == pinned:
                    self._send_challenge(nonce, key[0], key[1], source, now)
                    if key[1] in self._boots:  # verified: the detector judges it
                        self._boots[key[1]].unanswered = None
                    continue
                if key[1] == self.peer_boot:
                    continue  # its pinned source is challenged already
                rank = (source.challenged or -1.0, -source.heard)
                if key[1] not in pick or rank < pick[key[1]][:2]:
                    pick[key[1]] = (*rank, peer, key)
        due = []
        for boot, (_, _, peer, key) in pick.items():
            state = self._boots.get(boot)
            if state is not None and state.due(now, period):
                order = (state.challenged is not None, state.strikes(now, period), -state.heard)
                due.append((order, peer, key))
        due.sort(key=lambda x: x[0])
        for _, peer, key in due:
            if not self._bucket.take(now):
                self.counters["challenges-withheld"] += 1
                break
            self._send_challenge(nonce, key[0], key[1], peer.sources[key], now)
        self._next_challenge = now + period

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

    def _send_handback(self) -> None:
        """Ask the primary to announce its addresses before we delete ours (make before
        break), on every network where we verified it."""
        if self.peer_boot is None:
            return
        msg = wire.Message(
            type=wire.MsgType.HANDBACK,
            sender=self.cfg.node,
            boot_id=self.boot_id,
            seq=self._next_seq(),
            interval=self.cfg.period,
            nonce=self._handback_id,
            echo_boot=self.peer_boot,
            echo_seq=self.peer_seq,
        )
        data = wire.encode(msg, self.cfg.key)
        for peer in self._peers.values():
            if peer.verified:
                self._out += [(data, peer.verified)] * HANDBACK_COPIES
        self.counters["handback-sent"] += 1

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

    def _start_probe(self, now: float) -> None:
        self._probe_seq += 1
        self._probe_out = self._probe_seq
        self._reprobe_at = None
        self._events.append(Probe(id=self._probe_seq, at=now))

    def _enter(self, old: State, new: State, trigger: Trigger, now: float) -> None:
        if old in (State.PROBING, State.BLOCKED) and new is not State.BLOCKED:
            self._probe_out = None  # an answer still under way counts for nothing
        if new not in HOLDING:
            self._conflicts.clear()  # an episode ends when we stop holding
        if new is State.PROBING:
            self._probe_reason = trigger
            self._start_probe(now)
        elif new is State.ACQUIRING and trigger in PROBE_VERDICTS:
            self._events.append(
                Acquire(
                    reason=self._probe_reason,
                    at=now,
                    probe=self.probe_result,
                    answering=self.answering,
                )
            )
        elif new is State.ACQUIRING:
            self._events.append(Acquire(reason=trigger, at=now))
        elif new is State.BLOCKED:
            self._reprobe_at = now + max(REPROBE_MIN, self.cfg.period)
        elif new is State.HOLDDOWN:
            self._start_holddown(now)
        elif new is State.HANDBACK:
            self._handback_id = self._rng(wire.NONCE_SIZE)
            self._handback_until = now + handback_wait(self.cfg.period)
            self._send_handback()
        elif new is State.ACTIVE and old is State.HANDBACK:
            self._events.append(Reclaim(at=now))
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
        """Fire whatever the detector's view implies now: a cascade that must settle within
        MAX_CASCADE triggers (one that does not is a bug in the table: it raises)."""
        for change, network in self.detector.changes(now):
            kind = NetworkKind(change.value)
            self._events.append(NetworkEvent(kind=kind, network=network, at=now))
        fired: list[Trigger] = []
        for _ in range(MAX_CASCADE + 1):
            trigger = self._due_trigger(now)
            if trigger is None:
                return
            if len(fired) == MAX_CASCADE:
                chain = " ".join(t.value for t in [*fired, trigger])
                raise LocalProtocolError(f"triggers do not settle in {self.state.name}: {chain}")
            fired.append(trigger)
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
        self._round_issued = self._echo_issued

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
        if self.state in (State.PROBING, State.BLOCKED) and det.any_alive(now):
            # Nothing is taken yet: any evidence that the primary lived within the dead time
            # (even from before the probe began, arriving during it) cancels the takeover.
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
        if self.state is State.HANDBACK:
            if not det.any_alive(now):
                return Trigger.PEER_SILENT
            if self._handback_until is not None and now >= self._handback_until:
                return Trigger.HANDBACK_TIMEOUT
        return None


def handback_wait(period: float) -> float:
    """How long a hand-back waits for ANNOUNCED before it releases anyway."""
    return min(max(period, HANDBACK_WAIT_MIN), HANDBACK_WAIT_MAX)


def _answers(answers: Mapping[str, Iterable[str]]) -> Answers:
    """The shell's answers in canonical form: sorted, no address without a MAC."""
    out = []
    for address, macs in answers.items():
        unique = tuple(sorted(set(macs)))[:MAX_CONFLICT_MACS]
        if unique:
            out.append((str(address), unique))
    return tuple(sorted(out))


def _macs(answers: Answers) -> set[str]:
    return {mac for _, macs in answers for mac in macs}


def _bounded_add(items: OrderedDict[bytes, None], item: bytes, limit: int) -> None:
    items[item] = None
    items.move_to_end(item)
    while len(items) > limit:
        items.popitem(last=False)
