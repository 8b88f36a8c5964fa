"""failoverd's core, its vocabulary: tunables, configuration, and the events it gives the shell.

Everything here is plain data; the decisions are in :mod:`ipfailover.core.monitor`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ipfailover.core import auth, wire
from ipfailover.core.errors import LocalProtocolError
from ipfailover.core.monitor_table import State, Trigger

__all__ = [
    "ARRIVAL_ALLOWANCE",
    "BACKOFF_MAX",
    "CHALLENGE_BURST",
    "CHALLENGE_COPIES",
    "CHALLENGE_RATE",
    "CONFLICT_QUIET",
    "DEFEND_INTERVAL",
    "HANDBACK_COPIES",
    "HANDBACK_WAIT_MAX",
    "HANDBACK_WAIT_MIN",
    "MAX_BOOTS",
    "MAX_BOOT_STATES",
    "MAX_CASCADE",
    "MAX_CONFLICTS",
    "MAX_CONFLICT_MACS",
    "MAX_HELD",
    "MAX_RETIRED",
    "MAX_SOURCES",
    "PER_SOURCE",
    "PROBE_ANSWERED",
    "PROBE_FAILED",
    "PROBE_SILENT",
    "RELEASED_COPIES",
    "REPROBE_MIN",
    "RETRY_MAX",
    "STEADY_SHARE",
    "Acquire",
    "AcquireOutcome",
    "AcquireRetry",
    "Addr",
    "AddressAnswers",
    "AddressConflict",
    "Answers",
    "Conflict",
    "Defend",
    "Event",
    "Heard",
    "IPAddress",
    "MonitorConfig",
    "NetworkEvent",
    "NetworkKind",
    "PeerWarning",
    "Probe",
    "ProbeResult",
    "RandomBytes",
    "Reclaim",
    "Release",
    "StateChanged",
]

Addr = wire.Addr
RandomBytes = Callable[[int], bytes]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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

    @classmethod
    def of(
        cls, outcome: AcquireOutcome | bool | None, ok: bool | None, retry_after: float | None
    ) -> AcquireOutcome:
        """``acquire_done``'s outcome, also from its older form: ``ok=True`` is DONE;
        ``ok=False`` with ``retry_after`` is FAILED, retried after exactly that; ``ok=False``
        without it is DECLINED."""
        if outcome is None:
            outcome = ok
        if outcome is None:
            raise LocalProtocolError("acquire_done needs an outcome")
        if isinstance(outcome, bool):
            if outcome:
                return cls.DONE
            return cls.FAILED if retry_after is not None else cls.DECLINED
        return outcome


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
class Outbox:
    """Where one call's datagrams, events, counts and randomness go: the monitor's, lent for
    the call."""

    out: list[tuple[bytes, Addr]]
    events: list[Event]
    counters: Counter[str]
    rng: RandomBytes
    holding: bool  # the flag our challenges carry
