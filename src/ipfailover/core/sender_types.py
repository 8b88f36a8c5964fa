"""heartbeatd's core, its vocabulary: tunables, configuration, the events it gives the shell and
the records it keeps. Plain data; the decisions are in :mod:`ipfailover.core.sender`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ipfailover.core import auth, wire

__all__ = [
    "ANNOUNCE_WAIT_BEATS",
    "BOOTS_PER_LISTENER",
    "CONFIRM_COPIES",
    "CUT_FLAG_BEATS",
    "CUT_MIN",
    "CUT_MIN_SECONDS",
    "ECHO_HORIZON",
    "HANDBACK_ADDRS",
    "LEAVING_COPIES",
    "MAX_HANDBACKS",
    "MAX_HELD",
    "MAX_LISTENERS",
    "MAX_RETIRED",
    "REPLY_RATE",
    "Addr",
    "Announce",
    "AnnounceDeferred",
    "AnnounceReason",
    "Event",
    "RandomBytes",
    "SenderConfig",
]

Addr = wire.Addr
RandomBytes = Callable[[int], bytes]

MAX_LISTENERS = 16  # (listener, boot) entries echoed; at most MAX_ECHOES fit a heartbeat
BOOTS_PER_LISTENER = 4
ECHO_HORIZON = 30.0  # seconds: a CHALLENGE or RELEASED must echo a sequence number this recent
LEAVING_COPIES = 2  # LEAVING is sent twice to each target, back to back, against a single loss
MAX_RETIRED = 64  # listener boots whose entry went, remembered while their challenges could replay
MAX_HELD = 8  # datagrams held while the shell looks up this host's boot ids
REPLY_RATE = 4  # immediate beats to new listeners per interval (a token bucket), burst twice that
ANNOUNCE_WAIT_BEATS = 3  # after start-up or a cable's return, announce once a listener has told us
#                          whether it holds our addresses, or after this many intervals (+1 s)
MAX_HANDBACKS = 16  # hand-back ids remembered (copies and replays of one are not acted on twice)
HANDBACK_ADDRS = 4  # addresses one hand-back is confirmed to (one per network it came over)
CONFIRM_COPIES = 2  # ANNOUNCED goes out twice to each, back to back, against a single loss
CUT_MIN = 0.5  # intervals: carrier lost on every network at least this long is a cut worth telling
CUT_MIN_SECONDS = 0.25  # ... or this long, if shorter: at 1 s, a 0.5 s flap must count every time
CUT_FLAG_BEATS = wire.CUT_FLAG_BEATS  # heartbeat rounds after the carrier's return with the flag


def cut_min(interval: float) -> float:
    """The shortest loss of carrier on every network that is a cut worth telling: shorter
    blips cost the clients less than a takeover and a hold-down would disturb them."""
    return min(CUT_MIN * interval, CUT_MIN_SECONDS)


@dataclass(frozen=True, kw_only=True)
class SenderConfig:
    node: str
    key: bytes
    interval: float
    targets: tuple[Addr, ...]


class AnnounceReason(enum.StrEnum):
    """Why we announce (the values are the log's words)."""

    START = "start"  # after start-up
    CARRIER = "carrier"  # a cable came back
    SIGHUP = "sighup"  # Apple's tickle
    HANDBACK = "handback"  # a listener is about to hand them back and asked for this first
    RELEASED = "released"  # a listener handed them back


@dataclass(frozen=True, kw_only=True)
class Announce:
    """Re-announce (gratuitous ARP / unsolicited NA) our own addresses now."""

    reason: AnnounceReason
    at: float
    listener: str = ""
    # a hand-back: once the first round is out, call Sender.handback_announced(now, handback)
    handback: bytes = b""


@dataclass(frozen=True, kw_only=True)
class AnnounceDeferred:
    """An announcement (at start-up, or after a cable came back) was skipped: ``listener``
    still holds our addresses, and we announce when it reports RELEASED (Apple's flaw was to
    fight it for them)."""

    listener: str
    reason: AnnounceReason
    at: float


@dataclass
class _Listener:
    seq: int
    nonce: bytes
    updated: float
    expires: float
    holding: bool
    echo_seq: int = 0  # the highest of our sequence numbers its challenges echoed


@dataclass
class _Handback:
    """A listener's request to announce our addresses before it lets them go."""

    listener: tuple[str, bytes]
    seq: int  # the HANDBACK's sequence number, echoed in our ANNOUNCED
    addrs: list[Addr]  # where its copies came from: each gets the confirmation
    confirmed: bool = False


Event = Announce | AnnounceDeferred | wire.Dropped | auth.NameCollision
